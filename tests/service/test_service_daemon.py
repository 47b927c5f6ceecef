"""The real `aftercalld run` process against a test AMI server and the SMSC simulator.

Covers what a PBX admin relies on: READY=1 and watchdog pings on a NOTIFY_SOCKET this test
owns, calls turning into texts on the SMSC, SIGHUP with a good and a bad config, SIGTERM
with 100 submits in flight (exit 0, nothing lost, nothing sent twice after a restart), and
the report/status commands on what the daemon left behind.
"""
from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import signal
import socket
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS / "ami"), str(TESTS / "smpp")]

from ami_server import AmiServer  # noqa: E402
from daemon_proc import Daemon  # noqa: E402
from smsc_sim import SmscSim, decode  # noqa: E402

from aftercalld.config import load  # noqa: E402
from aftercalld.model import CallRecord  # noqa: E402
from aftercalld.pipeline import CallHandler  # noqa: E402
from aftercalld.store import Outbox  # noqa: E402

CONFIG = """
[general]
timezone = "Asia/Kolkata"
default_region = "IN"
allowed_countries = ["IN", "US"]
outbox = "{outbox}"

[[pbx]]
name = "main"
type = "asterisk"
host = "127.0.0.1"
port = {ami_port}
username = "aftercalld"
secret = "test"
ping_interval = 1
reconnect_min = 0.05
reconnect_max = 0.2

[transport]
type = "smpp"
hosts = ["127.0.0.1:{smpp_port}"]
system_id = "esme"
password = "secret"
sessions = 2
window = 50
reconnect_min = 0.05
reconnect_max = 0.2

[dispatch]
drain_timeout_seconds = 10

[templates.missed]
text = "{text}"

[[rules]]
name = "Missed"
recipients = ["caller"]
when = {{ status = ["missed", "voicemail"] }}
caller = {{ template = "missed", sender = "ACME" }}

[[rules]]
name = "Connected"
recipients = ["caller"]
when = {{ status = "connected" }}
caller = {{ text = "Thanks for calling, {{agent_name|our team}} was glad to help.", sender = "ACME" }}
"""


def trace_bytes(name: str, traces: Path) -> bytes:
    raw = (traces / "asterisk" / name).read_bytes()
    return b"\r\n".join(line for line in raw.split(b"\r\n") if not line.startswith(b"#"))



def write_config(tmp_path: Path, ami: AmiServer, smsc: SmscSim,
                 text: str = "Sorry we missed you. Reply STOP to opt out.") -> Path:
    path = tmp_path / "aftercalld.toml"
    path.write_text(CONFIG.format(outbox=tmp_path / "outbox.sqlite3", ami_port=ami.port,
                                  smpp_port=smsc.port, text=text))
    return path


def texts(smsc: SmscSim) -> list[tuple[str, str]]:
    return [(s.destination, decode(s.short_message, s.data_coding)) for s in smsc.accepted]


async def test_ready_watchdog_calls_to_texts_and_sighup(tmp_path, peers, traces):
    ami, smsc = peers
    config = write_config(tmp_path, ami, smsc)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.setblocking(False)
    daemon = await Daemon(config, {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
                                   "WATCHDOG_USEC": "200000"}).start()
    loop = asyncio.get_running_loop()
    try:
        notes: list[str] = []

        async def note(prefix: str) -> str:
            while True:
                for n in notes:
                    if prefix in n:
                        return n
                notes.append((await asyncio.wait_for(loop.sock_recv(notify, 4096), 20)).decode())

        ready = await note("READY=1")
        assert "STATUS=" in ready
        await note("WATCHDOG=1")
        notes.clear()
        await note("WATCHDOG=1")  # and it keeps coming, from the event loop
        await ami.wait_until(lambda: ami.ok_logins >= 1)
        await smsc.wait_until(lambda: len(smsc.bound()) >= 2)

        await ami.send(trace_bytes("inbound_missed_noanswer.ami", traces))
        await smsc.wait_until(lambda: len(smsc.accepted) >= 1)
        assert texts(smsc) == [("919876543210", "Sorry we missed you. Reply STOP to opt out.")]

        # SIGHUP with a good config: new text for the next call.
        write_config(tmp_path, ami, smsc, text="New wording after reload.")
        daemon.signal(signal.SIGHUP)
        await daemon.wait_for_line("reloaded")
        await ami.send(trace_bytes("inbound_voicemail.ami", traces))
        await smsc.wait_until(lambda: len(smsc.accepted) >= 2)
        assert texts(smsc)[1] == ("919876543210", "New wording after reload.")

        # SIGHUP with a bad config: refused with the reason, the running rules stay.
        config.write_text(config.read_text().replace('recipients = ["caller"]', 'recipients = ["agnet"]', 1))
        daemon.signal(signal.SIGHUP)
        await daemon.wait_for_line("reload refused")
        assert 'rules["Missed"].recipients: unknown value "agnet"' in daemon.log
        await ami.send(trace_bytes("ivr_abandon.ami", traces))
        await smsc.wait_until(lambda: len(smsc.accepted) >= 3)
        assert texts(smsc)[2] == ("919876543210", "New wording after reload.")

        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0
        assert "test" not in [w.strip(",.:'\"") for w in daemon.log.split()]  # the AMI secret
        assert "secret" not in daemon.log.replace("secret never", "")  # the SMPP password
    finally:
        await daemon.kill()
        notify.close()


def seed(config_path: Path, count: int) -> None:
    """Finished calls written straight to the outbox, as if a PBX had just sent them."""
    config = load(config_path)
    outbox = Outbox.open(config.outbox_path)
    handler = CallHandler(config, outbox)
    start = datetime(2026, 11, 30, 10, tzinfo=UTC)
    handler.handle_many([
        CallRecord(call_id=f"seed.{i}", pbx="main", direction="inbound", status="missed",
                   caller_number=f"98765400{i:02d}", dialled_number="18005550100",
                   start_time=start, end_time=start + timedelta(seconds=20))
        for i in range(count)
    ])
    outbox.close()


def states(tmp_path: Path) -> dict[str, int]:
    with sqlite3.connect(tmp_path / "outbox.sqlite3") as db:
        return dict(db.execute("SELECT state, COUNT(*) FROM messages GROUP BY state"))


async def test_sigterm_with_100_in_flight_loses_nothing_and_sends_nothing_twice(tmp_path, peers):
    ami, smsc = peers
    smsc.response_delay = 1.0  # every submit stays in flight for a second
    config = write_config(tmp_path, ami, smsc)
    seed(config, 100)
    daemon = await Daemon(config).start()
    try:
        await smsc.wait_until(lambda: smsc.submits_seen >= 100, timeout=20)
        daemon.signal(signal.SIGTERM)  # all 100 are on the wire, none answered yet
        assert await daemon.wait(timeout=15) == 0, daemon.log
    finally:
        await daemon.kill()
    assert states(tmp_path) == {"submitted": 100}
    assert smsc.submits_seen == 100
    assert len({d for d, _ in texts(smsc)}) == 100

    smsc.response_delay = 0.0
    again = await Daemon(config).start()
    try:
        await again.wait_for_line("aftercalld running")
        await smsc.wait_until(lambda: len(smsc.bound()) >= 2)
        again.signal(signal.SIGTERM)
        assert await again.wait() == 0
    finally:
        await again.kill()
    assert smsc.submits_seen == 100  # the restart sent nothing again
    assert "0 message(s) waiting" in again.log


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aftercalld.cli", *args], capture_output=True, text=True)


async def test_report_formats_and_why(tmp_path, peers):
    ami, smsc = peers
    smsc.receipts = "tlv"
    config = write_config(tmp_path, ami, smsc)
    seed(config, 3)
    daemon = await Daemon(config).start()
    try:
        await daemon.wait_for_line(" delivered", count=3)
        status = run_cli("status", "-c", str(config), "--format", "json")
        live = json.loads(status.stdout)
        assert live["daemon"]["pid"] == daemon.proc.pid
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0
    finally:
        await daemon.kill()

    as_json = json.loads(run_cli("report", "-c", str(config), "--format", "json").stdout)
    assert {m["state"] for m in as_json["messages"]} == {"delivered"}
    assert as_json["summary"][0]["rule"] == "Missed"
    assert as_json["summary"][0]["delivered_pct"] == 100.0
    rows = list(csv.DictReader(io.StringIO(run_cli("report", "-c", str(config), "--format", "csv").stdout)))
    assert len(rows) == 3 and rows[0]["destination"].startswith("+91") and rows[0]["transport_ids"]
    table = run_cli("report", "-c", str(config), "--status", "delivered").stdout
    assert "Missed: of 3 message(s): 3 delivered (100 %), 0 failed (0 %); median time to delivery " in table
    why = run_cli("why", "-c", str(config), "seed.1").stdout
    assert "rule 'Missed' matched" in why and "delivered" in why


async def test_send_test_through_the_smsc_and_the_metrics_endpoint(tmp_path, peers):
    ami, smsc = peers
    config = write_config(tmp_path, ami, smsc)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aftercalld.cli", "send-test", "-c", str(config), "09876543210",
        "--text", "Ünïcödé test", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert "to +919876543210 from aftercalld via smpp: ucs2, 12 units, 1 part(s)" in out.decode()
    assert "submitted: message id(s)" in out.decode()
    assert texts(smsc) == [("919876543210", "Ünïcödé test")]

    # The Prometheus endpoint of a running daemon.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config.write_text(config.read_text() + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
    seed(config, 2)
    daemon = await Daemon(config).start()
    try:
        await smsc.wait_until(lambda: len(smsc.accepted) >= 3)
        await daemon.wait_for_line("submitted (id", count=2)

        async def scrape() -> str:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
            body = (await asyncio.wait_for(reader.read(), 10)).decode()
            writer.close()
            return body

        # The server thread may scrape between the log line of the second submit and its
        # counter increment: scrape again until the counter caught up (bounded).
        for _ in range(100):
            body = await scrape()
            if 'aftercalld_messages_total{state="submitted"} 2.0' in body:
                break
        assert 'aftercalld_messages_total{state="submitted"} 2.0' in body, body
        assert "aftercalld_submit_latency_seconds_count 2.0" in body
        assert "aftercalld_queue_depth 0.0" in body
        assert 'aftercalld_rule_messages_total{rule="Missed",state="submitted"} 2.0' in body
        assert re.search(r'aftercalld_build_info\{instance="[^"]+",python="3\.[0-9.]+",version="[^"]+"\} 1\.0',
                         body), body
        assert "process_resident_memory_bytes" in body and "# TYPE aftercalld_smpp_submit_errors_total counter" in body
        assert "+91" not in body  # no phone numbers as labels
        # The source's state is read when scraped: up as soon as it is connected, not up to
        # one status interval (5 s) later; its events are counted.
        await ami.wait_until(lambda: ami.ok_logins >= 1)
        for _ in range(100):
            body = await scrape()
            if 'aftercalld_source_up{pbx="main"} 1.0' in body:
                break
        assert 'aftercalld_source_up{pbx="main"} 1.0' in body, body
        assert re.search(r'aftercalld_events_total\{pbx="main"\} \d', body), body
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0
    finally:
        await daemon.kill()


async def test_keep_days_prunes_old_calls_at_start_and_keeps_recent_ones(tmp_path, peers):
    ami, smsc = peers
    config = write_config(tmp_path, ami, smsc)
    seed(config, 3)
    daemon = await Daemon(config).start()
    try:
        await daemon.wait_for_line(" submitted (id ", count=3)
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0
    finally:
        await daemon.kill()
    month = 30 * 86400
    with sqlite3.connect(tmp_path / "outbox.sqlite3") as db:  # as if those calls were a month old
        db.execute("UPDATE calls SET created_at = created_at - ?", (month,))
        db.execute("UPDATE messages SET created_at = created_at - ?", (month,))
    config.write_text(config.read_text().replace("[general]\n", "[general]\nkeep_days = 7\n", 1))
    recent = load(config)
    outbox = Outbox.open(recent.outbox_path)
    CallHandler(recent, outbox).handle(CallRecord(
        call_id="recent.1", pbx="main", direction="inbound", status="missed", caller_number="9876540099",
        dialled_number="18005550100", start_time=datetime.now(UTC)))
    outbox.close()

    again = await Daemon(config).start()
    try:
        await again.wait_for_line(
            "outbox: removed 3 call(s), 3 message(s) and 0 unmatched receipt(s) older than 7 days")
        again.signal(signal.SIGTERM)
        assert await again.wait() == 0
    finally:
        await again.kill()
    with sqlite3.connect(tmp_path / "outbox.sqlite3") as db:
        assert [r[0] for r in db.execute("SELECT call_id FROM calls")] == ["recent.1"]
        assert [r[0] for r in db.execute("SELECT call_key FROM messages")] == ["main/recent.1"]
        assert db.execute("SELECT COUNT(*) FROM parts WHERE message_id NOT IN (SELECT id FROM messages)"
                          ).fetchone()[0] == 0


# A bug planted in the outbox pruning task: it dies at once, every time. Restart delays are
# shortened so that the test sees the whole story in well under a second.
DYING_PRUNER = """
import aftercalld.retention, aftercalld.supervisor as sup
async def broken(*args, **kwargs):
    raise RuntimeError("planted bug in pruning")
aftercalld.retention.prune_periodically = broken
sup.RESTART_MIN_SECONDS, sup.RESTART_MAX_SECONDS, sup.GIVE_UP_AFTER_FAILURES = 0.05, 0.1, 4
"""


async def test_a_task_that_keeps_dying_is_logged_restarted_and_stops_the_watchdog(tmp_path, peers):
    ami, smsc = peers
    config = write_config(tmp_path, ami, smsc)
    config.write_text(config.read_text().replace("[general]\n", "[general]\nkeep_days = 7\n", 1))
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.setblocking(False)
    daemon = await Daemon(config, {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "100000"},
                          inject=DYING_PRUNER).start()
    loop = asyncio.get_running_loop()
    try:
        await daemon.wait_for_line("it cannot heal itself")
        # Every death was logged with its traceback, and it was restarted each time.
        assert daemon.log.count("task 'outbox pruning' stopped with an error") >= 4
        assert "RuntimeError: planted bug in pruning" in daemon.log
        assert "Traceback" in daemon.log
        # From now on systemd hears no WATCHDOG=1 (it would restart the daemon), though
        # pings came every 50 ms before. Status updates still come from the live loop.
        while True:  # empty what was sent before the verdict
            try:
                notify.recv(4096)
            except BlockingIOError:
                break
        heard: list[str] = []
        deadline = loop.time() + 1.0  # 20 ping intervals
        while (left := deadline - loop.time()) > 0:
            try:
                heard.append((await asyncio.wait_for(loop.sock_recv(notify, 4096), left)).decode())
            except TimeoutError:
                break
        assert not [n for n in heard if "WATCHDOG=1" in n], heard
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0
    finally:
        await daemon.kill()
        notify.close()

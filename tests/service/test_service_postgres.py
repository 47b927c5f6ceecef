"""Real `aftercalld run` processes on a PostgreSQL outbox (a real server, tests/pgserver.py),
between the AMI test server and the SMSC simulator: one daemon texts a call; two daemons
on one outbox, both connected to the same PBX, text each call once; a daemon killed with
-9 has its claimed message sent by the other after the lease; PostgreSQL stopped and
started while calls end loses none of them."""
from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import psycopg

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS / "ami"), str(TESTS / "smpp")]

from ami_server import AmiServer  # noqa: E402
from daemon_proc import Daemon  # noqa: E402
from smsc_sim import SmscSim  # noqa: E402

CONFIG = """
[general]
timezone = "Asia/Kolkata"
default_region = "IN"
allowed_countries = ["IN", "US"]
outbox = "{outbox}"
instance = "{instance}"
state_dir = "{state_dir}"
lease_seconds = {lease}

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
sessions = 1
window = 50
reconnect_min = 0.05
reconnect_max = 0.2

[dispatch]
drain_timeout_seconds = 5

[[rules]]
name = "Missed"
recipients = ["caller"]
when = {{ status = ["missed", "voicemail"] }}
caller = {{ text = "Sorry we missed you.", sender = "ACME" }}
"""

CALLS = ("inbound_missed_noanswer.ami", "inbound_voicemail.ami", "ivr_abandon.ami")


def trace_bytes(name: str, traces: Path) -> bytes:
    raw = (traces / "asterisk" / name).read_bytes()
    return b"\r\n".join(line for line in raw.split(b"\r\n") if not line.startswith(b"#"))


def write_config(tmp_path: Path, dsn: str, instance: str, ami: AmiServer, smsc: SmscSim,
                 lease: float = 60) -> Path:
    state = tmp_path / f"state-{instance}"
    state.mkdir(exist_ok=True)
    path = tmp_path / f"{instance}.toml"
    path.write_text(CONFIG.format(outbox=dsn, instance=instance, state_dir=state, lease=lease,
                                  ami_port=ami.port, smpp_port=smsc.port))
    return path


def message_rows(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn) as db:
        return db.execute("SELECT state, claimed_by, attempts FROM messages ORDER BY id").fetchall()


async def states_become(dsn: str, expected: list[str], timeout: float = 10.0) -> None:
    """Until the messages' states are `expected`: an outcome is written after the SMSC's answer."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (states := [state for state, _, _ in message_rows(dsn)]) != expected:
        assert asyncio.get_running_loop().time() < deadline, states
        await asyncio.sleep(0.05)


async def ready(daemon: Daemon, ami: AmiServer, logins: int) -> None:
    await daemon.wait_for_line("aftercalld running")
    await ami.wait_until(lambda: ami.ok_logins >= logins)


async def test_a_daemon_on_postgresql_texts_a_call_and_status_lists_the_instance(tmp_path, peers, traces, pg_dsn):
    ami, smsc = peers
    config = write_config(tmp_path, pg_dsn, "alpha", ami, smsc)
    daemon = await Daemon(config).start()
    try:
        await ready(daemon, ami, 1)
        await smsc.wait_until(lambda: len(smsc.bound()) >= 1)
        await ami.send(trace_bytes(CALLS[0], traces))
        await smsc.wait_until(lambda: len(smsc.accepted) >= 1)
        assert smsc.accepted[0].destination == "919876543210"
        status = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "aftercalld", "status", "-c",
                                                          str(config)], capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        assert "instance alpha: running" in status.stdout
        assert "queue" in status.stdout
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0, daemon.log
    finally:
        await daemon.kill()
    assert [(state, by) for state, by, _ in message_rows(pg_dsn)] == [("submitted", "alpha")]
    assert "instance alpha" in daemon.log
    assert "INFO alpha aftercalld.daemon: aftercalld running" in daemon.log  # every line names the instance


async def test_two_daemons_on_one_outbox_text_each_call_once(tmp_path, peers, traces, pg_dsn):
    ami, smsc = peers
    daemons = [await Daemon(write_config(tmp_path, pg_dsn, name, ami, smsc)).start() for name in ("alpha", "beta")]
    try:
        for n, daemon in enumerate(daemons, 1):
            await ready(daemon, ami, n)
        await smsc.wait_until(lambda: len(smsc.bound()) >= 2)
        for name in CALLS:
            await ami.send(trace_bytes(name, traces))
        # Each call is decided by both: one queues its text, the other finds it queued.
        for daemon in daemons:
            await daemon.wait_for_line(" [main]: ", count=len(CALLS))
        await smsc.wait_until(lambda: len(smsc.accepted) >= len(CALLS))
        await states_become(pg_dsn, ["submitted"] * len(CALLS))
        assert sum("already handled" in line for d in daemons for line in d.lines) == len(CALLS)
    finally:
        for daemon in daemons:
            daemon.signal(signal.SIGTERM)
        for daemon in daemons:
            assert await daemon.wait() == 0, daemon.log
    assert smsc.submits_seen == len(CALLS)  # three messages, each submitted once, by one of the two


async def test_kill_9_the_other_instance_sends_its_claimed_message_after_the_lease(tmp_path, peers, traces, pg_dsn):
    ami, smsc = peers
    smsc.response_delay = 60.0  # alpha's submit is on the wire, never answered, when it dies
    alpha = await Daemon(write_config(tmp_path, pg_dsn, "alpha", ami, smsc, lease=5)).start()
    beta = None
    try:
        await ready(alpha, ami, 1)
        await smsc.wait_until(lambda: len(smsc.bound()) >= 1)
        await ami.send(trace_bytes(CALLS[0], traces))
        await smsc.wait_until(lambda: smsc.submits_seen >= 1)
        await alpha.kill()  # SIGKILL: no outcome written, the claim stays alpha's
        assert [(state, by) for state, by, _ in message_rows(pg_dsn)] == [("sending", "alpha")]
        smsc.response_delay = 0.0
        beta = await Daemon(write_config(tmp_path, pg_dsn, "beta", ami, smsc, lease=5)).start()
        await beta.wait_for_line("aftercalld running")
        await smsc.wait_until(lambda: len(smsc.accepted) >= 1, timeout=20)
        await beta.wait_for_line("submitted")
        assert [(state, by, attempts) for state, by, attempts in message_rows(pg_dsn)] == [("submitted", "beta", 2)]
        assert smsc.submits_seen == 2  # at least once: alpha's unanswered submit, then beta's
        beta.signal(signal.SIGTERM)
        assert await beta.wait() == 0, beta.log
    finally:
        await alpha.kill()
        if beta is not None:
            await beta.kill()


async def test_postgresql_stopped_and_started_mid_run_loses_no_call(tmp_path, peers, traces, pg_server, pg_dsn):
    ami, smsc = peers
    daemon = await Daemon(write_config(tmp_path, pg_dsn, "alpha", ami, smsc)).start()
    try:
        await ready(daemon, ami, 1)
        await smsc.wait_until(lambda: len(smsc.bound()) >= 1)
        await ami.send(trace_bytes(CALLS[0], traces))
        await smsc.wait_until(lambda: len(smsc.accepted) >= 1)
        await asyncio.to_thread(pg_server.stop)
        try:
            for name in CALLS[1:]:
                await ami.send(trace_bytes(name, traces))
            await daemon.wait_for_line("wait in memory")
        finally:
            await asyncio.to_thread(pg_server.start)
        await smsc.wait_until(lambda: len(smsc.accepted) >= len(CALLS), timeout=30)
        await daemon.wait_for_line("the outbox takes calls again")
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0, daemon.log
    finally:
        await daemon.kill()
    assert [state for state, _, _ in message_rows(pg_dsn)] == ["submitted"] * len(CALLS)
    assert smsc.submits_seen == len(CALLS)
    assert "password" not in daemon.log


def cli(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aftercalld", *args, "-c", str(config)],
                          capture_output=True, text=True, timeout=60)


def test_the_commands_work_on_a_postgresql_outbox_and_never_show_its_password(tmp_path, pg_dsn):
    secret = tmp_path / "pgpassword"
    secret.write_text("not-the-password\n")  # the test server trusts local connections
    config = tmp_path / "c.toml"
    config.write_text(CONFIG.format(outbox=pg_dsn, instance="alpha", state_dir=tmp_path, lease=60,
                                    ami_port=1, smpp_port=1)
                      .replace('lease_seconds', f'outbox_password_file = "{secret}"\nlease_seconds'))
    added = cli(config, "optout", "add", "+919876543210")
    assert added.returncode == 0, added.stderr
    listed = cli(config, "optout", "list")
    assert "+919876543210" in listed.stdout, listed.stderr
    assert cli(config, "dnd", "add", "+91999*").returncode == 0
    assert "+91999*" in cli(config, "dnd", "list").stdout
    why = cli(config, "why", "+919876543210")
    assert "no call" in why.stdout, why.stderr
    pruned = cli(config, "prune", "--older-than", "30")
    assert pruned.returncode == 0, pruned.stderr
    assert "removed" in pruned.stdout
    status = cli(config, "status")
    assert status.returncode == 3, status.stdout + status.stderr  # no instance has run
    assert "instances: 0 running" in status.stdout
    everything = "".join(r.stdout + r.stderr for r in (added, listed, why, pruned, status))
    assert "not-the-password" not in everything

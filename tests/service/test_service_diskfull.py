"""A full outbox disk, for real: a tmpfs filled to the brim under a real `aftercalld run`
fed by the AMI test server, with texts going to the SMSC simulator.

What a PBX admin relies on: calls that end while the disk is full wait in memory and reach
the outbox (and the SMSC) once space is back; nothing is lost, nothing crashes; the daemon
starts while the disk is full; a SIGTERM while calls wait names the calls it could not write.
"""
from __future__ import annotations

import asyncio
import re
import signal
import sqlite3
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS / "ami"), str(TESTS / "smpp"), str(TESTS / "service")]

from ami_server import AmiServer  # noqa: E402
from daemon_proc import Daemon  # noqa: E402
from diskfull import SmallDisk, call_bytes, call_id, caller, small_disk  # noqa: E402
from smsc_sim import SmscSim  # noqa: E402

CONFIG = """
[general]
timezone = "UTC"
default_region = "IN"
outbox = "{outbox}"
unwritten_calls_max = {unwritten_max}
disk_reserve_mb = 1

[[pbx]]
name = "main"
type = "asterisk"
host = "127.0.0.1"
port = {ami_port}
username = "aftercalld"
secret = "test"
reconnect_min = 0.05
reconnect_max = 0.2

[transport]
type = "smpp"
hosts = ["127.0.0.1:{smpp_port}"]
system_id = "esme"
password = "secret"
reconnect_min = 0.05
reconnect_max = 0.2

[metrics]
listen = "127.0.0.1:{metrics_port}"

[[rules]]
name = "Missed"
recipients = ["caller"]
when = {{ status = "missed" }}
caller = {{ text = "Sorry we missed your call.", sender = "ACME" }}
"""


@pytest.fixture
def disk():
    with small_disk("8m") as mounted:
        if isinstance(mounted, str):
            pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {mounted}")
        yield mounted



def free_port() -> int:
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_config(tmp_path: Path, disk: SmallDisk, ami: AmiServer, smsc: SmscSim, *,
                 unwritten_max: int = 20000) -> tuple[Path, int]:
    port = free_port()
    path = tmp_path / "aftercalld.toml"
    path.write_text(CONFIG.format(outbox=disk.path / "outbox.sqlite3", ami_port=ami.port, smpp_port=smsc.port,
                                  metrics_port=port, unwritten_max=unwritten_max))
    return path, port


async def scrape(port: int, name: str) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
    body = (await asyncio.wait_for(reader.read(), 10)).decode()
    writer.close()
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in the metrics:\n{body}")


async def until_metric(port: int, name: str, value: float, timeout: float = 20.0) -> None:
    """Scrape until the gauge reads `value` (each scrape is a round trip to the daemon)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    seen = None
    while loop.time() < deadline:
        seen = await scrape(port, name)
        if seen == value:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name} is {seen}, not {value}, after {timeout}s")


def calls_in_outbox(disk: SmallDisk) -> set[str]:
    with sqlite3.connect(disk.path / "outbox.sqlite3") as db:
        return {row[0] for row in db.execute("SELECT call_id FROM calls")}


def texted(smsc: SmscSim) -> set[str]:
    return {s.destination for s in smsc.accepted}


async def send_calls(ami: AmiServer, ks: range) -> None:
    for k in ks:
        await ami.send(call_bytes(k))


async def test_calls_during_a_full_disk_reach_the_outbox_and_the_smsc_once_space_is_back(tmp_path, disk, peers):
    ami, smsc = peers
    config, port = write_config(tmp_path, disk, ami, smsc)
    daemon = await Daemon(config).start()
    try:
        await daemon.wait_for_line("aftercalld running")
        await ami.wait_until(lambda: ami.ok_logins >= 1)
        await send_calls(ami, range(5))
        await smsc.wait_until(lambda: len(smsc.accepted) >= 5)

        disk.fill()
        await send_calls(ami, range(5, 305))
        # Every one of them is held in memory: the outbox refused them.
        await until_metric(port, "aftercalld_calls_waiting_for_outbox", 300)
        assert "could not write finished calls to the outbox (database or disk is full)" in daemon.log
        assert len(smsc.accepted) == 5

        disk.free()
        await daemon.wait_for_line("the outbox takes calls again")
        await smsc.wait_until(lambda: len(smsc.accepted) >= 305, timeout=30)
        await until_metric(port, "aftercalld_calls_waiting_for_outbox", 0)
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0, daemon.log
    finally:
        await daemon.kill()
    assert calls_in_outbox(disk) == {call_id(k) for k in range(305)}
    assert texted(smsc) == {"91" + caller(k) for k in range(305)}
    assert len(smsc.accepted) == 305  # nothing twice
    assert "Traceback" not in daemon.log
    # Logged once when the disk filled and once when it emptied, not once per retry.
    assert daemon.log.count("could not write finished calls to the outbox") == 1


async def test_past_the_bound_the_oldest_waiting_calls_are_dropped_and_named(tmp_path, disk, peers):
    ami, smsc = peers
    config, port = write_config(tmp_path, disk, ami, smsc, unwritten_max=50)
    daemon = await Daemon(config).start()
    try:
        await daemon.wait_for_line("aftercalld running")
        await ami.wait_until(lambda: ami.ok_logins >= 1)
        await send_calls(ami, range(1))
        await smsc.wait_until(lambda: len(smsc.accepted) >= 1)
        disk.fill()
        await send_calls(ami, range(1, 81))
        await daemon.wait_for_line("dropped the", count=1)
        await until_metric(port, "aftercalld_calls_dropped_for_outbox", 30)
        await until_metric(port, "aftercalld_calls_waiting_for_outbox", 50)
        disk.free()
        await smsc.wait_until(lambda: len(smsc.accepted) >= 51, timeout=30)
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0, daemon.log
    finally:
        await daemon.kill()
    # The 30 oldest of the waiting calls were dropped, each named in the log; the newest 50 made it.
    assert calls_in_outbox(disk) == {call_id(k) for k in [0, *range(31, 81)]}
    for k in range(1, 31):
        assert f"main/{call_id(k)}" in daemon.log
    # Named in a summary per retry, not a line per call that finished.
    summaries = [line for line in daemon.lines if "dropped the" in line]
    assert 1 <= len(summaries) <= 3, summaries
    assert sum(int(line.split("dropped the ")[1].split()[0]) for line in summaries) == 30
    assert "Traceback" not in daemon.log


async def calls_total(port: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
    body = (await asyncio.wait_for(reader.read(), 10)).decode()
    writer.close()
    return sum(float(line.split()[-1]) for line in body.splitlines() if line.startswith("aftercalld_calls_total{"))


async def until_all_taken_in(port: int, count: int, timeout: float = 20.0) -> float:
    """Until the daemon has every one of `count` calls either written or waiting; returns
    how many wait."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        waiting = await scrape(port, "aftercalld_calls_waiting_for_outbox")
        if await calls_total(port) + waiting == count:
            return waiting
        await asyncio.sleep(0.05)
    raise AssertionError(f"the daemon did not take in {count} calls within {timeout}s")


async def run_until_running(config: Path, ami: AmiServer, logins: int) -> Daemon:
    daemon = await Daemon(config).start()
    await daemon.wait_for_line("aftercalld running")
    await ami.wait_until(lambda: ami.ok_logins >= logins)
    return daemon


async def test_restart_while_the_disk_is_full_loses_no_call(tmp_path, disk, peers):
    """The issue's fault: the disk fills, the daemon is restarted while it is full, then
    space is freed. The reserve writes the calls waiting at the stop and lets the next
    start open the outbox; calls meanwhile wait in memory. 0 lost, no crash."""
    ami, smsc = peers
    config, port = write_config(tmp_path, disk, ami, smsc)
    first = await run_until_running(config, ami, 1)
    try:
        assert (disk.path / "outbox.sqlite3.reserve").stat().st_size == 1048576
        await send_calls(ami, range(3))
        await smsc.wait_until(lambda: len(smsc.accepted) >= 3)
        disk.fill()
        await send_calls(ami, range(3, 103))
        assert await until_all_taken_in(port, 103) > 0
        first.signal(signal.SIGTERM)
        assert await first.wait() == 0, first.log
    finally:
        await first.kill()
    assert "released the 1.0 MiB reserve" in first.log
    assert "stopping with" not in first.log
    assert calls_in_outbox(disk) == {call_id(k) for k in range(103)}

    disk.fill()  # whatever filled the disk takes what the stop left free
    again = await run_until_running(config, ami, 2)
    try:
        await send_calls(ami, range(103, 203))
        assert await until_all_taken_in(port, 100) == 100
        disk.free()
        await again.wait_for_line("the outbox takes calls again")
        await smsc.wait_until(lambda: len(smsc.accepted) >= 203, timeout=30)
        again.signal(signal.SIGTERM)
        assert await again.wait() == 0, again.log
    finally:
        await again.kill()
    assert calls_in_outbox(disk) == {call_id(k) for k in range(203)}
    assert texted(smsc) == {"91" + caller(k) for k in range(203)}
    assert len(smsc.accepted) == 203
    assert "Traceback" not in first.log + again.log
    assert (disk.path / "outbox.sqlite3.reserve").stat().st_size == 1048576  # made again


async def test_a_start_that_cannot_open_the_outbox_waits_and_sigterm_names_calls_it_cannot_write(
        tmp_path, disk, peers):
    ami, smsc = peers
    config, port = write_config(tmp_path, disk, ami, smsc)
    config.write_text(config.read_text().replace("disk_reserve_mb = 1", "disk_reserve_mb = 0"))
    first = await run_until_running(config, ami, 1)
    try:
        await send_calls(ami, range(3))
        await smsc.wait_until(lambda: len(smsc.accepted) >= 3)
        first.signal(signal.SIGTERM)
        assert await first.wait() == 0, first.log
    finally:
        await first.kill()

    disk.fill()  # no reserve: SQLite cannot even make its WAL index
    again = await Daemon(config).start()
    try:
        await again.wait_for_line("cannot open the outbox")
        assert again.proc.returncode is None  # it waits rather than exits
        disk.free()
        await again.wait_for_line("the outbox opens again")
        await again.wait_for_line("aftercalld running")
        await ami.wait_until(lambda: ami.ok_logins >= 2)
        disk.fill()
        await send_calls(ami, range(3, 103))
        assert await until_all_taken_in(port, 100) > 0
        again.signal(signal.SIGTERM)
        assert await again.wait() == 0, again.log
    finally:
        await again.kill()
    lost = {call_id(k) for k in range(103)} - calls_in_outbox(disk)
    assert lost
    # Every call it could not write is named, as an ERROR, with the count.
    assert f"stopping with {len(lost)} finished call(s) the outbox would not take" in again.log
    for k in lost:
        assert f"main/{k}" in again.log
    assert "Traceback" not in again.log


async def test_sigterm_while_waiting_to_open_the_outbox_exits_0_at_once(tmp_path, disk, peers):
    ami, smsc = peers
    config, port = write_config(tmp_path, disk, ami, smsc)
    config.write_text(config.read_text().replace("disk_reserve_mb = 1", "disk_reserve_mb = 0"))
    disk.fill()  # no outbox yet and no byte free: it cannot be made
    daemon = await Daemon(config).start()
    try:
        await daemon.wait_for_line("cannot open the outbox")
        assert "(0 bytes free on its disk)" in daemon.log
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait(timeout=5) == 0, daemon.log
    finally:
        await daemon.kill()
    assert "Traceback" not in daemon.log


async def test_a_start_on_a_full_disk_with_messages_left_sending_comes_up_and_sends_them_later(disk, tmp_path):
    """The dispatcher's requeue at start is a write: on a full disk it must wait, not fail
    the start (a stop on a full disk leaves messages 'sending' when their outcomes could not
    be written)."""
    from datetime import UTC, datetime

    from aftercalld.config import load
    from aftercalld.dispatcher import Dispatcher
    from aftercalld.logtransport import LogTransport
    from aftercalld.model import CallRecord
    from aftercalld.pipeline import CallHandler
    from aftercalld.store import Outbox

    path = tmp_path / "aftercalld.toml"
    path.write_text(f'[general]\ndefault_region = "IN"\noutbox = "{disk.path / "outbox.sqlite3"}"\n'
                    '[[rules]]\nname = "Missed"\nrecipients = ["caller"]\nwhen = { status = "missed" }\n'
                    'caller = { text = "Sorry we missed your call.", sender = "ACME" }\n')
    config = load(path)
    now = datetime(2026, 11, 30, 10, tzinfo=UTC).timestamp()
    outbox = Outbox.open(config.outbox_path)
    CallHandler(config, outbox, clock=lambda: now).handle(CallRecord(
        call_id="left.1", pbx="main", direction="inbound", status="missed", caller_number="9876543210",
        dialled_number="18005550100", start_time=datetime.fromtimestamp(now - 30, UTC)))
    assert len(outbox.claim_due(10, now)) == 1  # the last run was sending it when it stopped
    outbox.close()

    outbox = Outbox.open(config.outbox_path)
    disk.fill()
    transport = LogTransport()
    dispatcher = Dispatcher(outbox, transport, config.dispatch, clock=lambda: now)
    await dispatcher.start()  # came up on a full disk
    try:
        disk.free()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while outbox.counts_by_state() != {"submitted": 1}:
            assert loop.time() < deadline, outbox.counts_by_state()
            await asyncio.sleep(0.05)
    finally:
        await dispatcher.stop()
        outbox.close()


def test_call_ids_in_log_lines_are_escaped_and_split():
    from datetime import UTC, datetime

    from aftercalld.model import CallRecord
    from aftercalld.pipeline import IDS_PER_LOG_LINE, call_ids

    start = datetime(2026, 11, 30, 10, tzinfo=UTC)
    odd = CallRecord(call_id="a\nb, c\x1b[31m", pbx="main", direction="inbound", status="missed",
                     caller_number="9876543210", start_time=start)
    assert call_ids([odd]) == ["main/a\\nb\\x2c c\\x1b[31m"]
    many = [CallRecord(call_id=str(i), pbx="p", direction="inbound", status="missed", start_time=start)
            for i in range(IDS_PER_LOG_LINE + 1)]
    lines = call_ids(many)
    assert len(lines) == 2 and lines[1] == f"p/{IDS_PER_LOG_LINE}"


async def dispatching_on_the_small_disk(disk: SmallDisk, tmp_path: Path, smsc: SmscSim, calls: int):
    """An outbox on the small disk with `calls` missed calls queued, and a dispatcher sending
    them over a real SMPP transport to the simulator."""
    from datetime import UTC, datetime

    from smpp_util import settings

    from aftercalld.config import load
    from aftercalld.dispatcher import Dispatcher
    from aftercalld.model import CallRecord
    from aftercalld.pipeline import CallHandler
    from aftercalld.smpp import make_transport
    from aftercalld.store import Outbox

    path = tmp_path / "aftercalld.toml"
    path.write_text(f'[general]\ndefault_region = "IN"\noutbox = "{disk.path / "outbox.sqlite3"}"\n'
                    '[[rules]]\nname = "Missed"\nrecipients = ["caller"]\nwhen = { status = "missed" }\n'
                    'caller = { text = "Sorry we missed your call.", sender = "ACME" }\n')
    config = load(path)
    outbox = Outbox.open(config.outbox_path)
    start = datetime.now(UTC)
    CallHandler(config, outbox).handle_many([
        CallRecord(call_id=call_id(k), pbx="main", direction="inbound", status="missed", caller_number=caller(k),
                   dialled_number="18005550100", start_time=start) for k in range(calls)])
    transport = make_transport(settings(smsc.port, window=calls))
    dispatcher = Dispatcher(outbox, transport, config.dispatch)
    await dispatcher.start()
    return outbox, dispatcher


async def test_submit_outcomes_wait_for_a_full_disk_and_are_written_once_space_is_back(disk, tmp_path, caplog):
    caplog.set_level("INFO", logger="aftercalld")
    smsc = SmscSim(response_delay=1.0)
    await smsc.start()
    outbox, dispatcher = await dispatching_on_the_small_disk(disk, tmp_path, smsc, 50)
    try:
        await smsc.wait_until(lambda: smsc.submits_seen == 50)  # all on the wire, none answered
        outbox.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the next write must grow the WAL
        disk.fill()
        await smsc.wait_until(lambda: len(smsc.accepted) == 50)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        # The 50 answers come within a few milliseconds, but not always in one flush: the
        # first refused write may hold fewer of them.
        while not re.search(r"cannot write \d+ outcome\(s\)", caplog.text):
            assert loop.time() < deadline, caplog.text
            await asyncio.sleep(0.05)
        disk.free()
        deadline = loop.time() + 10
        while outbox.counts_by_state() != {"submitted": 50}:
            assert loop.time() < deadline, outbox.counts_by_state()
            await asyncio.sleep(0.05)
    finally:
        await dispatcher.stop()
        outbox.close()
        await smsc.stop()
    assert smsc.submits_seen == 50  # nothing sent twice
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and re.search(r"cannot write \d+ outcome\(s\)", errors[0].getMessage())  # once
    assert "the outbox takes writes again" in caplog.text
    assert "Traceback" not in caplog.text


async def test_a_stop_on_a_full_disk_names_the_messages_whose_outcome_it_could_not_write(disk, tmp_path, caplog):
    caplog.set_level("INFO", logger="aftercalld")
    smsc = SmscSim(response_delay=0.5)
    await smsc.start()
    outbox, dispatcher = await dispatching_on_the_small_disk(disk, tmp_path, smsc, 5)
    try:
        await smsc.wait_until(lambda: smsc.submits_seen == 5)
        outbox.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        disk.fill()
        await dispatcher.stop()  # waits for the answers, cannot write them
    finally:
        outbox.close()
        await smsc.stop()
    line = next(r.getMessage() for r in caplog.records if "stopping with" in r.getMessage())
    assert line.startswith("stopping with 5 submit outcome(s) and 0 delivery report(s) the outbox would not take")
    assert "message(s) 1, 2, 3, 4, 5 will be sent again at the next start" in line

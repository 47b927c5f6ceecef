"""Issue 12 through the real `aftercalld run`: no call lost across a crash (kill -9), a
routine restart (SIGTERM, start) or an AMI link drop.

The PBX is the test AMI server replaying a recorded trace of six overlapping calls; it keeps
the channels of calls in progress while the daemon is away, and answers CoreShowChannels
from them as Asterisk does.
"""
from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS / "ami"), str(TESTS / "smpp")]

from ami_expected import EXPECTED  # noqa: E402
from ami_server import AmiServer  # noqa: E402
from daemon_proc import Daemon  # noqa: E402
from smsc_sim import SmscSim  # noqa: E402
from test_ami_source import stream  # noqa: E402
from test_service_daemon import write_config  # noqa: E402

TRACE = "mixed_concurrent.ami"
CALLS = set(EXPECTED[TRACE])



def split_in_progress(data: bytes) -> int:
    """A point where several calls are in progress (and none has ended yet)."""
    first_hangup = data.index(b"\r\nEvent: Hangup\r\n")
    return data.rindex(b"\r\n\r\n", 0, first_hangup) + 4


def recorded(outbox: Path) -> dict[str, str]:
    with sqlite3.connect(f"file:{outbox}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT call_id, status FROM calls").fetchall()
    assert len(rows) == len({call_id for call_id, _ in rows}), "a call recorded twice"
    return dict(rows)


def submitted(outbox: Path) -> int:
    with sqlite3.connect(f"file:{outbox}?mode=ro", uri=True) as db:
        return db.execute("SELECT COUNT(*) FROM messages WHERE submitted_at IS NOT NULL").fetchone()[0]


async def run_through(fault, tmp_path: Path, ami: AmiServer, smsc: SmscSim, traces: Path) -> Path:
    """Replay the trace with `fault` striking while calls are in progress; returns the outbox."""
    # With the PBX's Timestamp on each event, as recorded: replayed in milliseconds, talk
    # and ring times still come out as they were.
    data = stream(TRACE)
    cut = split_in_progress(data)
    assert b"Event: Hangup\r\n" not in data[:cut] and data[:cut].count(b"Event: Newchannel\r\n") >= 8
    config = write_config(tmp_path, ami, smsc)
    daemon = await Daemon(config).start()
    try:
        await daemon.wait_for_line("reconciled with Asterisk's 0 live channel(s)")
        await ami.send(data[:cut])
        daemon = await fault(daemon, config)
        await ami.send(data[cut:])
        outbox = tmp_path / "outbox.sqlite3"
        for call_id in sorted(CALLS):
            await daemon.wait_for_line(f"call {call_id} [main]", timeout=20)
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0
    finally:
        await daemon.kill()
    return outbox


async def test_kill_9_during_calls_then_restart_records_the_calls_in_progress(tmp_path, peers, traces):
    ami, smsc = peers

    async def kill_9(daemon: Daemon, config: Path) -> Daemon:
        await asyncio.sleep(0)  # whatever it has read of the calls so far dies with it
        await daemon.kill()
        again = await Daemon(config).start()
        await again.wait_for_line("call(s) adopted")
        assert "live channel(s): 0 call(s) adopted" not in again.log
        return again

    outbox = await run_through(kill_9, tmp_path, ami, smsc, traces)
    assert set(recorded(outbox)) == CALLS


async def test_sigterm_then_start_during_calls_loses_nothing_and_sends_nothing_twice(tmp_path, peers, traces):
    ami, smsc = peers

    async def restart(daemon: Daemon, config: Path) -> Daemon:
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0
        again = await Daemon(config).start()
        await again.wait_for_line("reconciled with Asterisk's")
        return again

    outbox = await run_through(restart, tmp_path, ami, smsc, traces)
    assert set(recorded(outbox)) == CALLS
    # Every text the SMSC got is one the outbox submitted, and none went out twice.
    assert len(smsc.accepted) == submitted(outbox) > 0


async def test_ami_link_dropped_mid_call_with_no_event_lost_classifies_every_call(tmp_path, peers, traces):
    ami, smsc = peers

    async def link_drop(daemon: Daemon, config: Path) -> Daemon:
        await ami.close_clients()  # what was sent is read; the PBX keeps the rest
        await ami.wait_until(lambda: ami.ok_logins >= 2 and ami.clients == 1)
        await daemon.wait_for_line("reconciled with Asterisk's", count=2)
        return daemon

    outbox = await run_through(link_drop, tmp_path, ami, smsc, traces)
    calls = recorded(outbox)
    assert calls == {call_id: want["status"] for call_id, want in EXPECTED[TRACE].items()}


async def test_calls_that_end_while_the_daemon_is_stopped_are_handed_over_and_recorded(tmp_path, peers, traces):
    """SIGTERM writes the calls in progress to the outbox; the next start reads them back and
    finds on the PBX that they ended meanwhile: recorded with what was seen, none lost."""
    ami, smsc = peers
    data = stream(TRACE)
    cut = split_in_progress(data)

    async def stop_while_calls_end(daemon: Daemon, config: Path) -> Daemon:
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0
        assert "calls in progress handed over to the next start" in daemon.log
        ami.advance(data[cut:])  # every call ends while aftercalld is stopped
        again = await Daemon(config).start()
        await again.wait_for_line("call(s) in progress handed over from the last stop")
        await again.wait_for_line("6 ended while aftercalld was not connected")
        return again

    config = write_config(tmp_path, ami, smsc)
    daemon = await Daemon(config).start()
    try:
        await daemon.wait_for_line("reconciled with Asterisk's 0 live channel(s)")
        await ami.send(data[:cut])
        await asyncio.sleep(0.2)  # the daemon reads what was sent (nothing announces it)
        daemon = await stop_while_calls_end(daemon, config)
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0
    finally:
        await daemon.kill()
    outbox = tmp_path / "outbox.sqlite3"
    assert set(recorded(outbox)) == CALLS
    with sqlite3.connect(f"file:{outbox}?mode=ro", uri=True) as db:
        causes = {json.loads(r)["hangup_cause"] for (r,) in db.execute("SELECT record FROM calls")}
        assert db.execute("SELECT COUNT(*) FROM handover").fetchone()[0] == 0  # taken once
    assert causes == {"unknown (ended while aftercalld was not connected)"}

"""Issue 12's faults through the real `aftercalld run`, for both PBX kinds, with the PBX's
own CDR file configured (`cdr =`): the PBX test servers write it as Asterisk's cdr_csv and
FreeSWITCH's mod_cdr_csv do.

* a link drop during which the PBX goes on without anyone listening (events lost): calls
  that ended meanwhile come back from the CDR, calls still up from the channel list;
* a crash (kill -9) with calls that end while no daemon runs;
* a routine restart (SIGTERM) on FreeSWITCH: the calls in progress are handed over;
* a PBX restart: the calls it cut are recorded as interrupted, and nobody is texted.

Calls are numbered missed calls (the AMI trace `inbound_missed_noanswer.ami` with fresh
ids, tests/service/diskfull.py; for ESL tests/esl/esl_calls.py `numbered_missed_call`).
"""
from __future__ import annotations

import signal
import sqlite3
import sys
import time
import uuid as uuidlib
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS / "ami"), str(TESTS / "esl"), str(TESTS / "smpp"), str(TESTS / "service")]

from ami_server import AmiServer  # noqa: E402
from daemon_proc import Daemon  # noqa: E402
from diskfull import call_head_and_tail, call_id, caller  # noqa: E402
from esl_calls import numbered_missed_call, numbered_uuid  # noqa: E402
from esl_server import EslServer  # noqa: E402
from smsc_sim import SmscSim  # noqa: E402

CONFIG = """
[general]
timezone = "UTC"
default_region = "IN"
outbox = "{outbox}"
[[pbx]]
name = "main"
{pbx}
reconnect_min = 0.05
reconnect_max = 0.2
cdr = "{cdr}"
[transport]
type = "smpp"
hosts = ["127.0.0.1:{smpp_port}"]
system_id = "esme"
password = "secret"
reconnect_min = 0.05
reconnect_max = 0.2
[[rules]]
name = "Missed"
recipients = ["caller"]
when = {{ status = "missed" }}
caller = {{ text = "Sorry we missed your call.", sender = "ACME" }}
"""
AMI = 'type = "asterisk"\nport = {port}\nusername = "aftercalld"\nsecret = "test"\nping_interval = 1'
ESL = 'type = "freeswitch"\nport = {port}\npassword = "test-secret"'
RING_S = 30.0  # ESL calls' recorded ring time: they are in progress until the test ends them


def write_config(tmp_path: Path, pbx: str, port: int, smsc: SmscSim, cdr: Path) -> Path:
    path = tmp_path / "aftercalld.toml"
    path.write_text(CONFIG.format(outbox=tmp_path / "outbox.sqlite3", pbx=(AMI if pbx == "ami" else ESL).format(
        port=port), cdr=cdr, smpp_port=smsc.port))
    return path


def recorded(tmp_path: Path) -> dict[str, str]:
    with sqlite3.connect(f"file:{tmp_path / 'outbox.sqlite3'}?mode=ro", uri=True) as db:
        return dict(db.execute("SELECT call_id, status FROM calls").fetchall())


def texted(smsc: SmscSim, ks) -> list[str]:
    return sorted(s.destination for s in smsc.accepted if s.destination in {"91" + caller(k) for k in ks})


@pytest.fixture
async def smsc():
    sim = SmscSim()
    await sim.start()
    yield sim
    await sim.stop()


class Ami:
    """The AMI test server with its Master.csv, as these tests drive it."""

    kind = "ami"

    def __init__(self, tmp_path: Path) -> None:
        self.cdr = tmp_path / "Master.csv"
        self.server = AmiServer(cdr=self.cdr)

    def call(self, k: int) -> tuple[bytes, bytes]:
        return call_head_and_tail(k)

    def call_id(self, k: int) -> str:
        return call_id(k)

    async def send(self, data: bytes) -> None:
        await self.server.send(data)

    def away(self, data: bytes) -> None:
        """Events the PBX lives through with nobody listening."""
        self.server.advance(data)

    async def logins(self, count: int) -> None:
        await self.server.wait_until(lambda: self.server.ok_logins >= count and self.server.clients == 1)

    def drop(self) -> None:
        self.server.drop_clients()

    async def restart(self) -> None:
        await self.server.restart()


class Esl:
    """The ESL test server with its mod_cdr_csv Master.csv, as these tests drive it."""

    kind = "esl"

    def __init__(self, tmp_path: Path) -> None:
        self.cdr = tmp_path / "Master.csv"
        self.server = EslServer("test-secret", cdr=self.cdr)
        self.server.core_uuid = str(uuidlib.uuid4())

    def call(self, k: int) -> tuple[bytes, bytes]:
        return numbered_missed_call(k, caller(k), RING_S, self.server.core_uuid)

    def call_id(self, k: int) -> str:
        return numbered_uuid(k, 0)

    def _frames(self, data: bytes) -> list[bytes]:
        out, pos = [], 0
        while pos < len(data):
            head_end = data.index(b"\n\n", pos)
            length = int(data[pos:head_end].split(b"Content-Length: ")[1].split(b"\n")[0])
            out.append(data[pos:head_end + 2 + length])
            pos = head_end + 2 + length
        return out

    async def send(self, data: bytes) -> None:
        session = self.server.sessions[-1]
        self.server.advance(self._frames(data))
        session.writer.write(data)
        await session.writer.drain()

    def away(self, data: bytes) -> None:
        self.server.advance(self._frames(data))

    async def logins(self, count: int) -> None:
        await self.server.session(count - 1, timeout=20)

    def drop(self) -> None:
        self.server.sessions[-1].writer.transport.abort()

    async def restart(self) -> None:
        """FreeSWITCH restarts: its calls hang up with SYSTEM_SHUTDOWN (their CDR rows are
        written), connections close, and it comes back with a new Core-UUID."""
        await self.server.stop()
        assert self.server.cdr is not None
        self.server.cdr.cut_all(self.server.channels, time.time())
        self.server.channels.clear()
        self.server.core_uuid = str(uuidlib.uuid4())
        await self.server.start()


@pytest.fixture(params=["ami", "esl"])
async def pbx(request, tmp_path):
    peer = Ami(tmp_path) if request.param == "ami" else Esl(tmp_path)
    await peer.server.start()
    yield peer
    await peer.server.stop()


async def start(pbx, tmp_path: Path, smsc: SmscSim, logins: int = 1) -> Daemon:
    config = write_config(tmp_path, pbx.kind, pbx.server.port, smsc, pbx.cdr)
    daemon = await Daemon(config).start()
    await pbx.logins(logins)
    await daemon.wait_for_line("live channel(s)", count=1)
    return daemon


async def stop(daemon: Daemon) -> None:
    daemon.signal(signal.SIGTERM)
    assert await daemon.wait() == 0
    assert "Traceback" not in daemon.log


async def test_link_drop_while_the_pbx_goes_on_loses_no_call(pbx, tmp_path, smsc):
    """Calls 0-3 are up at the drop; 0-1 end and 4 comes and goes with nobody listening
    (their events are lost); 2-3 end after the reconnect. Every call is texted once."""
    daemon = await start(pbx, tmp_path, smsc)
    try:
        calls = {k: pbx.call(k) for k in range(5)}
        for k in range(4):
            await pbx.send(calls[k][0])
        pbx.drop()
        for k in (0, 1):
            pbx.away(calls[k][1])
        pbx.away(calls[4][0] + calls[4][1])
        await pbx.logins(2)
        for k in (2, 3):
            await pbx.send(calls[k][1])
        await smsc.wait_until(lambda: len(smsc.accepted) >= 5, timeout=20)
        await stop(daemon)
    finally:
        await daemon.kill()
    assert recorded(tmp_path) == {pbx.call_id(k): "missed" for k in range(5)}
    assert texted(smsc, range(5)) == sorted("91" + caller(k) for k in range(5))
    assert "backfilled 3 call(s) from CDR" in daemon.log


async def test_calls_that_end_while_the_daemon_is_dead_are_recorded(pbx, tmp_path, smsc):
    """kill -9 with calls 0-2 up; 0 ends and 3 comes and goes while no daemon runs; the
    next start adopts 1-2 from the channel list and reads 0 and 3 from the CDR."""
    daemon = await start(pbx, tmp_path, smsc)
    try:
        calls = {k: pbx.call(k) for k in range(4)}
        for k in range(3):
            await pbx.send(calls[k][0])
        await daemon.kill()
        pbx.away(calls[0][1])
        pbx.away(calls[3][0] + calls[3][1])
        daemon = await start(pbx, tmp_path, smsc, logins=2)
        for k in (1, 2):
            await pbx.send(calls[k][1])
        await smsc.wait_until(lambda: len(smsc.accepted) >= 4, timeout=20)
        await stop(daemon)
    finally:
        await daemon.kill()
    assert recorded(tmp_path) == {pbx.call_id(k): "missed" for k in range(4)}
    assert texted(smsc, range(4)) == sorted("91" + caller(k) for k in range(4))


async def test_pbx_restart_records_the_calls_it_cut_as_interrupted_and_texts_nobody(pbx, tmp_path, smsc):
    daemon = await start(pbx, tmp_path, smsc)
    try:
        calls = {k: pbx.call(k) for k in range(3)}
        for k in range(3):
            await pbx.send(calls[k][0])
        await daemon.wait_for_line("live channel(s)", count=1)
        await pbx.restart()
        await pbx.logins(2)
        await daemon.wait_for_line("restarted")
        runs = sum("backfilled" in line for line in daemon.lines)
        after = pbx.call(3)  # a call of the new PBX run goes on as usual
        await pbx.send(after[0] + after[1])
        await smsc.wait_until(lambda: len(smsc.accepted) >= 1, timeout=20)
        # A CDR read after the restart: the cut calls' rows (written by the shutdown) are
        # the same calls, known already, and text nobody.
        await daemon.wait_for_line("backfilled", count=runs + 1)
        await stop(daemon)
    finally:
        await daemon.kill()
    assert recorded(tmp_path) == {**{pbx.call_id(k): "interrupted" for k in range(3)}, pbx.call_id(3): "missed"}
    assert texted(smsc, range(4)) == ["91" + caller(3)]


async def test_esl_sigterm_hands_the_calls_in_progress_over_to_the_next_start(tmp_path, smsc):
    esl = Esl(tmp_path)
    await esl.server.start()
    try:
        daemon = await start(esl, tmp_path, smsc)
        try:
            calls = {k: esl.call(k) for k in range(3)}
            for k in range(3):
                await esl.send(calls[k][0])
            # A whole call after them: once it is recorded, the daemon has read the three
            # calls' starts before it (one ordered stream).
            marker = esl.call(9)
            await esl.send(marker[0] + marker[1])
            await daemon.wait_for_line(f"call {esl.call_id(9)} [main]")
            await stop(daemon)
            assert "calls in progress handed over to the next start" in daemon.log
            daemon = await start(esl, tmp_path, smsc, logins=2)
            assert "3 call(s) in progress handed over from the last stop" in daemon.log
            assert "0 adopted" in daemon.log  # the hand-over had them all
            for k in range(3):
                await esl.send(calls[k][1])
            await smsc.wait_until(lambda: len(smsc.accepted) >= 4, timeout=20)
            await stop(daemon)
        finally:
            await daemon.kill()
    finally:
        await esl.server.stop()
    assert recorded(tmp_path) == {esl.call_id(k): "missed" for k in (0, 1, 2, 9)}
    assert texted(smsc, range(10)) == sorted("91" + caller(k) for k in (0, 1, 2, 9))


async def test_pbx_restart_while_the_daemon_is_stopped_still_finds_the_calls_interrupted(pbx, tmp_path, smsc):
    """The hand-over carries which PBX run its calls belong to (Asterisk's startup time,
    FreeSWITCH's Core-UUID): a PBX restarted during a routine restart of aftercalld is
    noticed at the next connect, and the calls it cut are interrupted, not texted."""
    daemon = await start(pbx, tmp_path, smsc)
    try:
        calls = {k: pbx.call(k) for k in range(3)}
        for k in range(3):
            await pbx.send(calls[k][0])
        marker = pbx.call(9)  # once recorded, the three calls' starts before it were read
        await pbx.send(marker[0] + marker[1])
        await daemon.wait_for_line(f"call {pbx.call_id(9)} [main]")
        await stop(daemon)
        assert "calls in progress handed over to the next start" in daemon.log
        await pbx.restart()
        daemon = await start(pbx, tmp_path, smsc, logins=2)
        await daemon.wait_for_line("restarted")
        await stop(daemon)
    finally:
        await daemon.kill()
    assert recorded(tmp_path) == {**{pbx.call_id(k): "interrupted" for k in range(3)}, pbx.call_id(9): "missed"}
    assert texted(smsc, range(10)) == ["91" + caller(9)]

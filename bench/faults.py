"""Faults against a real daemon: which calls never got a record (issue 12's table).

A real `aftercalld run` process sits between one of the repo's PBX test servers (AMI:
tests/ami/ami_server.py, FreeSWITCH ESL: tests/esl/esl_server.py) and the SMSC simulator,
all three in this process. Each server also writes its PBX's own CDR file as the real one
does (Asterisk's cdr_csv Master.csv, FreeSWITCH's mod_cdr_csv Master.csv) and the daemon
is configured with `cdr = <that file>`, so calls that ended while it was away come back
from there. N missed calls (AMI: the recorded `inbound_missed_noanswer.ami` with fresh ids
and caller; ESL: a trunk call to one phone that does not answer) start at `--rate` calls/s
and end `--in-progress / --rate` seconds later, so about `--in-progress` calls are in
progress at any moment. One fault is injected per run; then the bench waits until texts
stop coming, stops the daemon and counts:

  calls sent | calls without a record in the outbox | texts accepted by the SMSC | duplicates |
  crashes (failed exits, tracebacks) | calls the daemon named as lost (disk full) |
  calls recorded as interrupted (pbx_restart: those the restart cut, texted: 0)

While no daemon is logged in to the PBX (a restart, a link drop), the replay pauses, as a
PBX whose events are held does; with `--no-pause` events go to nobody, as on a real PBX:
then only the PBX's channel list (reconcile) and its CDRs (backfill) can tell what happened.
`--no-cdr` leaves `cdr` out of the daemon's config: what a site without it gets.
A fault is one async function taking the `Run`; add one with `@fault("name")`.

    python bench/faults.py [--pbx ami,esl] [--calls 2000] [--rate 50] [--in-progress 300]
                           [--no-pause] [--no-cdr] [--keep DIR]
                           [--faults none,sigterm,kill9,link_drop,disk_full,pbx_restart]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sqlite3
import sys
import tempfile
import time
import uuid as uuidlib
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "ami"), str(REPO / "tests" / "esl"),
                str(REPO / "tests" / "smpp"), str(REPO / "tests" / "service")]

from ami_server import AmiServer  # noqa: E402
from diskfull import SmallDisk, call_head_and_tail, call_id, caller  # noqa: E402
from esl_calls import numbered_missed_call, numbered_uuid  # noqa: E402
from esl_server import EslServer  # noqa: E402
from smsc_sim import SmscSim  # noqa: E402

# disk_reserve_mb: 4 MiB holds the ~950 calls a stop on the full disk finds waiting (about
# 1.2 KB each), so they are handed over; 1 MiB shows what happens past it (named lost, and
# the CDR brings them back).
CONFIG = """
[general]
timezone = "UTC"
default_region = "IN"
outbox = "{outbox}"
log_level = "{log_level}"
disk_reserve_mb = 4
{pbx}
[transport]
type = "smpp"
hosts = ["127.0.0.1:{smpp_port}"]
system_id = "esme"
password = "secret"
window = 50
[[rules]]
name = "Missed"
recipients = ["caller"]
when = {{ status = "missed" }}
caller = {{ text = "Sorry we missed your call. We will call you back.", sender = "ACME" }}
"""

AMI_PBX = """[[pbx]]
name = "bench"
type = "asterisk"
port = {port}
username = "aftercalld"
secret = "test"
reconnect_min = 0.05
reconnect_max = 0.5
{cdr}
"""

ESL_PBX = """[[pbx]]
name = "bench"
type = "freeswitch"
port = {port}
password = "bench-secret"
reconnect_min = 0.05
reconnect_max = 0.5
{cdr}
"""


class AmiPbx:
    """The AMI test server, as the bench drives it."""

    kind = "ami"

    def __init__(self, cdr: Path) -> None:
        self.server = AmiServer(cdr=cdr)
        self.cdr = cdr

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    def config(self) -> str:
        return AMI_PBX.format(port=self.server.port, cdr=_cdr_line(self.cdr))

    @property
    def logins(self) -> int:
        return self.server.ok_logins

    @property
    def clients(self) -> int:
        return self.server.clients

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> None:
        await self.server.wait_until(predicate, timeout=timeout)

    def call(self, k: int, hold: float) -> tuple[bytes, bytes]:
        return call_head_and_tail(k)

    def call_id(self, k: int) -> str:
        return call_id(k)

    async def send(self, data: bytes) -> None:
        await self.server.send(data)

    async def blip(self, seconds: float) -> None:
        """Connections cut, and the PBX out of reach for `seconds`; its state goes on."""
        await self.server.stop()
        await asyncio.sleep(seconds)
        await self.server.start()

    async def restart(self) -> None:
        await self.server.restart()


class EslPbx:
    """The ESL test server, as the bench drives it. Its calls: a trunk leg and a phone leg
    that rings `hold` seconds unanswered (tests/esl/esl_calls.py), times of now."""

    kind = "esl"

    def __init__(self, cdr: Path) -> None:
        self.server = EslServer("bench-secret", cdr=cdr)
        self.cdr = cdr
        self.core = self.server.core_uuid = str(uuidlib.uuid4())

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    def config(self) -> str:
        return ESL_PBX.format(port=self.server.port, cdr=_cdr_line(self.cdr))

    def _live(self) -> list:
        return [s for s in self.server.sessions if s.subscribed.is_set() and not s.closed.is_set()]

    @property
    def logins(self) -> int:
        return sum(1 for s in self.server.sessions if s.subscribed.is_set())

    @property
    def clients(self) -> int:
        return len(self._live())

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> None:
        # The ESL server has no change notice: look every 10 ms (a bench, not a test).
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.01)

    def call(self, k: int, hold: float) -> tuple[bytes, bytes]:
        return numbered_missed_call(k, caller(k), hold, self.core)

    def call_id(self, k: int) -> str:
        return numbered_uuid(k, 0)

    async def send(self, data: bytes) -> None:
        frames = _frames(data)
        self.server.advance(frames)
        for session in self._live():
            session.writer.write(data)
            await session.writer.drain()

    async def blip(self, seconds: float) -> None:
        """Connections cut, and the PBX out of reach for `seconds`; its state goes on."""
        for session in self._live():
            session.writer.transport.abort()
            session.closed.set()
        await self.server.stop()
        await asyncio.sleep(seconds)
        await self.server.start()

    async def restart(self) -> None:
        """FreeSWITCH restarts: sessions drop, its channels are gone, a new Core-UUID."""
        await self.server.stop()
        if self.server.cdr is not None:
            self.server.cdr.cut_all(self.server.channels, time.time())
        self.server.channels.clear()
        self.core = self.server.core_uuid = str(uuidlib.uuid4())
        await self.server.start()


USE_CDR = True  # --no-cdr: what the daemon does without the PBX's CDRs


def _cdr_line(path: Path) -> str:
    return f'cdr = "{path}"' if USE_CDR else "# no cdr (--no-cdr)"


def _frames(data: bytes) -> list[bytes]:
    """Plain event frames back out of their concatenation (each has a Content-Length)."""
    out, pos = [], 0
    while pos < len(data):
        head_end = data.index(b"\n\n", pos)
        head = data[pos:head_end]
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
        out.append(data[pos:head_end + 2 + length])
        pos = head_end + 2 + length
    return out


PBXS = {"ami": AmiPbx, "esl": EslPbx}
LINK_DOWN_SECONDS = 2.0


@dataclass
class Fault:
    run: Callable[[Run], Awaitable[None]]
    needs_disk: bool = False


FAULTS: dict[str, Fault] = {}


def fault(name: str, *, needs_disk: bool = False):
    """Register `async def f(run)`: it awaits `run.at(fraction)` to act during the burst."""
    def register(fn: Callable[[Run], Awaitable[None]]) -> Callable[[Run], Awaitable[None]]:
        FAULTS[name] = Fault(fn, needs_disk)
        return fn
    return register


@dataclass
class Run:
    calls: int
    pbx: AmiPbx | EslPbx
    smsc: SmscSim
    config: Path
    outbox: Path
    log_path: Path
    disk: SmallDisk | None = None
    daemon: asyncio.subprocess.Process | None = None
    exit_codes: list[int] = field(default_factory=list)
    failed_exits: int = 0  # non-zero, or without being told to (then started again after 1 s)
    kills: int = 0  # kill -9 sent by a fault: their exits are not the daemon's failures
    started: int = 0  # calls whose first event was sent
    in_progress: set[int] = field(default_factory=set)  # calls started, not ended
    cut: set[int] = field(default_factory=set)  # calls a PBX restart hung up: they never end
    _progress: asyncio.Event = field(default_factory=asyncio.Event)
    _service: asyncio.Task | None = None
    _stopping: bool = False

    async def start_daemon(self) -> None:
        """Start `aftercalld run` under a stand-in for systemd (`Restart=on-failure`,
        `RestartSec=1`: a daemon that exits on its own is counted and started again) and
        wait until it is logged in to the PBX."""
        logins = self.pbx.logins
        self._stopping = False
        self._service = asyncio.create_task(self._keep_running())
        await self.pbx.wait_until(lambda: self.pbx.logins > logins, timeout=120)

    async def _keep_running(self) -> None:
        while True:
            with self.log_path.open("ab") as log:
                self.daemon = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "aftercalld.cli", "run", "-c", str(self.config), stderr=log,
                    env={**os.environ, "PYTHONPATH": str(REPO)})
            code = await self.daemon.wait()
            self.exit_codes.append(code)
            killed = self._stopping and code == -signal.SIGKILL and self.kills > 0
            if (code != 0 and not killed) or not self._stopping:
                self.failed_exits += 1
            if self._stopping:
                return
            await asyncio.sleep(1.0)

    async def stop_daemon(self, sig: int = signal.SIGTERM) -> None:
        assert self.daemon is not None and self._service is not None
        self._stopping = True
        if self.daemon.returncode is None:
            self.daemon.send_signal(sig)
        await self._service
        self.daemon = None

    async def restart(self, sig: int = signal.SIGTERM) -> None:
        """Stop, then start without waiting for the new process to come up."""
        if sig == signal.SIGKILL:
            self.kills += 1
        await self.stop_daemon(sig)
        self._stopping = False
        self._service = asyncio.create_task(self._keep_running())

    async def at(self, fraction: float) -> None:
        """Until that fraction of the calls has started."""
        while self.started < fraction * self.calls:
            self._progress.clear()
            await self._progress.wait()

    def step(self) -> None:
        self.started += 1
        self._progress.set()


# -- faults: one function each ------------------------------------------------------------

@fault("none")
async def no_fault(run: Run) -> None:
    pass


@fault("sigterm")
async def sigterm_and_start(run: Run) -> None:
    """A routine restart (an upgrade) in the middle of the burst."""
    await run.at(0.5)
    await run.restart()


@fault("kill9")
async def kill_9_five_times(run: Run) -> None:
    """A crash (or the OOM killer) five times in the burst, restarted at once: what was in
    flight in the process is gone, the PBX still has its calls."""
    for fraction in (0.15, 0.3, 0.45, 0.6, 0.75):
        await run.at(fraction)
        await run.restart(signal.SIGKILL)


@fault("link_drop")
async def link_dropped_four_times(run: Run) -> None:
    """The PBX connection drops four times and the PBX stays out of reach for
    LINK_DOWN_SECONDS each time (a network blip); the daemon reconnects. With the replay
    paused while nobody is logged in no event is lost on the PBX's side; with --no-pause the
    events of the gap (about 100 calls starting and 100 ending) go to nobody."""
    for fraction in (0.2, 0.4, 0.6, 0.8):
        await run.at(fraction)
        logins = run.pbx.logins
        await run.pbx.blip(LINK_DOWN_SECONDS)
        await run.pbx.wait_until(lambda logins=logins: run.pbx.logins > logins, timeout=60)


@fault("pbx_restart")
async def pbx_restarted(run: Run) -> None:
    """The PBX itself restarts in the middle of the burst (`core restart now`, a FreeSWITCH
    upgrade): every call in progress is cut, the connection drops, the next login meets a
    PBX with a new startup time (AMI CoreStatus) / Core-UUID (ESL). The cut calls must be
    recorded as interrupted and not texted; the calls after the restart as usual."""
    await run.at(0.5)
    run.cut = set(run.in_progress)
    logins = run.pbx.logins
    await run.pbx.restart()
    await run.pbx.wait_until(lambda: run.pbx.logins > logins, timeout=60)


@fault("disk_full", needs_disk=True)
async def disk_full_restart_free(run: Run) -> None:
    """The outbox's disk fills, the daemon is restarted while it is full, then space is freed."""
    assert run.disk is not None
    await run.at(0.3)
    run.disk.fill()
    await run.at(0.5)
    await run.restart()
    # The replay pauses while no daemon is logged in: a daemon that cannot come up on the
    # full disk gets the space back after 10 s.
    try:
        await asyncio.wait_for(run.at(0.7), 10)
    except TimeoutError:
        pass
    run.disk.free()


# -- the replay ---------------------------------------------------------------------------

async def feed(run: Run, rate: float, in_progress: int, pause: bool) -> None:
    """Every call's start at k/rate, its end `in_progress/rate` later, in time order."""
    hold = in_progress / rate
    timeline = sorted([(k / rate, 0, k) for k in range(run.calls)]
                      + [(k / rate + hold, 1, k) for k in range(run.calls)])
    began = time.perf_counter()
    paused = 0.0
    tails: dict[int, tuple[bytes, bytes]] = {}
    for at, part, k in timeline:
        wait = began + paused + at - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        if pause and run.pbx.clients == 0:
            since = time.perf_counter()
            await run.pbx.wait_until(lambda: run.pbx.clients > 0, timeout=120)
            paused += time.perf_counter() - since
        if part and k in run.cut:
            continue  # the PBX restart hung it up already
        if not part:
            tails[k] = run.pbx.call(k, hold)
        head, tail = tails[k] if not part else tails.pop(k)
        try:
            await run.pbx.send(tail if part else head)
        except (ConnectionError, OSError):
            pass  # the daemon went away mid-write: a PBX's events to nobody
        if part:
            run.in_progress.discard(k)
        else:
            run.in_progress.add(k)
            run.step()


async def until_settled(smsc: SmscSim, expected: int, quiet: float = 3.0) -> None:
    """Until every call is texted, or no text came for `quiet` seconds."""
    last, since = -1, time.perf_counter()
    while len(smsc.accepted) < expected:
        if len(smsc.accepted) != last:
            last, since = len(smsc.accepted), time.perf_counter()
        elif time.perf_counter() - since > quiet:
            return
        await asyncio.sleep(0.1)


async def one(kind: str, name: str, calls: int, rate: float, in_progress: int, pause: bool,
              keep: Path | None = None) -> dict[str, object]:
    spec = FAULTS[name]
    smsc = SmscSim()
    await smsc.start()
    with tempfile.TemporaryDirectory() as tmp:
        pbx = PBXS[kind](Path(tmp) / "Master.csv")
        await pbx.start()
        disk = None
        where = Path(tmp)
        if spec.needs_disk:
            disk = SmallDisk("64m")
            why = disk.mount()
            if why:
                await pbx.stop()
                await smsc.stop()
                return {"fault": name, "skipped": f"cannot mount a tmpfs: {why}"}
            where = disk.path
        try:
            config = Path(tmp) / "bench.toml"
            config.write_text(CONFIG.format(outbox=where / "outbox.sqlite3", pbx=pbx.config(), smpp_port=smsc.port,
                                            log_level="info" if keep else "warning"))
            run = Run(calls, pbx, smsc, config, where / "outbox.sqlite3", Path(tmp) / "daemon.log", disk)
            await run.start_daemon()
            await smsc.wait_until(lambda: len(smsc.bound()) >= 1, timeout=30)
            began = time.perf_counter()
            await asyncio.gather(feed(run, rate, in_progress, pause), spec.run(run))
            await until_settled(smsc, calls - len(run.cut))
            elapsed = time.perf_counter() - began
            await run.stop_daemon()
            with sqlite3.connect(run.outbox) as db:
                recorded = dict(db.execute("SELECT call_id, status FROM calls").fetchall())
            log = run.log_path.read_text(errors="replace")
            if keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
                for path in (run.log_path, run.outbox, pbx.cdr):
                    (keep / path.name).write_bytes(path.read_bytes())
        finally:
            await pbx.stop()
            await smsc.stop()
            if disk is not None:
                disk.unmount()
    sent = {pbx.call_id(k): k for k in range(calls)}
    ours = {"91" + caller(k) for k in range(calls)}
    cut_numbers = {"91" + caller(k) for k in run.cut}
    texts = Counter(s.destination for s in smsc.accepted if s.destination in ours)
    return {
        "fault": name,
        "sent": calls,
        "recorded": len(sent.keys() & recorded.keys()),
        "texts": len(texts),
        "duplicates": sum(n - 1 for n in texts.values()),
        "crashes": run.failed_exits + log.count("Traceback"),
        # Calls the daemon itself named as lost (a full disk at its stop, or past its bound),
        # counted once per event: a long list of ids comes in several lines, "(1/5)" first.
        # The CDR backfill may bring them back at the next start: then "no record" is less.
        "named_lost": sum(int(n) for n in re.findall(
            r"(?:stopping with|dropped the) (\d+) (?:finished call|oldest)[^\n]*?no text will be sent for them"
            r"(?: \(1/\d+\))?: ", log)),
        "cut": len(run.cut),
        "interrupted": sum(1 for cid, k in sent.items() if k in run.cut and recorded.get(cid) == "interrupted"),
        "cut_texted": len(cut_numbers & texts.keys()),
        "outbox_refused": "could not write finished calls to the outbox" in log,
        "seconds": elapsed,
    }


async def main(kinds: list[str], faults: list[str], calls: int, rate: float, in_progress: int, pause: bool,
               keep: Path | None) -> None:
    print(f"{calls} calls at {rate:g}/s, about {in_progress} in progress; "
          f"replay {'pauses' if pause else 'does not pause'} while no daemon is logged in; "
          f"{'the PBX CDR file configured' if USE_CDR else 'no CDR configured'}")
    print(f"{'pbx':<4} {'fault':<12} {'calls sent':>10} {'no record':>10} {'texts':>7} {'duplicates':>10} "
          f"{'crashes':>8} {'named lost':>10} {'cut/interrupted/texted':>22}")
    for kind in kinds:
        for name in faults:
            row = await one(kind, name, calls, rate, in_progress, pause, keep / f"{kind}-{name}" if keep else None)
            if "skipped" in row:
                print(f"{kind:<4} {name:<12} skipped: {row['skipped']}")
                continue
            cut = f"{row['cut']}/{row['interrupted']}/{row['cut_texted']}" if row["cut"] else "-"
            print(f"{kind:<4} {name:<12} {row['sent']:>10} {row['sent'] - row['recorded']:>10} {row['texts']:>7} "
                  f"{row['duplicates']:>10} {row['crashes']:>8} {row['named_lost']:>10} {cut:>22}   "
                  f"({row['seconds']:.1f} s{', the outbox refused writes' if row['outbox_refused'] else ''})",
                  flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pbx", default="ami,esl", help="comma-separated, of: ami, esl")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--in-progress", type=int, default=300)
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated, of: {', '.join(FAULTS)}")
    parser.add_argument("--no-pause", dest="pause", action="store_false",
                        help="send events while no daemon is logged in (they reach nobody)")
    parser.add_argument("--no-cdr", dest="cdr", action="store_false",
                        help="do not configure the PBX's CDR file (cdr =) in the daemon")
    parser.add_argument("--keep", type=Path, help="copy each run's daemon log (at info), outbox and CDR file here")
    args = parser.parse_args()
    unknown = [f for f in args.faults.split(",") if f not in FAULTS]
    unknown += [p for p in args.pbx.split(",") if p not in PBXS]
    if unknown:
        parser.error(f"unknown fault(s) or pbx(s): {', '.join(unknown)}")
    USE_CDR = args.cdr
    asyncio.run(main(args.pbx.split(","), args.faults.split(","), args.calls, args.rate, args.in_progress,
                     args.pause, args.keep))

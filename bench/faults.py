"""Faults against a real daemon: which calls never got a record (issue 12's table).

A real `aftercalld run` process sits between the repo's AMI test server and the SMSC
simulator (both in this process). N calls, each the recorded `inbound_missed_noanswer.ami`
trace with fresh ids and caller, start at `--rate` calls/s and end `--in-progress / --rate`
seconds later, so about `--in-progress` calls are in progress at any moment. One fault is
injected per run; then the bench waits until texts stop coming, stops the daemon and counts:

  calls sent | calls without a record in the outbox | texts accepted by the SMSC | duplicates |
  crashes (failed exits, tracebacks) | calls the daemon named as lost (disk full)

Today a restart loses the calls in progress at the stop (their start is not handed over to
the next process yet): that is the `no record` of `sigterm` and `disk_full`, not the disk.

While no daemon is logged in to the AMI server (a restart), the replay pauses, as a PBX
whose events are held does (`--no-pause`: events go to nobody, as on a PBX that does not
wait). A fault is one async function taking the `Run`; add one with `@fault("name")`.

    python bench/faults.py [--calls 2000] [--rate 50] [--in-progress 300] [--no-pause]
                            [--faults none,sigterm,kill9,link_drop,disk_full]
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
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "ami"), str(REPO / "tests" / "smpp"), str(REPO / "tests" / "service")]

from ami_server import AmiServer  # noqa: E402
from diskfull import SmallDisk, call_head_and_tail, call_id, caller  # noqa: E402
from smsc_sim import SmscSim  # noqa: E402

CONFIG = """
[general]
timezone = "UTC"
default_region = "IN"
outbox = "{outbox}"
log_level = "warning"
disk_reserve_mb = 1
[[pbx]]
name = "bench"
type = "asterisk"
port = {ami_port}
username = "aftercalld"
secret = "test"
reconnect_min = 0.05
reconnect_max = 0.5
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
    ami: AmiServer
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
    _progress: asyncio.Event = field(default_factory=asyncio.Event)
    _service: asyncio.Task | None = None
    _stopping: bool = False

    async def start_daemon(self) -> None:
        """Start `aftercalld run` under a stand-in for systemd (`Restart=on-failure`,
        `RestartSec=1`: a daemon that exits on its own is counted and started again) and
        wait until it is logged in to the PBX."""
        logins = self.ami.ok_logins
        self._stopping = False
        self._service = asyncio.create_task(self._keep_running())
        await self.ami.wait_until(lambda: self.ami.ok_logins > logins, timeout=120)

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
async def ami_link_dropped_four_times(run: Run) -> None:
    """The AMI connection drops four times (a network blip); the daemon reconnects. With the
    replay paused while nobody is logged in no event is lost on the PBX's side; with
    --no-pause the events of the gap go to nobody."""
    for fraction in (0.2, 0.4, 0.6, 0.8):
        await run.at(fraction)
        logins = run.ami.ok_logins
        run.ami.drop_clients()
        await run.ami.wait_until(lambda logins=logins: run.ami.ok_logins > logins, timeout=60)


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
    for at, part, k in timeline:
        wait = began + paused + at - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        if pause and run.ami.clients == 0:
            since = time.perf_counter()
            await run.ami.wait_until(lambda: run.ami.clients > 0, timeout=120)
            paused += time.perf_counter() - since
        head, tail = call_head_and_tail(k)
        try:
            await run.ami.send(tail if part else head)
        except (ConnectionError, OSError):
            pass  # the daemon went away mid-write: a PBX's events to nobody
        if not part:
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


async def one(name: str, calls: int, rate: float, in_progress: int, pause: bool) -> dict[str, object]:
    spec = FAULTS[name]
    ami = await AmiServer().start()
    smsc = SmscSim()
    await smsc.start()
    with tempfile.TemporaryDirectory() as tmp:
        disk = None
        where = Path(tmp)
        if spec.needs_disk:
            disk = SmallDisk("64m")
            why = disk.mount()
            if why:
                await ami.stop()
                await smsc.stop()
                return {"fault": name, "skipped": f"cannot mount a tmpfs: {why}"}
            where = disk.path
        try:
            config = Path(tmp) / "bench.toml"
            config.write_text(CONFIG.format(outbox=where / "outbox.sqlite3", ami_port=ami.port, smpp_port=smsc.port))
            run = Run(calls, ami, smsc, config, where / "outbox.sqlite3", Path(tmp) / "daemon.log", disk)
            await run.start_daemon()
            await smsc.wait_until(lambda: len(smsc.bound()) >= 1, timeout=30)
            began = time.perf_counter()
            await asyncio.gather(feed(run, rate, in_progress, pause), spec.run(run))
            await until_settled(smsc, calls)
            elapsed = time.perf_counter() - began
            await run.stop_daemon()
            with sqlite3.connect(run.outbox) as db:
                recorded = {row[0] for row in db.execute("SELECT call_id FROM calls")}
            log = run.log_path.read_text(errors="replace")
        finally:
            await ami.stop()
            await smsc.stop()
            if disk is not None:
                disk.unmount()
    sent = {call_id(k) for k in range(calls)}
    ours = {"91" + caller(k) for k in range(calls)}
    texts = Counter(s.destination for s in smsc.accepted if s.destination in ours)
    return {
        "fault": name,
        "sent": calls,
        "recorded": len(sent & recorded),
        "texts": len(texts),
        "duplicates": sum(n - 1 for n in texts.values()),
        "crashes": run.failed_exits + log.count("Traceback"),
        # Calls the daemon itself named as lost (a full disk at its stop, or past its bound).
        "named_lost": sum(int(n) for n in re.findall(r"stopping with (\d+) finished call", log))
        + sum(int(n) for n in re.findall(r"dropped the (\d+) oldest", log)),
        "outbox_refused": "could not write finished calls to the outbox" in log,
        "seconds": elapsed,
    }


async def main(faults: list[str], calls: int, rate: float, in_progress: int, pause: bool) -> None:
    print(f"{calls} calls at {rate:g}/s, about {in_progress} in progress; "
          f"replay {'pauses' if pause else 'does not pause'} while no daemon is logged in")
    print(f"{'fault':<12} {'calls sent':>10} {'no record':>10} {'texts':>7} {'duplicates':>10} {'crashes':>8} "
          f"{'named lost':>10}")
    for name in faults:
        row = await one(name, calls, rate, in_progress, pause)
        if "skipped" in row:
            print(f"{name:<12} skipped: {row['skipped']}")
            continue
        print(f"{name:<12} {row['sent']:>10} {row['sent'] - row['recorded']:>10} {row['texts']:>7} "
              f"{row['duplicates']:>10} {row['crashes']:>8} {row['named_lost']:>10}   ({row['seconds']:.1f} s"
              f"{', the outbox refused writes' if row['outbox_refused'] else ''})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--in-progress", type=int, default=300)
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated, of: {', '.join(FAULTS)}")
    parser.add_argument("--no-pause", dest="pause", action="store_false",
                        help="send events while no daemon is logged in (they reach nobody)")
    args = parser.parse_args()
    unknown = [f for f in args.faults.split(",") if f not in FAULTS]
    if unknown:
        parser.error(f"unknown fault(s): {', '.join(unknown)}")
    asyncio.run(main(args.faults.split(","), args.calls, args.rate, args.in_progress, args.pause))

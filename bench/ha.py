"""Two aftercalld instances on one PostgreSQL outbox (issue 17's figures).

A real PostgreSQL server (tests/pgserver.py: initdb into a temp dir, on 127.0.0.1, fsync
and synchronous commit on, WAL segments ready for reuse as on a server in service), the
repo's AMI test server replaying calls to both instances (`aftercalld run` processes, each
with its own SMPP bind) and the SMSC simulator, all on one machine. Each call is the
recorded `inbound_missed_noanswer.ami` trace with fresh ids and a fresh caller; every count
is taken on the SMSC's side.

  kill9    N calls at R calls/s (each in progress for 2 s); one instance, chosen at random,
           is killed with -9 at 5 random moments and started again 1 s later. Calls without
           a text (target 0) and duplicate texts per kill (target < 1).
  pgstop   the same replay; PostgreSQL is stopped for 10 s in the middle. Calls without a
           text (target 0).
  latency  last Hangup on the AMI wire → submit_sm on the SMSC's wire, both instances up,
           at 200 calls/s (targets p50 ≤ 3 ms, p99 ≤ 10 ms).
  rate     N messages queued in the outbox, then both instances (window 50 each) send them:
           durable submits per second (target ≥ 5,000/s).

    python bench/ha.py [--calls 5000] [--rate 50] [--lease 10] [--only kill9,pgstop,latency,rate]
                       [--dump latencies.txt] [--policy]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "ami"), str(REPO / "tests" / "smpp"),
                str(REPO / "tests" / "service"), str(REPO)]

from ami_server import AmiServer  # noqa: E402
from diskfull import call_head_and_tail, caller  # noqa: E402
from pgserver import PgServer, server_programs  # noqa: E402
from smsc_sim import SmscSim, parse_submit  # noqa: E402

CONFIG = """
[general]
timezone = "UTC"
default_region = "IN"
outbox = "{dsn}"
instance = "{instance}"
state_dir = "{state_dir}"
lease_seconds = {lease}
log_level = "warning"
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
window = {window}
reconnect_min = 0.05
reconnect_max = 0.5
[dispatch]
batch_size = {window}
[[rules]]
name = "Missed"
recipients = ["caller"]
when = {{ status = "missed" }}
caller = {{ text = "Sorry we missed your call. We will call you back.", sender = "ACME" }}
"""

IN_PROGRESS_SECONDS = 2.0


class TimedSmsc(SmscSim):
    """Counts every submit_sm per destination and notes when the first arrived."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seen: Counter[str] = Counter()
        self.arrivals: dict[str, float] = {}

    def _submit(self, conn, seq, body):  # noqa: ANN001 - the simulator's hook
        destination = parse_submit(body).destination
        self.seen[destination] += 1
        self.arrivals.setdefault(destination, time.perf_counter())
        super()._submit(conn, seq, body)


class Instance:
    """One `aftercalld run` process, started again by `restart`."""

    def __init__(self, name: str, config: Path, log: Path) -> None:
        self.name = name
        self.config = config
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "aftercalld.cli", "run", "-c", str(self.config), stderr=log,
                env={**os.environ, "PYTHONPATH": str(REPO)})

    async def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        await self.proc.wait()

    async def stop(self) -> int:
        if self.proc is None or self.proc.returncode is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.terminate()
        return await self.proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Setup:
    """PostgreSQL, AMI server, SMSC and two instances, in a temp dir."""

    def __init__(self, pg: PgServer, tmp: Path, lease: float, window: int, fast_smsc: bool = False,
                 extra_config: str = "") -> None:
        self.pg = pg
        self.extra_config = extra_config
        self.tmp = tmp
        self.lease = lease
        self.window = window
        self.smsc = TimedSmsc(fast=fast_smsc)
        self.ami: AmiServer | None = None
        self.instances: list[Instance] = []
        self.dsn = ""

    async def __aenter__(self) -> Setup:
        self.dsn = await asyncio.to_thread(self.pg.new_database)
        self.dsn = self.pg.tcp_dsn(self.dsn.rsplit("dbname=", 1)[1])
        self.ami = await AmiServer().start()
        await self.smsc.start()
        for name in ("alpha", "beta"):
            state = self.tmp / f"state-{name}-{self.ami.port}"
            state.mkdir()
            config = self.tmp / f"{name}-{self.ami.port}.toml"
            config.write_text(CONFIG.format(dsn=self.dsn, instance=name, state_dir=state, lease=self.lease,
                                            ami_port=self.ami.port, smpp_port=self.smsc.port, window=self.window)
                              + self.extra_config)
            self.instances.append(Instance(name, config, self.tmp / f"{name}-{self.ami.port}.log"))
        return self

    async def start_all(self) -> None:
        logins = self.ami.ok_logins
        for instance in self.instances:
            await instance.start()
        await self.ami.wait_until(lambda: self.ami.ok_logins >= logins + 2, timeout=120)
        await self.smsc.wait_until(lambda: len(self.smsc.bound()) >= 2, timeout=60)

    async def __aexit__(self, *exc) -> None:
        for instance in self.instances:
            await instance.stop()
        await self.ami.stop()
        await self.smsc.stop()

    def logs(self) -> str:
        return "".join(i.log.read_text(errors="replace") for i in self.instances if i.log.exists())


async def replay(ami: AmiServer, calls: int, rate: float, progress: list[int]) -> None:
    """Call k starts at k/rate and ends IN_PROGRESS_SECONDS later, in time order."""
    timeline = sorted([(k / rate, 0, k) for k in range(calls)]
                      + [(k / rate + IN_PROGRESS_SECONDS, 1, k) for k in range(calls)])
    began = time.perf_counter()
    for at, part, k in timeline:
        wait = began + at - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        head, tail = call_head_and_tail(k)
        try:
            await ami.send(tail if part else head)
        except (ConnectionError, OSError):
            pass  # an instance went away mid-write; the other still reads
        if part:
            progress[0] += 1


async def settled(smsc: TimedSmsc, expected: set[str], quiet: float) -> None:
    """Until every call has its text, or none came for `quiet` seconds."""
    last, since = -1, time.perf_counter()
    while not expected <= smsc.arrivals.keys():
        count = sum(smsc.seen.values())
        if count != last:
            last, since = count, time.perf_counter()
        elif time.perf_counter() - since > quiet:
            return
        await asyncio.sleep(0.2)


def counts(smsc: TimedSmsc, calls: int) -> tuple[int, int]:
    """(calls without a text, duplicate texts)."""
    ours = {"91" + caller(k) for k in range(calls)}
    missing = len(ours - smsc.seen.keys())
    duplicates = sum(n - 1 for d, n in smsc.seen.items() if d in ours)
    return missing, duplicates


async def bench_kill9(pg: PgServer, tmp: Path, calls: int, rate: float, lease: float) -> None:
    async with Setup(pg, tmp, lease, window=10) as s:
        await s.start_all()
        progress = [0]
        duration = calls / rate
        moments = sorted(random.uniform(0.1, 0.9) * duration for _ in range(5))

        async def kills() -> list[str]:
            # One instance at a time: the next kill waits until the last one killed is back
            # on the PBX (both down at once is not what this measures).
            began, victims = time.perf_counter(), []
            for at in moments:
                await asyncio.sleep(max(0.0, began + at - time.perf_counter()))
                victim = random.choice(s.instances)
                victims.append(f"{victim.name}@{time.perf_counter() - began:.0f}s")
                await victim.kill9()
                await asyncio.sleep(1.0)
                logins = s.ami.ok_logins
                await victim.start()
                await s.ami.wait_until(lambda logins=logins: s.ami.ok_logins > logins, timeout=120)
            return victims

        began = time.perf_counter()
        _, victims = await asyncio.gather(replay(s.ami, calls, rate, progress), kills())
        await settled(s.smsc, {"91" + caller(k) for k in range(calls)}, quiet=lease + 10)
        elapsed = time.perf_counter() - began
        missing, duplicates = counts(s.smsc, calls)
        tracebacks = s.logs().count("Traceback")
    print(f"kill9: {calls} calls at {rate:g}/s over {elapsed:.0f} s, kill -9 of {', '.join(victims)} "
          f"(lease {lease:g} s): calls without a text {missing} (target 0); duplicates {duplicates}, "
          f"{duplicates / 5:.1f} per kill (target < 1); tracebacks {tracebacks}")


async def bench_pgstop(pg: PgServer, tmp: Path, calls: int, rate: float, lease: float) -> None:
    async with Setup(pg, tmp, lease, window=10) as s:
        await s.start_all()
        progress = [0]

        async def outage() -> float:
            await asyncio.sleep(calls / rate / 3)
            began = time.perf_counter()
            await asyncio.to_thread(pg.stop, "fast")
            await asyncio.sleep(10)
            await asyncio.to_thread(pg.start)
            return time.perf_counter() - began

        began = time.perf_counter()
        _, down = await asyncio.gather(replay(s.ami, calls, rate, progress), outage())
        await settled(s.smsc, {"91" + caller(k) for k in range(calls)}, quiet=lease + 10)
        elapsed = time.perf_counter() - began
        missing, duplicates = counts(s.smsc, calls)
        log = s.logs()
    print(f"pgstop: {calls} calls at {rate:g}/s over {elapsed:.0f} s, PostgreSQL down {down:.1f} s: "
          f"calls without a text {missing} (target 0); duplicates {duplicates}; "
          f"'wait in memory' logged: {'wait in memory' in log}; tracebacks {log.count('Traceback')}")


# What --policy adds: the shared cooldown and quota, decided across instances (PgOutbox.allow_sends).
POLICY = """
[policy]
cooldown_minutes = 60
daily_quota = 1000000
"""


async def bench_latency(pg: PgServer, tmp: Path, calls: int, rate: float, lease: float,
                        dump: Path | None = None, with_policy: bool = False) -> None:
    async with Setup(pg, tmp, lease, window=10, extra_config=POLICY if with_policy else "") as s:
        await s.start_all()
        sent_at: dict[str, float] = {}
        interval = 1.0 / rate
        began = time.perf_counter()
        for k in range(calls):
            head, tail = call_head_and_tail(k)
            await s.ami.send(head)
            next_at = began + (k + 0.5) * interval
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            sent_at["91" + caller(k)] = time.perf_counter()
            await s.ami.send(tail)
            next_at = began + (k + 1) * interval
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        await settled(s.smsc, set(sent_at), quiet=5)
        elapsed = time.perf_counter() - began
    latencies = sorted((s.smsc.arrivals[n] - t) * 1000 for n, t in sent_at.items() if n in s.smsc.arrivals)
    if dump:  # when each call ended and its latency: where the slow ones cluster
        dump.write_text("".join(f"{t - began:.4f} {(s.smsc.arrivals.get(n, t) - t) * 1000:.3f}\n"
                                for n, t in sent_at.items()))
    q = statistics.quantiles(latencies, n=100)
    policy = " with a cooldown and a daily quota" if with_policy else ""
    print(f"latency: {calls} calls at {rate:g}/s over {elapsed:.1f} s, two instances{policy}, "
          f"PostgreSQL on 127.0.0.1: "
          f"last Hangup → submit_sm p50 {q[49]:.2f} ms, p90 {q[89]:.2f} ms, p99 {q[98]:.2f} ms, "
          f"max {latencies[-1]:.2f} ms (targets p50 ≤ 3, p99 ≤ 10); texts {len(latencies)}")


async def bench_rate(pg: PgServer, tmp: Path, messages: int, lease: float) -> None:
    from aftercalld.config import load
    from aftercalld.model import CallRecord
    from aftercalld.pipeline import CallHandler
    from aftercalld.store.postgres import PgOutbox

    async with Setup(pg, tmp, lease, window=50, fast_smsc=True) as s:
        config = load(s.instances[0].config)
        store = await PgOutbox.open(s.dsn, instance="seed")
        handler = CallHandler(config, store)
        start = datetime.now(UTC) - timedelta(minutes=1)
        for i in range(0, messages, 1000):
            await handler.process([
                CallRecord(call_id=f"seed.{k}", pbx="bench", direction="inbound", status="missed",
                           caller_number=caller(k), dialled_number="18005550100",
                           start_time=start, end_time=start + timedelta(seconds=20))
                for k in range(i, min(messages, i + 1000))])
        await s.start_all()
        began = time.perf_counter()
        await settled(s.smsc, {"91" + caller(k) for k in range(messages)}, quiet=10)
        cur = await store.conn.execute("SELECT claimed_by, COUNT(*) FROM messages WHERE state = 'submitted' "
                                       "GROUP BY claimed_by")
        by_instance = dict(await cur.fetchall())
        # Outcomes are written after the submit_resp: wait for the last of them.
        for _ in range(100):
            if sum(by_instance.values()) >= messages:
                break
            await asyncio.sleep(0.1)
            cur = await store.conn.execute("SELECT claimed_by, COUNT(*) FROM messages WHERE state = 'submitted' "
                                           "GROUP BY claimed_by")
            by_instance = dict(await cur.fetchall())
        await store.close()
    arrivals = sorted(s.smsc.arrivals.values())
    span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else float("nan")
    print(f"rate: {messages} queued messages, two instances with window 50: {len(arrivals)} submitted in "
          f"{span:.2f} s = {len(arrivals) / span:,.0f} submits/s (target ≥ 5,000/s); recorded submitted in the "
          f"outbox by instance: {by_instance}; from start {time.perf_counter() - began:.1f} s")


async def main(only: list[str], calls: int, rate: float, lease: float, dump: Path | None,
               with_policy: bool) -> None:
    if server_programs() is None:
        print("PostgreSQL server programs not found: install Debian's postgresql package")
        return
    pg = PgServer(tcp_port=free_port(), durable=not os.environ.get("HA_NO_FSYNC")).start()
    try:
        await asyncio.to_thread(pg.warm_wal)
        with tempfile.TemporaryDirectory() as tmp:
            if "kill9" in only:
                await bench_kill9(pg, Path(tmp), calls, rate, lease)
            if "pgstop" in only:
                await bench_pgstop(pg, Path(tmp), min(calls, 2000), rate, lease)
            if "latency" in only:
                await bench_latency(pg, Path(tmp), 2000, 200.0, lease, dump, with_policy)
            if "rate" in only:
                await bench_rate(pg, Path(tmp), 20_000, lease)
    finally:
        pg.remove()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--lease", type=float, default=10.0,
                        help="lease_seconds of both instances (the wait before a dead one's claims are taken)")
    parser.add_argument("--only", default="kill9,pgstop,latency,rate")
    parser.add_argument("--dump", type=Path, help="latency: write each call's end (s) and latency (ms) to this file")
    parser.add_argument("--policy", action="store_true",
                        help="latency: with [policy] cooldown_minutes and daily_quota set (decided across instances)")
    args = parser.parse_args()
    asyncio.run(main(args.only.split(","), args.calls, args.rate, args.lease, args.dump, args.policy))

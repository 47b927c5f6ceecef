"""Daemon RSS under a long steady load: a real `aftercalld run` fed N recorded calls.

A test AMI server (tests/ami/ami_server.py) runs in this process and replays
tests/data/traces/asterisk/mixed_concurrent.ami (six overlapping calls: voicemail, connected,
missed, IVR abandon, outbound, connected) over and over, each copy with fresh Uniqueid/Linkedid
values and fresh phone numbers, so every call is new to every cache. The daemon sends over the
`log` transport: an SMSC simulator here would take the CPU the daemon needs on a 2-core machine
(bench/e2e.py covers the SMPP path), and the memory in question is the daemon's own (tracker,
rules, phone cache, outbox), not a peer's.

Calls go as fast as the daemon records them (at most --window calls written but not yet in the
outbox's `calls` table), or paced at --rate calls/s. Every N/20 calls the bench waits until the
daemon has recorded everything sent so far, then reads the daemon's VmRSS from /proc.

Targets (issue 13, item 17): after warm-up (the first tenth of the calls) RSS stays within ±10 %
of the middle of its range, and the peak stays under 150 MB. At the end every call must be in
the outbox (`calls` rows = calls sent, one text per customer call).

--debug-memory starts the daemon under tracemalloc and, at each sample, has it write the
allocation sites that grew most since the first sample plus gc counts and the commonest live
object types (slow, ~30 calls/s: use it with --calls 20000 or so).

    python bench/memory.py [--calls 1000000] [--rate 0] [--window 3000] [--debug-memory]
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "ami"))

from ami_server import AmiServer  # noqa: E402

TRACE = REPO / "tests" / "data" / "traces" / "asterisk" / "mixed_concurrent.ami"
SAMPLES = 20
MB = 1_000_000
MIB = 2**20

# Unique/Linked ids, and the phone numbers of the trace's five outside parties (four callers,
# one dialled number), each replaced per copy.
SLOT_RE = re.compile(rb"\b\d{10}\.\d+\b|\+12125550147|14155550123|9876543210|4155550111|9123456780")
NUMBERS = (b"+12125550147", b"14155550123", b"9876543210", b"4155550111", b"9123456780")

CONFIG = """
[general]
timezone = "UTC"
default_region = "IN"
outbox = "{outbox}"
log_level = "warning"
[[pbx]]
name = "bench"
type = "asterisk"
port = {ami_port}
username = "aftercalld"
secret = "test"
ping_timeout = {ping_timeout}
[transport]
type = "log"
[[rules]]
name = "Missed"
recipients = ["caller"]
when = {{ status = ["missed", "voicemail"] }}
caller = {{ text = "Sorry we missed your call. We will call you back.", sender = "ACME" }}
[[rules]]
name = "Connected"
recipients = ["caller"]
when = {{ status = "connected" }}
caller = {{ text = "Thanks for calling ACME.", sender = "ACME" }}
"""

# Runs the daemon with tracemalloc on; SIGUSR2 writes a report next to the outbox.
DEBUG_BOOT = """
import gc, signal, sys, tracemalloc
from collections import Counter
tracemalloc.start(4)
first = None
def report(signum, frame):
    global first
    snap = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib._bootstrap>")])
    out = [f"traced: {tracemalloc.get_traced_memory()[0] / 2**20:.1f} MiB; gc counts {gc.get_count()}, "
           f"frozen {gc.get_freeze_count()}, stats {[s['collections'] for s in gc.get_stats()]}"]
    if first is None:
        first = snap
    else:
        for stat in snap.compare_to(first, "traceback")[:12]:
            out.append(f"{stat.size_diff / 2**20:+8.2f} MiB {stat.count_diff:+9d} blocks")
            out.extend("      " + line for line in stat.traceback.format()[-6:])
    kinds = Counter(type(o).__name__ for o in gc.get_objects())
    out.append("live objects: " + ", ".join(f"{k} {v}" for k, v in kinds.most_common(12)))
    with open(report_path, "a") as fh:
        fh.write("\\n".join(out) + "\\n\\n")
signal.signal(signal.SIGUSR2, report)
report_path = sys.argv.pop()
from aftercalld.cli import main
sys.exit(main(sys.argv[1:]))
"""


class Template:
    """The trace's events (FullyBooted dropped) with id and number slots, renderable for copy k."""

    def __init__(self) -> None:
        raw = TRACE.read_bytes()
        data = b"\r\n".join(line for line in raw.split(b"\r\n") if not line.startswith(b"#"))
        blocks = [b + b"\r\n\r\n" for b in data.split(b"\r\n\r\n")
                  if b.strip() and not b.startswith(b"Event: FullyBooted")]
        slots: dict[bytes, int] = {}
        self.parts: list[bytes | int] = []
        for block in blocks:
            pos = 0
            for m in SLOT_RE.finditer(block):
                self.parts.append(block[pos:m.start()])
                self.parts.append(slots.setdefault(m.group(), len(slots)))
                pos = m.end()
            self.parts.append(block[pos:])
        self.numbers = {slot: NUMBERS.index(value) for value, slot in slots.items() if value in NUMBERS}
        self.calls = len({m.group() for m in re.finditer(rb"Linkedid: (\S+)", data)})

    def render(self, k: int) -> bytes:
        out = []
        for p in self.parts:
            if isinstance(p, bytes):
                out.append(p)
            elif p in self.numbers:
                out.append(b"9%d%08d" % (self.numbers[p], k))  # a valid Indian mobile number
            else:
                out.append(b"9%09d.%d" % (k, p))
        return b"".join(out)


def vmrss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / MIB
    raise RuntimeError(f"no VmRSS for pid {pid}")


def recorded(db: sqlite3.Connection) -> int:
    return db.execute("SELECT coalesce(max(rowid), 0) FROM calls").fetchone()[0]


async def wait_recorded(db: sqlite3.Connection, at_least: int, daemon: asyncio.subprocess.Process) -> None:
    stalled_since = time.monotonic()
    last = -1
    while (n := recorded(db)) < at_least:
        if daemon.returncode is not None:
            raise SystemExit(f"the daemon exited with {daemon.returncode}")
        if n != last:
            last, stalled_since = n, time.monotonic()
        elif time.monotonic() - stalled_since > 60:
            raise SystemExit(f"the daemon recorded no call for 60 s ({n} of {at_least})")
        await asyncio.sleep(0.02)


async def run(calls: int, rate: float, window: int, debug: bool) -> list[tuple[int, float]]:
    tpl = Template()
    copies = max(1, calls // tpl.calls)
    calls = copies * tpl.calls
    sample_every = max(1, copies // SAMPLES)
    ami = await AmiServer().start()
    with tempfile.TemporaryDirectory() as tmp:
        outbox = Path(tmp) / "outbox.sqlite3"
        config = Path(tmp) / "bench.toml"
        # tracemalloc slows the daemon's reads enough to miss the 5 s Ping deadline
        config.write_text(CONFIG.format(outbox=outbox, ami_port=ami.port, ping_timeout=600 if debug else 5))
        report = Path(tmp) / "tracemalloc.txt"
        args = ["-c", DEBUG_BOOT, "run", "-c", str(config), str(report)] if debug else \
            ["-m", "aftercalld.cli", "run", "-c", str(config)]
        daemon = await asyncio.create_subprocess_exec(sys.executable, *args,
                                                      env={**os.environ, "PYTHONPATH": str(REPO)})
        samples: list[tuple[int, float]] = []
        try:
            await ami.wait_until(lambda: ami.ok_logins >= 1, timeout=30)
            db = sqlite3.connect(f"file:{outbox}?mode=ro", uri=True)
            began = time.perf_counter()
            for k in range(copies):
                await ami.send(tpl.render(k))
                sent = (k + 1) * tpl.calls
                if rate:
                    await asyncio.sleep(max(0.0, began + sent / rate - time.perf_counter()))
                if sent - window > 0 and (k % 16 == 0):
                    await wait_recorded(db, sent - window, daemon)
                if (k + 1) % sample_every == 0 or k + 1 == copies:
                    await wait_recorded(db, sent, daemon)
                    samples.append((sent, vmrss_mib(daemon.pid)))
                    if debug:
                        daemon.send_signal(signal.SIGUSR2)
                    elapsed = time.perf_counter() - began
                    print(f"  {sent:>9,} calls  {samples[-1][1]:6.1f} MiB  {elapsed:7.0f} s  "
                          f"{sent / elapsed:5.0f} calls/s", flush=True)
            elapsed = time.perf_counter() - began
            texts = db.execute("SELECT count(*) FROM messages").fetchone()[0]
            rows = db.execute("SELECT count(*) FROM calls").fetchone()[0]
            db.close()
        finally:
            if daemon.returncode is None:
                daemon.terminate()
            await daemon.wait()
            await ami.stop()
        if debug:
            await asyncio.sleep(0.5)
            print(report.read_text() if report.exists() else "(no tracemalloc report written)")
    print(f"calls sent: {calls:,} ({copies:,} copies of {TRACE.name}) in {elapsed:.0f} s, "
          f"{calls / elapsed:,.0f} calls/s{f' (paced at {rate:g}/s)' if rate else ''}")
    print(f"outbox: {rows:,} calls recorded, {texts:,} texts ({texts / copies:g} per copy) -> "
          f"{'every call recorded' if rows == calls else 'CALLS MISSING'}")
    return samples


def verdict(samples: list[tuple[int, float]], calls: int) -> bool:
    warm = [s for s in samples if s[0] > calls // 10] or samples[-1:]
    lo, hi = min(mb for _, mb in warm), max(mb for _, mb in warm)
    peak_mib = max(mb for _, mb in samples)
    around = (hi - lo) / (hi + lo) * 100
    print("\n    calls   RSS MiB")
    for n, mb in samples:
        print(f"{n:>9,}   {mb:7.1f}")
    print(f"warm-up: the first {calls // 10:,} calls (samples from {warm[0][0]:,} on)")
    print(f"after warm-up: {lo:.1f}–{hi:.1f} MiB, spread (max/min − 1) {(hi / lo - 1) * 100:.1f} %, "
          f"±{around:.1f} % around the middle")
    print(f"peak: {peak_mib:.1f} MiB = {peak_mib * MIB / MB:.1f} MB")
    flat, small = around <= 10, peak_mib * MIB < 150 * MB
    print(f"targets: flat within ±10 % after warm-up: {'met' if flat else 'NOT met'}; "
          f"peak < 150 MB: {'met' if small else 'NOT met'}")
    return flat and small


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=0.0, help="calls/s; 0: as fast as the daemon records them")
    parser.add_argument("--window", type=int, default=3000, help="most calls sent but not yet recorded")
    parser.add_argument("--debug-memory", action="store_true", help="tracemalloc/gc report from the daemon")
    args = parser.parse_args()
    window = min(args.window, 300) if args.debug_memory else args.window  # tracemalloc: a slow reader
    samples = asyncio.run(run(args.calls, args.rate, window, args.debug_memory))
    ok = verdict(samples, samples[-1][0])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

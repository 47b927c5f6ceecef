#!/usr/bin/env python3
"""HTTP API benchmark: POST /v1/messages against a real `aftercalld run`, outbox write included.

The daemon runs as its own process (the log transport, so its dispatcher marks every text
submitted in the same outbox while the requests come in); the load comes from --procs other
processes, each with --connections keep-alive connections. Every request
has its own Idempotency-Key and a different number, so each is a new row in the outbox.

Modes:
  throughput  each connection sends its next request as soon as the last is answered:
              requests/s, and the latency that load gives (p50/p99/max)
  latency     paced at --rate requests/s in all (open loop: a request's latency is counted
              from when it was due, so a stall is not hidden): p50/p99/max

Target (issue 18): >= 2,000 requests/s, p99 <= 20 ms.

  python bench/api.py throughput --seconds 10 --procs 2 --connections 16
  python bench/api.py latency --rate 2000 --seconds 10 --procs 2 --connections 16
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOKEN = "bench-token-0123456789abcdef"

CONFIG = """
[general]
timezone = "Europe/London"
default_region = "GB"
outbox = "{outbox}"
log_level = "warning"
{dispatch}

[transport]
type = "log"

[templates.missed]
text = "Sorry we missed your call."

[[rules]]
name = "Missed"
recipients = ["caller"]
when = {{ status = "missed" }}
caller = {{ template = "missed", sender = "Acme" }}

[api]
enabled = true
listen = "127.0.0.1:{port}"
tokens_file = "{tokens}"
sender = "Acme"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_daemon(tmp: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    tokens = tmp / "api-tokens"
    tokens.write_text(f"bench:{TOKEN}\n")
    tokens.chmod(0o600)
    config = tmp / "aftercalld.toml"
    config.write_text(CONFIG.format(outbox=tmp / "outbox.sqlite3", port=port, tokens=tokens,
                                  dispatch=os.environ.get("BENCH_DISPATCH", "")))
    proc = subprocess.Popen([sys.executable, "-m", "aftercalld", "run", "-c", str(config)],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"the daemon exited: {proc.stderr.read() if proc.stderr else ''}") from None
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("the daemon did not listen within 30 s")


def generator(index: int, port: int, mode: str, seconds: float, connections: int, rate: float,
              start_at: float, out: mp.Queue) -> None:
    """One load process: its latencies (seconds) and how many failed. HTTP/1.1 written and
    read by hand on asyncio streams: a full HTTP client costs several times the CPU, and
    on 2 cores that CPU is taken from the daemon being measured."""

    async def main() -> tuple[list[float], list[float], int]:
        latencies: list[float] = []
        answer_times: list[float] = []
        failures = 0
        links = [await asyncio.open_connection("127.0.0.1", port) for _ in range(connections)]
        await asyncio.sleep(max(0.0, start_at - time.time()))
        t0 = time.perf_counter()
        end = t0 + seconds
        head = (f"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\n"
                f"Content-Type: application/json\r\n").encode()

        async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int, due: float) -> None:
            nonlocal failures
            body = b'{"to": "+4474%08d", "text": "Your order %d is ready."}' % (n % 10**8, n)
            sent = time.perf_counter()
            writer.write(head + b"Idempotency-Key: g%d-%d\r\nContent-Length: %d\r\n\r\n" % (index, n, len(body))
                         + body)
            answer = await reader.readuntil(b"\r\n\r\n")
            length = int(answer.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
            await reader.readexactly(length)
            if not answer.startswith(b"HTTP/1.1 201"):
                failures += 1
            answered = time.perf_counter()
            latencies.append(answered - due)
            answer_times.append(answered - sent)

        async def worker(w: int) -> None:
            reader, writer = links[w]
            n = w
            interval = connections / rate if mode == "latency" else 0.0
            due = t0 + (w / connections) * interval
            while True:
                now = time.perf_counter()
                if now >= end:
                    writer.close()
                    return
                if mode == "latency":
                    if due > now:
                        await asyncio.sleep(due - now)
                else:
                    due = now
                await one(reader, writer, index * 10_000_000 + n, due)
                n += connections
                due += interval

        await asyncio.gather(*(worker(w) for w in range(connections)))
        return latencies, answer_times, failures

    out.put(asyncio.run(main()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("throughput", "latency"))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--procs", type=int, default=2, help="load generator processes")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections per process")
    parser.add_argument("--rate", type=float, default=2000.0, help="requests/s in all (latency mode)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aftercalld-bench-api-") as tmp:
        proc, port = start_daemon(Path(tmp))
        try:
            out: mp.Queue = mp.Queue()
            start_at = time.time() + 1.0 + 0.3 * args.procs
            gens = [mp.Process(target=generator, args=(i, port, args.mode, args.seconds, args.connections,
                                                       args.rate / args.procs, start_at, out))
                    for i in range(args.procs)]
            for g in gens:
                g.start()
            results = [out.get(timeout=args.seconds + 120) for _ in gens]
            for g in gens:
                g.join()
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        db = sqlite3.connect(Path(tmp) / "outbox.sqlite3")
        stored = dict(db.execute("SELECT state, COUNT(*) FROM messages GROUP BY state").fetchall())
        db.close()
    latencies = sorted(x for lat, _, _ in results for x in lat)
    answer_times = sorted(x for _, answers, _ in results for x in answers)
    failures = sum(f for _, _, f in results)
    total = len(latencies)
    p = statistics.quantiles(latencies, n=100) if total >= 100 else [float("nan")] * 99
    a = statistics.quantiles(answer_times, n=100) if total >= 100 else [float("nan")] * 99
    print(f"mode {args.mode}: {args.procs} process(es) x {args.connections} connection(s), {args.seconds:g} s"
          + (f", paced at {args.rate:g}/s" if args.mode == "latency" else ""))
    print(f"requests: {total} ({failures} not 201), {total / args.seconds:,.0f} requests/s")
    print(f"latency: p50 {p[49] * 1000:.2f} ms, p99 {p[98] * 1000:.2f} ms, max {latencies[-1] * 1000:.2f} ms")
    if args.mode == "latency":
        # The part of it from the request's write to its answer: what is left is time the
        # request waited to be written (its connection busy, or the load process itself late).
        print(f"  of which write to answer: p50 {a[49] * 1000:.2f} ms, p99 {a[98] * 1000:.2f} ms, "
              f"max {answer_times[-1] * 1000:.2f} ms")
    print(f"outbox after the run: {stored}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Webhooks benchmark: a real `aftercalld run` between the SMSC simulator and a webhook
receiver (aiohttp, checking every signature), all on 127.0.0.1.

Modes:
  latency  customers' replies (deliver_sm) paced at --rate per second: the time from the
           simulator sending the deliver_sm to the receiver holding the signed
           reply.received event, p50/p99/max. Goal: p99 <= 50 ms.
  kill9    replies at --rate while the receiver answers (after --answer-ms); the daemon is
           killed with SIGKILL half-way, started again, and the run counts the events that
           arrived: lost (goal 0) and duplicates (same event id posted twice: at-least-once).

  python bench/webhooks.py latency --replies 2000 --rate 100
  python bench/webhooks.py kill9 --replies 2000 --rate 200
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for sub in ("", "tests/smpp", "tests/service", "tests/webhooks"):
    sys.path.insert(0, str(REPO / sub))

from daemon_proc import Daemon  # noqa: E402
from receiver import Receiver  # noqa: E402
from smsc_sim import SmscSim  # noqa: E402

SECRET = "bench-webhook-secret-0123456789abcdef"

CONFIG = '''
[general]
timezone = "Europe/London"
default_region = "GB"
outbox = "{outbox}"
log_level = "{log_level}"

[transport]
type = "smpp"
hosts = ["127.0.0.1:{smpp_port}"]
system_id = "esme"
password = "secret"
reconnect_min = 0.05
reconnect_max = 0.2

[[webhook]]
name = "bench"
url = "{url}"
secret_file = "{secret_file}"
events = ["reply.received"]
retry_initial_seconds = 0.05
retry_max_seconds = 0.5
concurrency = 16
'''


async def start_daemon(tmp: Path, sim: SmscSim, receiver: Receiver, log_level: str) -> Daemon:
    (tmp / "secret").write_text(SECRET)
    config = tmp / "aftercalld.toml"
    config.write_text(CONFIG.format(outbox=tmp / "outbox.sqlite3", smpp_port=sim.port, url=receiver.url,
                                    secret_file=tmp / "secret", log_level=log_level))
    daemon = await Daemon(config).start()
    await sim.wait_until(lambda: len(sim.bound()) >= 1, timeout=30)
    return daemon


async def send_paced(sim: SmscSim, count: int, rate: float, sent_at: dict[str, float],
                     stop_after: int | None = None) -> int:
    """Replies "bench reply <i>" from distinct numbers at `rate`/s; returns how many the
    SMSC saw acknowledged (0 = stored with its webhook row)."""
    acked = 0
    pending: set[asyncio.Task] = set()
    start = time.perf_counter()
    last = min(count, stop_after) if stop_after is not None else count

    async def one(i: int) -> None:
        nonlocal acked
        text = f"bench reply {i}"
        sent_at[text] = time.perf_counter()
        if await sim.send_mo(f"4474{i:08d}", text) == 0:
            acked += 1

    for i in range(last):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(i))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    return acked


async def latency(args) -> None:
    sim = SmscSim()
    await sim.start()
    receiver = await Receiver(SECRET.encode()).start()
    with tempfile.TemporaryDirectory() as tmp:
        daemon = await start_daemon(Path(tmp), sim, receiver, args.log_level)
        try:
            await send_paced(sim, args.warmup, args.rate, {})
            await receiver.wait_until(lambda: len(receiver.accepted()) >= args.warmup, timeout=60)
            receiver.received.clear()
            sim_sent = {}
            sent_before = time.perf_counter()

            async def numbered() -> int:
                # Distinct texts from the warm-up: numbers continue after it.
                acked = 0
                pending = []
                for i in range(args.replies):
                    delay = sent_before + i / args.rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    text = f"bench reply {args.warmup + i}"

                    async def one(text: str = text, i: int = i) -> None:
                        nonlocal acked
                        sim_sent[text] = time.perf_counter()
                        if await sim.send_mo(f"4475{i:08d}", text) == 0:
                            acked += 1
                    pending.append(asyncio.create_task(one()))
                await asyncio.gather(*pending)
                return acked

            acked = await numbered()
            await receiver.wait_until(lambda: len(receiver.accepted()) >= args.replies, timeout=60)
            lat = sorted((r.at - sim_sent[r.event["data"]["text"]]) * 1000 for r in receiver.received
                         if 200 <= r.status < 300 and r.event["data"]["text"] in sim_sent)
            assert receiver.bad_signatures == 0
            q = statistics.quantiles(lat, n=100)
            print(f"latency: {args.replies} replies at {args.rate:g}/s ({acked} acknowledged), deliver_sm -> "
                  f"signed webhook received: p50 {q[49]:.1f} ms, p99 {q[98]:.1f} ms, max {lat[-1]:.1f} ms "
                  f"(goal p99 <= 50 ms: {'met' if q[98] <= 50 else 'MISSED'})")
        finally:
            daemon.signal(signal.SIGTERM)
            await daemon.wait()
            await receiver.stop()
            await sim.stop()


async def kill9(args) -> None:
    sim = SmscSim()
    await sim.start()
    receiver = await Receiver(SECRET.encode(), answer_delay=args.answer_ms / 1000).start()
    with tempfile.TemporaryDirectory() as tmp:
        daemon = await start_daemon(Path(tmp), sim, receiver, args.log_level)
        try:
            sent_at: dict[str, float] = {}
            half = args.replies // 2
            acked = await send_paced(sim, args.replies, args.rate, sent_at, stop_after=half)
            in_flight_at_kill = len(receiver.received)
            daemon.signal(signal.SIGKILL)
            await daemon.wait()
            before_kill = len({e["id"] for e in receiver.accepted()})
            await sim.wait_until(lambda: not sim.bound(), timeout=30)  # the killed daemon's bind is gone
            daemon = await start_daemon(Path(tmp), sim, receiver, args.log_level)
            sent_rest: dict[str, float] = {}
            began = time.perf_counter()

            async def rest() -> int:
                n = 0
                for i in range(half, args.replies):
                    text = f"bench reply {i}"
                    sent_rest[text] = time.perf_counter()
                    if await sim.send_mo(f"4474{i:08d}", text) == 0:
                        n += 1
                    delay = began + (i - half + 1) / args.rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                return n

            acked += await rest()
            want = {f"bench reply {i}" for i in range(args.replies)}
            await receiver.wait_until(lambda: {e["data"]["text"] for e in receiver.accepted()} >= want, timeout=120)
            accepted = receiver.accepted()
            per_id = collections.Counter(e["id"] for e in accepted)
            ids_per_text = collections.defaultdict(set)
            for e in accepted:
                ids_per_text[e["data"]["text"]].add(e["id"])
            lost = len(want - set(ids_per_text))
            duplicates = sum(per_id.values()) - len(per_id)
            assert all(len(ids) == 1 for ids in ids_per_text.values()), "a reply posted under two event ids"
            print(f"kill9: {args.replies} replies ({acked} acknowledged by the daemon), SIGKILL after {half} "
                  f"({before_kill} delivered before, {in_flight_at_kill} posts seen by then); after restart: "
                  f"{lost} lost, {duplicates} duplicate post(s) (same event id), "
                  f"{receiver.bad_signatures} bad signature(s)")
        finally:
            await daemon.kill()
            await receiver.stop()
            await sim.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("latency", "kill9"))
    parser.add_argument("--replies", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=100.0, help="replies per second")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--answer-ms", type=float, default=5.0, help="kill9: the receiver's answer time")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    args = parser.parse_args()
    asyncio.run(latency(args) if args.mode == "latency" else kill9(args))


if __name__ == "__main__":
    main()

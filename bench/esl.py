"""FreeSWITCH ESL benchmark: prints figures, asserts nothing.

    /work/venv/bin/python bench/esl.py [--quick]

1. Throughput: a separate process plays FreeSWITCH's event socket on 127.0.0.1 and sends
   recorded calls (the traces in tests/data, every Unique-ID renewed per call) as fast as TCP
   takes them; the real EslSource (framing, URL-decoding, tracker) counts finished calls.
   Measured twice: with every event FreeSWITCH emits (`event plain ALL`, the traces' mix)
   and with only the events aftercalld subscribes to.
2. Latency: calls start at 50/s, each call's events keep their recorded timing (about 150
   calls overlap); figure = time from the server writing a call's last
   CHANNEL_HANGUP_COMPLETE to the CallRecord reaching the sink.
3. Memory: the tracker alone fed 1,000,000 calls; RSS at 100k, 250k, 500k and 1M calls.
"""
from __future__ import annotations

import argparse
import asyncio
import heapq
import multiprocessing as mp
import os
import re
import resource
import socket
import statistics
import sys
import time
import uuid as uuidlib
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from aftercalld.esl.config import EslSettings  # noqa: E402
from aftercalld.esl.protocol import parse_plain_event  # noqa: E402
from aftercalld.esl.source import EslSource  # noqa: E402
from aftercalld.esl.tracker import SUBSCRIBE_EVENTS, EslTracker  # noqa: E402
from aftercalld.pbxconfig import default_pbx  # noqa: E402

TRACES = REPO / "tests" / "data" / "traces" / "freeswitch"
TEMPLATES = ["inbound_connected.esl", "inbound_missed_noanswer.esl", "inbound_voicemail.esl",
             "outbound_connected.esl", "ivr_abandon.esl"]
UUID_RE = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
RECORD_RE = re.compile(rb"^#@ \S+ (\S+) seq=\d+ len=(\d+)")
BENCH_CORE = b"00000000-0000-4000-8000-00000000c0de"
SUBSCRIBED = set(SUBSCRIBE_EVENTS.replace("CUSTOM vm::maintenance", "CUSTOM").split())


class Template:
    """One recorded call: its events as byte segments split at every Unique-ID, so a new
    call is a join with fresh UUIDs of the same length (Content-Length stays right)."""

    def __init__(self, path: Path, only_subscribed: bool) -> None:
        data = path.read_bytes()
        records: list[tuple[float, bytes]] = []
        pos = 0
        while pos < len(data):
            end = data.index(b"\n", pos)
            m = RECORD_RE.match(data[pos:end])
            if m:
                n = int(m.group(2))
                records.append((float(m.group(1)), data[end + 1:end + 1 + n]))
                pos = end + 1 + n + 1
            else:
                pos = end + 1
        events = [(t, raw) for t, raw in records if b"Content-Type: text/event-plain" in raw.split(b"\n\n", 1)[0]]
        core = re.search(rb"Core-UUID: (\S+)", events[0][1]).group(1)
        self.events: list[tuple[float, list[bytes], list[int]]] = []  # (offset, segments, uuid slots)
        self.uuids: list[bytes] = []
        index: dict[bytes, int] = {}
        t0 = events[0][0]
        last_hc = -1
        self.call_leg_slot = -1
        for t, raw in events:
            body = raw.split(b"\n\n", 1)[1]
            name = re.search(rb"Event-Name: (\S+)", body).group(1).decode()
            if only_subscribed and name not in SUBSCRIBED:
                continue
            if only_subscribed and name == "CUSTOM" and b"vm%3A%3Amaintenance" not in body:
                continue
            raw = raw.replace(core, BENCH_CORE)  # one FreeSWITCH, not one per recording
            segs, slots, last = [], [], 0
            for m in UUID_RE.finditer(raw):
                if m.group() == BENCH_CORE:
                    continue
                segs.append(raw[last:m.start()])
                slots.append(index.setdefault(m.group(), len(index)))
                last = m.end()
            segs.append(raw[last:])
            if name == "CHANNEL_HANGUP_COMPLETE":
                last_hc = len(self.events)
                if b"variable_call_direction" in body:
                    uid = re.search(rb"\nUnique-ID: (\S+)", body).group(1)
                    self.call_leg_slot = index[uid]
            self.events.append((t - t0, segs, slots))
        self.final_index = last_hc
        self.n_uuids = len(index)

    def render(self) -> tuple[str, list[tuple[float, bytes, bool]]]:
        fresh = [str(uuidlib.uuid4()).encode() for _ in range(self.n_uuids)]
        out = []
        for i, (offset, segs, slots) in enumerate(self.events):
            parts = [segs[0]]
            for seg, slot in zip(segs[1:], slots, strict=True):
                parts.append(fresh[slot])
                parts.append(seg)
            out.append((offset, b"".join(parts), i == self.final_index))
        return fresh[self.call_leg_slot].decode(), out


def _handshake(conn: socket.socket) -> None:
    conn.sendall(b"Content-Type: auth/request\n\n")
    f = conn.makefile("rb")
    for reply in (b"+OK accepted", b"+OK event listener enabled plain"):  # auth, then event
        while f.readline() not in (b"\n", b""):
            pass
        conn.sendall(b"Content-Type: command/reply\nReply-Text: " + reply + b"\n\n")
    # Then the live channels the source reconciles with on every connect: none yet.
    while f.readline() not in (b"\n", b""):
        pass
    body = b'{"row_count":0}'
    conn.sendall(b"Content-Type: api/response\nContent-Length: %d\n\n%s" % (len(body), body))


def server_flood(port_q: mp.Queue, calls: int, only_subscribed: bool, stats_q: mp.Queue) -> None:
    templates = [Template(TRACES / name, only_subscribed) for name in TEMPLATES]
    # Everything is rendered before the client connects, so the measurement is the
    # client's speed, not this process's (both share the machine's cores).
    chunks: list[bytes] = []
    sent_events = 0
    for base in range(0, calls, 20):  # 20 calls in flight at a time, their events interleaved
        rendered = [templates[(base + k) % len(templates)].render()[1] for k in range(min(20, calls - base))]
        batch = []
        for i in range(max(len(r) for r in rendered)):
            for r in rendered:
                if i < len(r):
                    batch.append(r[i][1])
        sent_events += len(batch)
        chunks.append(b"".join(batch))
    lsock = socket.create_server(("127.0.0.1", 0))
    port_q.put(lsock.getsockname()[1])
    conn, _ = lsock.accept()
    _handshake(conn)
    started = time.perf_counter()
    for chunk in chunks:
        conn.sendall(chunk)
    stats_q.put((sent_events, sum(map(len, chunks)), time.perf_counter() - started))
    conn.recv(1)  # wait for the client to hang up
    conn.close()


def server_paced(port_q: mp.Queue, calls: int, rate: float, stats_q: mp.Queue) -> None:
    templates = [Template(TRACES / name, True) for name in TEMPLATES]
    schedule: list[tuple[float, int, bytes, str]] = []
    seq = 0
    for i in range(calls):
        call_id, events = templates[i % len(templates)].render()
        for offset, raw, final in events:
            seq += 1
            heapq.heappush(schedule, (i / rate + offset, seq, raw, call_id if final else ""))
    lsock = socket.create_server(("127.0.0.1", 0))
    port_q.put(lsock.getsockname()[1])
    conn, _ = lsock.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    _handshake(conn)
    t0 = time.time() + 0.2
    finals: dict[str, float] = {}
    while schedule:
        at, _, raw, call_id = heapq.heappop(schedule)
        delay = t0 + at - time.time()
        if delay > 0:
            time.sleep(delay)
        if call_id:
            finals[call_id] = time.time()
        conn.sendall(raw)
    stats_q.put(finals)
    conn.recv(1)
    conn.close()


async def run_client(port: int, want_calls: int) -> tuple[dict[str, float], float, EslSource]:
    settings = EslSettings(port=port, password="ClueCon", heartbeat_timeout=0)
    source = EslSource(replace(default_pbx("freeswitch", name="bench"), settings=settings))
    arrived: dict[str, float] = {}
    done = asyncio.Event()
    first: list[float] = []

    async def sink(record) -> None:
        if not first:
            first.append(time.perf_counter())
        arrived[record.call_id] = time.time()
        if len(arrived) >= want_calls:
            done.set()

    import logging
    logging.getLogger("aftercalld").setLevel(logging.ERROR)
    task = asyncio.create_task(source.run(sink))
    start = time.perf_counter()
    await asyncio.wait_for(done.wait(), 600)
    elapsed = time.perf_counter() - start
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    return arrived, elapsed, source


def throughput(calls: int, only_subscribed: bool) -> None:
    ctx = mp.get_context("fork")
    port_q, stats_q = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=server_flood, args=(port_q, calls, only_subscribed, stats_q))
    proc.start()
    port = port_q.get()
    arrived, elapsed, source = asyncio.run(run_client(port, calls))
    sent_events, sent_bytes, _ = stats_q.get()
    proc.join(5)
    label = "subscribed events only" if only_subscribed else "every event (event plain ALL)"
    print(f"  {label:30s}: {sent_events:>7,} events ({sent_bytes / sent_events / 1024:.1f} KiB avg), "
          f"{len(arrived):,} calls in {elapsed:.2f} s = {sent_events / elapsed:>7,.0f} events/s, "
          f"{len(arrived) / elapsed:,.0f} calls/s")


def latency(calls: int, rate: float) -> None:
    ctx = mp.get_context("fork")
    port_q, stats_q = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=server_paced, args=(port_q, calls, rate, stats_q))
    proc.start()
    port = port_q.get()
    arrived, _, _ = asyncio.run(run_client(port, calls))
    finals = stats_q.get()
    proc.join(5)
    lat = sorted((arrived[c] - finals[c]) * 1000 for c in finals if c in arrived)
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]  # noqa: E731
    print(f"  {len(lat):,} calls at {rate:g} calls/s, last CHANNEL_HANGUP_COMPLETE -> CallRecord: "
          f"p50 {statistics.median(lat):.2f} ms, p99 {p(0.99):.2f} ms, max {lat[-1]:.2f} ms")


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory(total: int) -> None:
    """The real decode path (raw event bytes -> PlainEvent -> tracker), without the socket;
    Unique-IDs come from a counter (uuid4 would dominate the run)."""
    bodies = []
    for name in TEMPLATES:
        t = Template(TRACES / name, True)
        events = []
        for _, segs, slots in t.events:
            raw = segs[0]
            cut = raw.index(b"\n\n") + 2  # outer headers (no Unique-ID in them) off
            events.append(([raw[cut:]] + segs[1:], slots))
        bodies.append((t.n_uuids, events))
    tracker = EslTracker(default_pbx("freeswitch", name="bench"))
    import logging
    logging.getLogger("aftercalld").setLevel(logging.ERROR)
    checkpoints = {100_000, 250_000, 500_000, 750_000, 1_000_000, total}
    now = 0.0
    reported = events_fed = 0
    start = time.perf_counter()
    for i in range(total):
        n_uuids, events = bodies[i % len(bodies)]
        fresh = [b"%08x-%04x-4000-8000-000000000000" % (i, k) for k in range(n_uuids)]
        for segs, slots in events:
            parts = [segs[0]]
            for seg, slot in zip(segs[1:], slots, strict=True):
                parts.append(fresh[slot])
                parts.append(seg)
            reported += len(tracker.feed(parse_plain_event(b"".join(parts)), now))
            events_fed += 1
        now += 0.02  # 50 calls/s of simulated time (ended calls are remembered 120 s)
        if i + 1 in checkpoints:
            el = time.perf_counter() - start
            print(f"  {i + 1:>9,} calls: RSS {rss_mib():6.1f} MiB, calls in progress {tracker.active_calls()}, "
                  f"reported {reported:,} ({events_fed / el:,.0f} events/s decode+track)", flush=True)
    assert reported == total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller runs (about 20 s), memory run of 100k calls")
    ap.add_argument("--memory-calls", type=int, default=1_000_000)
    ap.add_argument("--only", choices=["throughput", "latency", "memory"], help="run one part")
    args = ap.parse_args()
    print(f"aftercalld ESL benchmark (Python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")
    if args.only in (None, "throughput"):
        print("Throughput, client + tracker over TCP:")
        throughput(300 if args.quick else 600, only_subscribed=False)
        throughput(1000 if args.quick else 3000, only_subscribed=True)
    if args.only in (None, "latency"):
        print("Latency:")
        latency(250 if args.quick else 1500, 50.0)
    if args.only in (None, "memory"):
        print("Memory (decode + tracker, no socket):")
        memory(100_000 if args.quick else args.memory_calls)


if __name__ == "__main__":
    main()

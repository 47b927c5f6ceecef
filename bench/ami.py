#!/usr/bin/env python3
"""AMI source + tracker benchmark over a loopback socket.

A test AMI server (tests/ami/ami_server.py) in a separate process -- as Asterisk would be --
replays tests/data/traces/asterisk/mixed_concurrent.ami N times with renumbered Uniqueid/Linkedid
values; this process runs the real `AmiSource` (login, framing, tracker) and counts the
CallRecords it hands on.

Modes:
  throughput  as fast as TCP allows: events/s, calls/s, RSS every --rss-every calls
              (flat RSS = bounded tracker state), peak RSS.
  latency     paced like a live PBX at --rate calls/s (each copy keeps the trace's own event
              timing): time from the server writing a call's last Hangup to the CallRecord
              reaching on_call, p50/p99/max.

--filtered applies the manager.conf eventfilter from README ("Asterisk (AMI)") on the server side (what
Asterisk would send with it), the recommended production setup.

  python bench/ami.py throughput --calls 100000
  python bench/ami.py throughput --calls 1000000 --filtered --rss-every 100000
  python bench/ami.py latency --rate 50 --seconds 40
"""
from __future__ import annotations

import argparse
import asyncio
import heapq
import logging
import multiprocessing as mp
import os
import re
import resource
import statistics
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "ami"))

from aftercalld.ami.config import AmiSettings  # noqa: E402
from aftercalld.ami.protocol import parse_block  # noqa: E402
from aftercalld.ami.source import AmiSource  # noqa: E402
from aftercalld.ami.trace import read_trace  # noqa: E402
from aftercalld.pbxconfig import PbxConfig  # noqa: E402

TRACE = REPO / "tests" / "data" / "traces" / "asterisk" / "mixed_concurrent.ami"
SECRET = "bench"
ID_RE = re.compile(rb"\b\d{10}\.\d+\b")

# The eventfilter documented in README ("Asterisk (AMI)"), applied as Asterisk would (by event name and
# VarSet variable name).
KEEP_EVENTS = {b"Newchannel", b"Hangup", b"SoftHangupRequest", b"NewCallerid", b"NewConnectedLine",
               b"NewAccountCode", b"Newstate", b"DialBegin", b"DialEnd", b"BridgeEnter", b"BridgeLeave",
               b"MessageWaiting", b"QueueCallerJoin", b"QueueCallerAbandon", b"AgentCalled",
               b"AgentConnect", b"FullyBooted", b"Newexten", b"VarSet"}
KEEP_APPS = {b"VoiceMail", b"Queue", b"Dial"}
KEEP_VARS = {b"DEPARTMENT", b"VMSTATUS"}


def keep(block: bytes) -> bool:
    name = block[7:block.index(b"\r\n")] if block.startswith(b"Event: ") else b""
    if name not in KEEP_EVENTS:
        return False
    if name == b"Newexten":
        return any(b"\r\nApplication: " + a + b"\r\n" in block for a in KEEP_APPS)
    if name == b"VarSet":
        m = re.search(rb"\r\nVariable: _*([^\r]*)\r\n", block)
        return bool(m and m.group(1) in KEEP_VARS)
    return True


class Template:
    """The trace as (time offset, block) with id slots, renderable for copy k."""

    def __init__(self, filtered: bool) -> None:
        raw = TRACE.read_bytes()
        self.blocks: list[tuple[float, list[bytes | int]]] = []
        self.ids: dict[bytes, int] = {}
        self.last_hangup: dict[int, int] = {}  # block index -> linkedid slot
        t0 = None
        events = list(read_trace(TRACE))
        raw_blocks = []
        ts = 0.0
        cur: list[bytes] = []
        for line in raw.split(b"\r\n"):
            if line.startswith(b"# ts="):
                ts = float(line[5:].split()[0])
                continue
            if line.startswith(b"#"):
                continue
            if line:
                cur.append(line)
            elif cur:
                raw_blocks.append((ts, b"\r\n".join(cur) + b"\r\n\r\n"))
                cur = []
        assert len(raw_blocks) == len(events)
        last_hangup_of: dict[bytes, int] = {}
        for ts, block in raw_blocks:
            if block.startswith(b"Event: FullyBooted"):
                continue
            if filtered and not keep(block):
                continue
            t0 = ts if t0 is None else t0
            parts: list[bytes | int] = []
            pos = 0
            for m in ID_RE.finditer(block):
                parts.append(block[pos:m.start()])
                parts.append(self.ids.setdefault(m.group(), len(self.ids)))
                pos = m.end()
            parts.append(block[pos:])
            if block.startswith(b"Event: Hangup\r\n"):
                lid = parse_block(block[:-4]).get("Linkedid", "").encode()
                last_hangup_of[lid] = len(self.blocks)
            self.blocks.append((ts - t0, parts))
        self.last_hangup = {idx: self.ids[lid] for lid, idx in last_hangup_of.items()}
        self.calls = len(last_hangup_of)
        self.span = self.blocks[-1][0]

    def ident(self, k: int, slot: int) -> bytes:
        return b"9%09d.%d" % (k, slot)

    def render(self, k: int, index: int) -> bytes:
        parts = self.blocks[index][1]
        return b"".join(p if isinstance(p, bytes) else self.ident(k, p) for p in parts)

    def render_copy(self, k: int) -> bytes:
        return b"".join(self.render(k, i) for i in range(len(self.blocks)))


def server_process(conn, mode: str, copies: int, rate: float, filtered: bool) -> None:
    from ami_server import AmiServer

    async def main() -> None:
        tpl = Template(filtered)
        srv = await AmiServer(secret=SECRET, live_state=False).start()
        conn.send(srv.port)
        await srv.wait_until(lambda: srv.clients == 1, timeout=30)
        sent_events = 0
        hangups: dict[bytes, float] = {}
        start = time.time()
        if mode == "throughput":
            batch = []
            for k in range(copies):
                batch.append(tpl.render_copy(k))
                sent_events += len(tpl.blocks)
                if len(batch) == 8:
                    await srv.send(b"".join(batch))
                    batch = []
            if batch:
                await srv.send(b"".join(batch))
        else:
            every = tpl.calls / rate  # a new copy of the 6-call trace every `every` seconds
            heap = [(k * every + tpl.blocks[0][0], k, 0) for k in range(copies)]
            heapq.heapify(heap)
            t_base = time.time() + 0.2
            while heap:
                due, k, i = heap[0]
                now = time.time() - t_base
                if due > now:
                    await asyncio.sleep(due - now)
                    continue
                out = []
                marks = []
                while heap and heap[0][0] <= now:
                    due, k, i = heapq.heappop(heap)
                    out.append(tpl.render(k, i))
                    if i in tpl.last_hangup:
                        marks.append(tpl.ident(k, tpl.last_hangup[i]))
                    if i + 1 < len(tpl.blocks):
                        heapq.heappush(heap, (k * every + tpl.blocks[i + 1][0], k, i + 1))
                sent_events += len(out)
                await srv.send(b"".join(out))
                t_sent = time.time()
                for lid in marks:
                    hangups[lid] = t_sent
        conn.send({"events": sent_events, "seconds": time.time() - start,
                   "hangups": {k.decode(): v for k, v in hangups.items()}})
        conn.recv()  # the client is done
        await srv.stop()

    asyncio.run(main())


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def client(port: int, expected_calls: int, rss_every: int, keep_times: bool) -> dict:
    settings = AmiSettings(host="127.0.0.1", port=port, username="aftercalld", secret=SECRET,
                           ping_interval=30.0)
    pbx = PbxConfig(name="bench", type="asterisk", timezone=ZoneInfo("UTC"),
                    variables=("DEPARTMENT",), settings=settings)
    source = AmiSource(pbx)
    done = asyncio.Event()
    emitted: dict[str, float] = {}  # latency mode only: 1M entries would be the bench's own RSS
    rss: list[tuple[int, float]] = []
    count = 0

    async def on_call(record) -> None:
        nonlocal count
        count += 1
        n = count
        if keep_times:
            emitted[record.call_id] = time.time()
        if rss_every and n % rss_every == 0:
            rss.append((n, rss_mb()))
        if n >= expected_calls:
            done.set()

    task = asyncio.create_task(source.run(on_call))
    t0 = time.time()
    await done.wait()
    t1 = time.time()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    return {"emitted": emitted, "count": count, "t0": t0, "t1": t1, "events": source.events_received,
            "parsed": source.events, "rss": rss,
            "tracker": dict(source.tracker.stats), "active": source.tracker.active_calls}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["throughput", "latency"])
    ap.add_argument("--calls", type=int, default=60000, help="throughput: calls to replay")
    ap.add_argument("--rate", type=float, default=50.0, help="latency: calls per second")
    ap.add_argument("--seconds", type=float, default=40.0, help="latency: how long to start calls")
    ap.add_argument("--filtered", action="store_true", help="apply the docs' eventfilter server-side")
    ap.add_argument("--rss-every", type=int, default=0, help="print RSS every N calls")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)

    tpl = Template(args.filtered)
    if args.mode == "throughput":
        copies = max(1, args.calls // tpl.calls)
    else:
        copies = max(1, int(args.seconds * args.rate / tpl.calls))
    expected = copies * tpl.calls
    parent, child = mp.Pipe()
    proc = mp.Process(target=server_process, args=(child, args.mode, copies, args.rate, args.filtered))
    proc.start()
    port = parent.recv()
    result = asyncio.run(client(port, expected, args.rss_every, args.mode == "latency"))
    server = parent.recv()
    parent.send("done")
    proc.join(30)

    elapsed = result["t1"] - result["t0"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"trace: {TRACE.name} x {copies} ({tpl.calls} calls, {len(tpl.blocks)} events per copy"
          f"{', eventfilter applied' if args.filtered else ''})")
    print(f"calls emitted: {result['count']} of {expected}; tracker still holds {result['active']}")
    print(f"events received: {result['events']} (parsed: {result['parsed']}, the rest dropped unparsed)")
    if args.mode == "throughput":
        print(f"elapsed: {elapsed:.2f} s")
        print(f"throughput: {result['events'] / elapsed:,.0f} events/s, {expected / elapsed:,.0f} calls/s")
    else:
        lat = sorted((result["emitted"][lid] - t) * 1000 for lid, t in server["hangups"].items()
                     if lid in result["emitted"])
        q = statistics.quantiles(lat, n=100)
        print(f"paced: {args.rate:g} calls/s for {args.seconds:g} s, "
              f"{server['events'] / server['seconds']:,.0f} events/s")
        print(f"last Hangup written -> CallRecord handed on, {len(lat)} calls: p50 {q[49]:.2f} ms, "
              f"p99 {q[98]:.2f} ms, max {lat[-1]:.2f} ms")
    for n, mb in result["rss"]:
        print(f"RSS after {n:>9,} calls: {mb:7.1f} MiB")
    print(f"peak RSS: {peak:.1f} MiB")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Modem soak under faults: texts queued in the real SQLite outbox, sent by the real
dispatcher through the modem transport to the pty simulator, while a fault injector keeps
doing what real modems do — garbage lines, unsolicited lines inside answers, transient and
permanent +CMS errors, silent periods (hangs), USB unplug/re-plug — and the simulator sends
a status report for every part it accepted.

At the end it prints what the network side received and what the outbox says, and checks
the two promises: no text lost (every message submitted or failed with a reason; every
submitted text arrived complete) and no double text (no text arrived twice), apart from
the one case the transport documents (a hang after the PDU was handed over but before the
modem answered), which it counts separately.

    /work/venv/bin/python bench/modem_chaos.py [--messages 200] [--seed 1]
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "modem"))

from modem_helpers import enqueue, fast_settings  # noqa: E402
from modem_sim import ModemSim  # noqa: E402

from aftercalld.config import DispatchConfig  # noqa: E402
from aftercalld.dispatcher import Dispatcher  # noqa: E402
from aftercalld.modem import make_transport  # noqa: E402
from aftercalld.store import Outbox  # noqa: E402

FINAL = {"delivered", "failed", "undeliverable", "expired", "rejected", "suppressed"}


async def chaos(sim: ModemSim, rng: random.Random, stop: asyncio.Event, counts: collections.Counter) -> None:
    while not stop.is_set():
        await asyncio.sleep(rng.uniform(0.05, 0.4))
        fault = rng.choice(["garbage", "urcs", "cms_transient", "cms_permanent", "silence", "unplug", "none"])
        counts[fault] += 1
        if fault == "garbage":
            sim.garbage = True
            await asyncio.sleep(rng.uniform(0.1, 0.5))
            sim.garbage = False
        elif fault == "urcs":
            sim.urcs_mid_answer = ["RING", "+CREG: 1", "^RSSI:17"]
            await asyncio.sleep(rng.uniform(0.1, 0.5))
            sim.urcs_mid_answer = []
        elif fault == "cms_transient":
            sim.cms_errors.append(rng.choice([38, 42, 500]))
        elif fault == "cms_permanent":
            sim.cms_errors.append(rng.choice([1, 28]))
        elif fault == "silence":
            sim.silent = True
            await asyncio.sleep(rng.uniform(0.3, 1.0))
            sim.silent = False
        elif fault == "unplug":
            sim.unplug()
            await asyncio.sleep(rng.uniform(0.2, 1.0))
            sim.plug()


async def reporter(sim: ModemSim, stop: asyncio.Event) -> None:
    """The network: a delivery report for every accepted part, a little later."""
    seen = 0
    while not stop.is_set():
        try:
            await sim.wait_for(lambda seen=seen: len(sim.received) > seen, timeout=0.5)
        except TimeoutError:
            continue
        while seen < len(sim.received):
            if sim.plugged and not sim.silent:
                sim.status_report(sim.received[seen].mr, 0x00)
                seen += 1
            else:
                await asyncio.sleep(0.05)  # the network holds the report while the modem is away


async def run(n: int, seed: int) -> int:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        sim = ModemSim(Path(tmp) / "ttyUSB-chaos")
        sim.plug()
        outbox = Outbox.open(Path(tmp) / "outbox.sqlite3")
        texts = []
        for i in range(n):
            kind = rng.random()
            if kind < 0.7:
                texts.append(f"#{i} Sorry we missed your call. 5€ [ref {i}]")
            elif kind < 0.9:
                texts.append(f"#{i} " + "We will call you back shortly. " * 6)  # 2 parts
            else:
                texts.append(f"#{i} Перезвоним вам 📞")
        enqueue(outbox, texts)
        transport = make_transport(fast_settings(sim.link, rate_per_minute=1200.0, command_timeout=0.3,
                                                 send_timeout=0.6, poll_interval=0.3, reopen_max_seconds=0.3))
        dispatcher = Dispatcher(outbox, transport, DispatchConfig(retry_initial_seconds=0.05, retry_max_seconds=0.3,
                                                                  ttl_seconds=600))
        faults: collections.Counter = collections.Counter()
        stop = asyncio.Event()
        t0 = time.perf_counter()
        await dispatcher.start()
        tasks = [asyncio.create_task(chaos(sim, rng, stop, faults)), asyncio.create_task(reporter(sim, stop))]
        deadline = time.perf_counter() + 120
        while time.perf_counter() < deadline:
            states = outbox.counts_by_state()
            if sum(v for k, v in states.items() if k in FINAL or k == "submitted") == n:
                break  # nothing left to send
            await asyncio.sleep(0.25)  # a soak's sampling interval, not synchronisation
        stop.set()
        await asyncio.gather(*tasks[:1], return_exceptions=True)
        if not sim.plugged:
            sim.plug()
        sim.silent = False
        sim.garbage = False
        sim.urcs_mid_answer = []
        # calm network: the reports still owed arrive (some were lost while the modem was away)
        settle = time.perf_counter() + 3
        while time.perf_counter() < settle and outbox.counts_by_state().get("submitted"):
            await asyncio.sleep(0.25)
        tasks[1].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        leftover_errors = len(sim.cms_errors)
        elapsed = time.perf_counter() - t0
        status = transport.status()
        await dispatcher.stop()
        states = outbox.counts_by_state()
        rows = outbox.messages()
        outbox.close()
        sim.close()

    # what the network received, per text: reassemble by concat reference
    arrived: collections.Counter = collections.Counter()
    pending_parts: dict[tuple[int, int], dict[int, str]] = {}
    for r in sim.received:
        c = r.decoded.concat
        if c is None:
            arrived[r.decoded.text] += 1
            continue
        parts = pending_parts.setdefault((c.reference, c.total), {})
        if c.sequence in parts:  # a part sent again: a new copy of the text begins
            pending_parts[(c.reference, c.total)] = parts = {}
        parts[c.sequence] = r.decoded.text
        if len(parts) == c.total:
            arrived["".join(parts[k] for k in sorted(parts))] += 1
            del pending_parts[(c.reference, c.total)]
    failed = [r for r in rows if r["state"] == "failed"]
    lost = [r for r in rows if r["state"] in ("delivered", "submitted") and arrived[r["text"]] == 0]
    doubles = sum(1 for t in texts if arrived[t] > 1)
    partial = sum(len(p) for p in pending_parts.values())

    print(f"modem soak: {n} messages, seed {seed}, {elapsed:.1f} s")
    print(f"  faults injected   : {dict(sorted(faults.items()))} (+CMS errors never reached: {leftover_errors})")
    print(f"  outbox states     : {dict(sorted(states.items()))}")
    print(f"  transport         : resets {status['resets']}, parts accepted {status['parts_sent']}")
    complete = sum(1 for t in texts if arrived[t])
    reasons = collections.Counter(r['reason'].split(':')[0] if r.get('reason') else '?' for r in failed)
    print(f"  network received  : {len(sim.received)} parts; {complete} of {n} texts complete")
    print(f"  failed (reasons)  : {reasons.most_common(4)}")
    print(f"  reports lost while the port was closed (stay submitted): {states.get('submitted', 0)}")
    print(f"  texts arrived twice (hang after hand-over, documented): {doubles}")
    print(f"  orphan parts (partial texts, failed on purpose)       : {partial}")
    unaccounted = n - sum(states.get(k, 0) for k in FINAL | {"submitted"})
    ok = unaccounted == 0 and not lost
    print(f"  unaccounted messages: {unaccounted}; submitted but never arrived: {len(lost)}  ->  "
          f"{'OK' if ok else 'PROBLEM'}")
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    sys.exit(asyncio.run(run(args.messages, args.seed)))


if __name__ == "__main__":
    main()

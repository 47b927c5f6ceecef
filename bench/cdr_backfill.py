#!/usr/bin/env python3
"""CDR backfill benchmark: a backlog of N calls in an Asterisk Master.csv (21 columns),
read by the real `Backfill` into a fresh outbox, while a ticker measures how long the event
loop is held at a time (live calls wait that long).

The backlog is tests/data/traces/asterisk-actions/Master.csv (4 calls, 12 rows, recorded
from Asterisk 22.10.1) repeated with new linkedids and times, one call every 0.2 s. The
clock is set 5 minutes after the last call and backfill_max_age to a day, so every call
is recent enough to be texted: the costliest case (log transport: nothing leaves the machine).

  python bench/cdr_backfill.py --calls 100000
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import logging
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from aftercalld import gctune  # noqa: E402
from aftercalld.cdr.backfill import Backfill, position_key  # noqa: E402
from aftercalld.config import load  # noqa: E402
from aftercalld.pipeline import CallHandler  # noqa: E402
from aftercalld.store import Outbox  # noqa: E402

FIXTURE = REPO / "tests" / "data" / "traces" / "asterisk-actions" / "Master.csv"
FORMAT = "%Y-%m-%d %H:%M:%S"
CONFIG = """
[general]
timezone = "UTC"
default_region = "US"
outbox = "{outbox}"
[[pbx]]
name = "pbx"
type = "asterisk"
timezone = "UTC"
username = "aftercalld"
secret = "x"
cdr = "{cdr}"
backfill_max_age = "1d"
[transport]
type = "log"
[[rules]]
name = "Missed"
recipients = ["caller"]
when = {{ status = "missed", direction = "inbound" }}
caller = {{ text = "Sorry we missed you.", sender = "ACME" }}
[[rules]]
name = "Thanks"
recipients = ["caller"]
when = {{ status = "connected", direction = "inbound" }}
caller = {{ text = "Thanks for calling.", sender = "ACME" }}
"""


def backlog(calls: int, start: float) -> tuple[str, float]:
    rows = list(csv.reader(FIXTURE.open(newline="")))
    first = min(datetime.strptime(r[9], FORMAT).replace(tzinfo=UTC).timestamp() for r in rows)
    out = io.StringIO()
    last_end = 0.0
    for copy in range(calls // 4):
        shift = start + copy * 0.8 - first
        for row in rows:
            row = list(row)
            for i in (9, 10, 11):
                if row[i]:
                    moved = datetime.strptime(row[i], FORMAT).replace(tzinfo=UTC).timestamp() + shift
                    row[i] = datetime.fromtimestamp(int(moved), UTC).strftime(FORMAT)
                    last_end = max(last_end, int(moved))
            for i in (16, 19):
                row[i] = row[i].replace("1796469765.", f"{1700000000 + copy}.")
            out.write(",".join(f'"{v}"' for v in row) + "\n")
    return out.getvalue(), last_end


async def measure(backfill: Backfill) -> tuple[float, float]:
    stalls = [0.0]
    done = False

    async def ticker() -> None:
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            stalls[0] = max(stalls[0], now - last)
            last = now

    tick = asyncio.create_task(ticker())
    began = time.perf_counter()
    await backfill.run("pbx")
    took = time.perf_counter() - began
    done = True
    await tick
    return took, stalls[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=100_000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        cdr = Path(tmp) / "Master.csv"
        text, last_end = backlog(args.calls, 1_800_000_000.0)
        cdr.write_text(text)
        config_path = Path(tmp) / "aftercalld.toml"
        config_path.write_text(CONFIG.format(outbox=Path(tmp) / "outbox.sqlite3", cdr=cdr))
        config = load(config_path)
        outbox = Outbox.open(config.outbox_path)
        clock = lambda: last_end + 300  # noqa: E731
        handler = CallHandler(config, outbox, clock=clock)
        backfill = Backfill(config.pbxs, handler, clock=clock)
        stat = cdr.stat()
        outbox.meta_set(position_key("pbx"), json.dumps({"file": [stat.st_dev, stat.st_ino], "offset": 0}))
        gctune.tune_for_daemon()  # as `aftercalld run` does
        took, stall = asyncio.run(measure(backfill))
        totals = backfill.totals
        print(f"backlog: {args.calls // 4 * 4} calls, {len(text.splitlines())} CDR rows, {len(text) / 1e6:.1f} MB")
        print(f"backfilled {totals.recovered} calls ({totals.too_old} too old) in {took:.2f} s: "
              f"{totals.recovered / took:,.0f} calls/s; {outbox.queue_depth()} texts queued")
        print(f"longest event-loop hold: {stall * 1000:.0f} ms; peak RSS "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
        outbox.close()


if __name__ == "__main__":
    main()

"""Long fuzz runs of the wire parsers: what PBXs (AMI, ESL), SMSCs (SMPP PDUs) and GSM
modems (AT lines, SMS PDUs) send. The targets are those of the suite (tests/wire_fuzz.py),
run here with 100,000 inputs each instead of a few hundred.

For each target it prints the inputs run, the uncaught exceptions (anything but the
documented refusals the callers handle), the hangs (an input taking over --hang-seconds),
the slowest input and the peak RSS of the process that ran it (one process per target;
this includes Python, hypothesis and the inputs themselves). Exit status 1 if
any target had an uncaught exception or a hang.

    python bench/fuzz_wire.py                 # every target, 100,000 inputs each
    python bench/fuzz_wire.py --inputs 2000 --only "esl json event"
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import resource
import signal
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests")]


class _Hang(Exception):
    pass


class _FormatAndDrop(logging.Handler):
    """Log lines are formatted (a formatting bug is a bug too) and dropped."""

    def emit(self, record: logging.LogRecord) -> None:
        self.format(record)


# Hypothesis keeps what it learnt about every example of a run in memory: 100,000 in one
# run would measure its bookkeeping, not our parsers. So a target runs in chunks, each a
# fresh run with its own seed.
CHUNK = 5_000


def run_target(name: str, inputs: int, hang_seconds: float) -> dict:
    from hypothesis import HealthCheck, Phase, given, seed, settings
    from wire_fuzz import target

    logging.getLogger().addHandler(_FormatAndDrop())
    logging.getLogger().setLevel(logging.DEBUG)
    chosen = target(name)
    counts = {"name": name, "inputs": 0, "uncaught": 0, "hangs": 0, "slowest": 0.0, "first": ""}
    stuck = {"fired": False}

    def alarm(signum: int, frame: object) -> None:
        # The hard stop for an input that never ends; it may land in library code that
        # swallows it, so the flag counts too.
        stuck["fired"] = True
        raise _Hang()

    signal.signal(signal.SIGALRM, alarm)
    clock = time.perf_counter

    def one(data: object) -> None:
        counts["inputs"] += 1
        stuck["fired"] = False
        signal.setitimer(signal.ITIMER_REAL, 10 * hang_seconds)
        began = clock()
        try:
            chosen.check(data)
        except _Hang:
            pass
        except Exception:
            counts["uncaught"] += 1
            counts["first"] = counts["first"] or f"{traceback.format_exc(limit=6)}\non {data!r:.300}"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        took = clock() - began
        counts["slowest"] = max(counts["slowest"], took)
        if took > hang_seconds or stuck["fired"]:
            counts["hangs"] += 1
            counts["first"] = counts["first"] or f"hang ({took:.1f} s) on {data!r:.300}"

    started = clock()
    done = 0
    for chunk_seed in range(1, 1 + (inputs + CHUNK - 1) // CHUNK):
        size = min(CHUNK, inputs - done)
        run = seed(chunk_seed)(settings(max_examples=size, deadline=None, database=None, phases=[Phase.generate],
                                        suppress_health_check=list(HealthCheck))(given(chosen.strategy)(one)))
        run()
        done += size
    counts["seconds"] = clock() - started
    counts["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return counts


def _worker(args: tuple[str, int, float]) -> dict:
    return run_target(*args)


def main() -> int:
    from wire_fuzz import TARGETS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=100_000, help="inputs per target (default 100,000)")
    parser.add_argument("--only", action="append", help="run only this target (repeatable)")
    parser.add_argument("--hang-seconds", type=float, default=2.0, help="an input slower than this is a hang")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="targets run in parallel")
    args = parser.parse_args()
    names = [t.name for t in TARGETS if not args.only or t.name in args.only]
    print(f"{len(names)} target(s), {args.inputs:,} inputs each, {args.jobs} at a time", flush=True)
    print(f"{'target':26} {'inputs':>9} {'uncaught':>9} {'hangs':>6} {'slowest':>8} {'peak RSS':>9} {'seconds':>8}",
          flush=True)
    bad = 0
    with multiprocessing.get_context("fork").Pool(args.jobs, maxtasksperchild=1) as pool:
        for counts in pool.imap(_worker, [(n, args.inputs, args.hang_seconds) for n in names]):
            print(f"{counts['name']:26} {counts['inputs']:>9,} {counts['uncaught']:>9} {counts['hangs']:>6} "
                  f"{counts['slowest'] * 1000:>6.0f}ms {counts['peak_rss_mib']:>6.0f} MiB {counts['seconds']:>8.0f}",
                  flush=True)
            if counts["first"]:
                bad += 1
                print(f"  first: {counts['first']}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

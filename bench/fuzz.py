#!/usr/bin/env python3
"""Fuzz every parser of outside input, long: by default 100,000 inputs per parser.

Inputs come from hypothesis strategies (random text and bytes, and valid inputs with
hostile pieces spliced in: superscript digits, lone surrogates, nan, 5,000-digit numbers,
control and bidi characters). A parser may refuse an input only with the exceptions its
entry names (ConfigError, TemplateError, ValueError …); anything else is an uncaught
exception, and an input that takes longer than --hang-seconds is a hang.

Prints per parser: inputs, refused (clean errors), uncaught exceptions, hangs, peak RSS
(each parser runs in its own process, so its peak is its own; hypothesis and the
allocator's arenas take most of it), RSS after the first and the last run of --chunk
inputs, the memory aftercalld's own code still holds after two more runs (tracemalloc;
equal figures: the parser keeps nothing), and the first few distinct uncaught exceptions
with the input that raised them.

  python bench/fuzz.py                      # every target, 100,000 inputs each
  python bench/fuzz.py --inputs 2000 --only msgid receipt_text

TARGETS is the one table of what is fuzzed; add a parser by adding an entry.
tests/core/test_core_fuzz.py runs the same table with a small example count.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import resource
import signal
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hypothesis import strategies as st  # noqa: E402  (after the checkout is importable)


@dataclass(frozen=True)
class Target:
    name: str
    strategy: Callable[[], st.SearchStrategy[Any]]  # built when used: some imports are slow
    feed: Callable[[Any], object]  # one input through the parser, and what uses its result
    refusals: Callable[[], tuple[type[BaseException], ...]] = lambda: ()  # clean "no"


# -- hostile pieces ------------------------------------------------------------------------

HOSTILE_TEXT = [
    "\xb2", "\xb3", "\xb9", "\u0663", "\ud800", "\udfff", "\u202e", "\u2066", "\u200b", "\u2028", "\ufeff",
    "\x00", "\n", "\r\n", "\x1b[2J", "%0A", "=HYPERLINK(\"x\")", "{", "}", "{{", "}}", "|", "nan", "inf",
    "-inf", "1e309", "9" * 5000, "0x", "00", "€", "😀", "e\u0301", " " * 300, "\\", "\"", "'",
]


def hostile_text(max_size: int = 200) -> st.SearchStrategy[str]:
    """Random text, and text built from the pieces that broke parsers before."""
    return st.one_of(
        st.text(max_size=max_size),
        st.lists(st.one_of(st.sampled_from(HOSTILE_TEXT), st.text(max_size=8)), max_size=12).map("".join),
    )


def spliced(seed: str, pieces: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """`seed` with a few of its spans replaced, cut or repeated: mostly-valid input that
    reaches the deep parts of a parser."""
    n = len(seed)

    @st.composite
    def build(draw: Any) -> str:
        text = seed
        for _ in range(draw(st.integers(1, 4))):
            start = draw(st.integers(0, len(text)))
            end = draw(st.integers(start, min(len(text), start + 40)))
            text = text[:start] + draw(pieces) + text[end:]
        return text

    return build() if n else pieces


# -- config --------------------------------------------------------------------------------

SEED_CONFIG = '''
[general]
timezone = "Europe/London"
default_region = "GB"
outbox = "/nonexistent/outbox.sqlite3"
keep_days = 30
phone_cache_size = 128

[variables]
company = "Acme"

[agents]
"201" = { name = "Alice", mobile = "+447400123201" }

[transport]
type = "log"

[dispatch]
retry_initial_seconds = 0.05
retry_max_seconds = 0.2
ttl_seconds = 60

[metrics]
listen = "127.0.0.1:9469"

[templates.missed]
text = "Sorry we missed your call to {company}. {agent_name|Our team} will call back."

[[rules]]
name = "Missed"
recipients = ["caller"]
when = { status = "missed", hours = "08:00-18:00", talk_seconds_max = 10 }
caller = { template = "missed", sender = "Acme" }
'''

TOML_VALUES = [
    "nan", "inf", "-inf", "+nan", "1" * 4400, "1e309", "0", "-1", "99999", '"America"', '"' + "A" * 300 + '"',
    '"127.0.0.1:99999"', '"a\\nb"', '"\\u001b[2J"', "[]", "{}", "[[1]]", '"{nope}"', '"{caller_name"', "true",
    '"../../etc/passwd"', '"Mars/Olympus"', '""', "2026-11-30T10:00:00Z", "[" * 200 + "]" * 200,
]


def _config_strategy() -> st.SearchStrategy[str]:
    lines = SEED_CONFIG.strip().splitlines()
    assignments = [i for i, line in enumerate(lines) if " = " in line]

    @st.composite
    def mutated(draw: Any) -> str:
        out = list(lines)
        for _ in range(draw(st.integers(1, 3))):
            i = draw(st.sampled_from(assignments))
            key = out[i].split(" = ", 1)[0]
            value = draw(st.one_of(st.sampled_from(TOML_VALUES),
                                   st.floats(allow_nan=True, allow_infinity=True).map(repr),
                                   st.integers().map(str),
                                   hostile_text(40).map(json.dumps)))
            out[i] = f"{key} = {value}"
        return "\n".join(out) + "\n"

    return st.one_of(mutated(), spliced(SEED_CONFIG, hostile_text(20)), st.text(max_size=300))


def _feed_config(text: str) -> object:
    from aftercalld.config import loads

    return loads(text, "fuzz.toml")


def _config_refusals() -> tuple[type[BaseException], ...]:
    from aftercalld.configreader import ConfigError

    return (ConfigError,)


# -- templates -----------------------------------------------------------------------------

def _template_strategy() -> st.SearchStrategy[tuple[str, dict[str, str]]]:
    from aftercalld.rules.templates import RECORD_PLACEHOLDERS

    names = sorted(RECORD_PLACEHOLDERS)
    source = st.one_of(
        hostile_text(120),
        st.lists(st.one_of(st.sampled_from([f"{{{n}}}" for n in names] + [f"{{{n}|fallback}}" for n in names]),
                           hostile_text(10)), max_size=10).map("".join),
    )
    values = st.dictionaries(st.sampled_from(names), hostile_text(300), max_size=6)
    return st.tuples(source, values)


def _feed_template(case: tuple[str, dict[str, str]]) -> object:
    from aftercalld.rules.encoding import analyse, split_segments
    from aftercalld.rules.templates import RECORD_PLACEHOLDERS, clean_value, parse_template

    source, values = case
    template = parse_template(source, frozenset(RECORD_PLACEHOLDERS))
    text = template.render({k: clean_value(v, 64) for k, v in values.items()})
    analysed = analyse(text)
    return split_segments(text, analysed.encoding)


def _template_refusals() -> tuple[type[BaseException], ...]:
    from aftercalld.rules.templates import TemplateError

    return (TemplateError,)


# -- delivery receipt text (deliver_sm / data_sm) ------------------------------------------

SEED_RECEIPT = ("id:0123456789 sub:001 dlvrd:001 submit date:2611300800 done date:2611300801 "
                "stat:DELIVRD err:000 text:hello")


def _receipt_strategy() -> st.SearchStrategy[tuple[bytes, dict[int, bytes]]]:
    content = st.one_of(
        st.binary(max_size=300),
        spliced(SEED_RECEIPT, hostile_text(20)).map(lambda t: t.encode("utf-8", "surrogatepass")),
        spliced(SEED_RECEIPT, hostile_text(20)).map(lambda t: t.encode("latin-1", "replace")),
    )
    tlvs = st.dictionaries(st.sampled_from([0x001E, 0x0427, 0x0423, 0x0424]), st.binary(max_size=80), max_size=4)
    return st.tuples(content, tlvs)


def _feed_receipt(case: tuple[bytes, dict[int, bytes]]) -> object:
    from aftercalld import msgid
    from aftercalld.smpp import pdu
    from aftercalld.smpp.receipts import message_id_keys, parse_receipt, receipt_id_as_submitted

    content, tlvs = case
    message = pdu.ShortMessage(command_id=pdu.DELIVER_SM, service_type="", source_ton=1, source_npi=1,
                               source="447400123456", dest_ton=5, dest_npi=0, destination="ACME",
                               esm_class=pdu.ESM_DELIVERY_RECEIPT, data_coding=0, short_message=content[:254],
                               tlvs={0x0424: content} if len(content) > 254 else dict(tlvs))
    receipt = parse_receipt(message)
    if receipt is not None:
        message_id_keys(receipt.message_id)
        for kind in ("hex_dec", "dec_hex", ""):
            receipt_id_as_submitted(receipt.message_id, kind)
        msgid.candidate_keys(receipt.message_id)
    return receipt


# -- message ids ---------------------------------------------------------------------------

def _msgid_strategy() -> st.SearchStrategy[str]:
    ids = st.from_regex(r"(0x)?[0-9a-fA-F\xb2\xb3\xb9\u0660-\u0669]{0,40}", fullmatch=True)
    return st.one_of(hostile_text(80), ids)


def _feed_msgid(value: str) -> object:
    from aftercalld import msgid
    from aftercalld.smpp.receipts import message_id_keys, same_message_id

    keys = msgid.candidate_keys(value)
    assert keys[0] == msgid.match_key(value)
    message_id_keys(value)
    return same_message_id(value, value)


# -- CallRecord.from_json (replay/test-rule input, the outbox's stored records) -------------

def _call_json_strategy() -> st.SearchStrategy[str]:
    json_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                            hostile_text(40))
    json_value = st.recursive(json_scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                   st.dictionaries(hostile_text(8), inner, max_size=3)),
                              max_leaves=8)
    times = st.one_of(st.sampled_from(["0001-01-01T00:00:00+00:00", "9999-12-31T23:59:59-12:00",
                                       "2026-11-30T10:00:00Z", "2026-11-30T10:00:00", "2026-13-45", ""]),
                      st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()), json_value)
    seconds = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(), json_value,
                        st.sampled_from(["1e309", "nan", "-0"]))
    record = st.fixed_dictionaries(
        {"call_id": hostile_text(20), "pbx": hostile_text(10),
         "direction": st.sampled_from(["inbound", "outbound", "internal", "sideways", ""]),
         "status": st.sampled_from(["connected", "missed", "voicemail", "answered", ""])},
        optional={"caller_number": hostile_text(40), "caller_name": hostile_text(40),
                  "dialled_number": hostile_text(20), "agent_extension": hostile_text(8),
                  "start_time": times, "answer_time": times, "end_time": times,
                  "ring_seconds": seconds, "talk_seconds": seconds,
                  "variables": st.one_of(st.dictionaries(hostile_text(8), json_value, max_size=3), json_value)})
    as_json = record.map(lambda d: json.dumps(d, ensure_ascii=True).replace('"1e309"', "1e309"))
    return st.one_of(as_json, hostile_text(200), spliced('{"call_id": "1", "pbx": "p", "direction": "inbound", '
                                                          '"status": "missed", "talk_seconds": 3}', hostile_text(12)))


_TZ: list[Any] = []


def _feed_call_json(text: str) -> object:
    from zoneinfo import ZoneInfo

    from aftercalld.model import CallRecord
    from aftercalld.rules.templates import template_values

    if not _TZ:
        _TZ.extend([ZoneInfo("Pacific/Kiritimati"), ZoneInfo("Etc/GMT+12")])
    record = CallRecord.from_json(text)
    record.to_json()  # the outbox stores it
    for tz in _TZ:  # every placeholder, in the time zones furthest from UTC
        template_values(record, tz, {}, 64)
    return record


# -- the table -----------------------------------------------------------------------------

TARGETS: dict[str, Target] = {t.name: t for t in [
    Target("config", _config_strategy, _feed_config, _config_refusals),
    Target("templates", _template_strategy, _feed_template, _template_refusals),
    Target("receipt_text", _receipt_strategy, _feed_receipt),
    Target("msgid", _msgid_strategy, _feed_msgid),
    Target("callrecord_json", _call_json_strategy, _feed_call_json, lambda: (ValueError,)),
]}


# -- running -------------------------------------------------------------------------------

class Hang(BaseException):
    """Raised by the alarm inside a parser that takes too long (BaseException: a parser's
    own `except Exception` must not swallow it)."""


def run_target(target: Target, inputs: int, hang_seconds: float, on_input: Callable[[], None] | None = None,
               examples: int = 3) -> dict[str, Any]:
    """Feed `inputs` inputs; count refusals, uncaught exceptions and hangs instead of
    stopping at the first, so one run gives the whole picture."""
    from hypothesis import HealthCheck, Phase, given, settings

    counts: Counter[str] = Counter()
    failures: dict[str, str] = {}
    refusals = target.refusals()

    def on_alarm(signum: int, frame: Any) -> None:
        raise Hang()

    # hang_seconds <= 0: no alarm (under pytest, whose timeout plugin owns SIGALRM).
    alarm = hang_seconds > 0
    previous = signal.signal(signal.SIGALRM, on_alarm) if alarm else None

    @settings(max_examples=inputs, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(target.strategy())
    def one(value: Any) -> None:
        counts["inputs"] += 1
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, hang_seconds)
        try:
            target.feed(value)
            counts["accepted"] += 1
        except Hang:
            counts["hangs"] += 1
            failures.setdefault("hang", repr(value)[:300])
        except refusals:
            counts["refused"] += 1
        except Exception as exc:  # noqa: BLE001 - counting them is the point
            counts["uncaught"] += 1
            kind = f"{type(exc).__name__}: {str(exc)[:120]}"
            if len(failures) < examples + 1:
                failures.setdefault(kind, repr(value)[:300])
        finally:
            if alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)
        if on_input:
            on_input()

    try:
        one()
    finally:
        if alarm:
            signal.signal(signal.SIGALRM, previous)
    return {"name": target.name, "inputs": counts["inputs"], "accepted": counts["accepted"],
            "refused": counts["refused"], "uncaught": counts["uncaught"], "hangs": counts["hangs"],
            "failures": failures}


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _child(name: str, inputs: int, hang_seconds: float, chunk: int) -> None:
    """Runs of `chunk` inputs each: hypothesis keeps a record of every input of a run, so
    one run of 100,000 would measure the fuzzer's memory rather than the parser's. The RSS
    after the first run and after the last one show whether the parser keeps anything."""
    started = time.perf_counter()
    total: Counter[str] = Counter()
    failures: dict[str, str] = {}
    rss_after: list[float] = []
    while total["inputs"] < inputs:
        result = run_target(TARGETS[name], min(chunk, inputs - total["inputs"]), hang_seconds)
        total.update({k: result[k] for k in ("inputs", "accepted", "refused", "uncaught", "hangs")})
        for kind, example in result["failures"].items():
            failures.setdefault(kind, example)
        rss_after.append(_rss_mib())
    seconds = round(time.perf_counter() - started, 1)
    peak = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    # RSS mixes in hypothesis and the allocator's arenas; what aftercalld's own code still
    # holds after a run, measured twice over two more runs, tells whether a parser leaks.
    tracemalloc.start()
    held = []
    for _ in range(2):
        run_target(TARGETS[name], min(chunk, 2000), hang_seconds)
        gc.collect()
        snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, "*/aftercalld/*")])
        held.append(round(sum(stat.size for stat in snapshot.statistics("filename")) / 1024))
    tracemalloc.stop()
    print(json.dumps({"name": name, **total, "failures": failures, "seconds": seconds, "peak_rss_mib": peak,
                      "rss_first_mib": round(rss_after[0], 1), "rss_last_mib": round(rss_after[-1], 1),
                      "held_kib": held}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=100_000, help="inputs per parser (default 100,000)")
    parser.add_argument("--only", nargs="*", choices=sorted(TARGETS), help="these parsers only")
    parser.add_argument("--jobs", type=int, default=2, help="parsers fuzzed at once, one process each")
    parser.add_argument("--hang-seconds", type=float, default=2.0, help="an input slower than this is a hang")
    parser.add_argument("--chunk", type=int, default=10_000, help="inputs per hypothesis run (see _child)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.inputs, args.hang_seconds, args.chunk)
        return 0

    names = args.only or sorted(TARGETS)

    def run(name: str) -> dict[str, Any]:
        res = subprocess.run([sys.executable, __file__, "--child", name, "--inputs", str(args.inputs),
                              "--hang-seconds", str(args.hang_seconds), "--chunk", str(args.chunk)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            return {"name": name, "inputs": 0, "refused": 0, "uncaught": math.nan, "hangs": math.nan,
                    "peak_rss_mib": math.nan, "rss_first_mib": math.nan, "rss_last_mib": math.nan, "seconds": 0,
                    "failures": {"fuzzer crashed": res.stderr[-600:]}}
        return json.loads(res.stdout.strip().splitlines()[-1])

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(run, names))

    print(f"{'parser':<16} {'inputs':>8} {'refused':>8} {'uncaught':>9} {'hangs':>6} {'peak RSS':>10} "
          f"{'RSS first/last run':>19} {'held by aftercalld':>19} {'time':>7}")
    for r in results:
        held = "/".join(str(k) for k in r.get("held_kib", [])) or "-"
        print(f"{r['name']:<16} {r['inputs']:>8} {r['refused']:>8} {r['uncaught']:>9} {r['hangs']:>6} "
              f"{r['peak_rss_mib']:>6} MiB {r['rss_first_mib']:>8}/{r['rss_last_mib']:<6} MiB "
              f"{held:>15} KiB {r['seconds']:>6}s")
    for r in results:
        for kind, example in r["failures"].items():
            print(f"\n{r['name']}: {kind}\n  input: {example}")
    bad = any(r["uncaught"] or r["hangs"] or r["inputs"] < args.inputs for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

"""Property-based fuzzing of the parsers of outside input in the core: config, templates,
receipt text, message ids, CallRecord JSON. The table and the inputs are bench/fuzz.py's
(which runs them 100,000 times each); here each runs a small number of examples."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_FUZZ = Path(__file__).resolve().parents[2] / "bench" / "fuzz.py"
_spec = importlib.util.spec_from_file_location("aftercalld_bench_fuzz", _FUZZ)
assert _spec and _spec.loader
fuzz = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = fuzz  # dataclasses look their module up there
_spec.loader.exec_module(fuzz)

CORE_TARGETS = ["config", "templates", "receipt_text", "msgid", "callrecord_json"]
EXAMPLES = 60


@pytest.mark.parametrize("name", CORE_TARGETS)
def test_parser_refuses_bad_input_only_with_its_own_errors(name):
    result = fuzz.run_target(fuzz.TARGETS[name], EXAMPLES, hang_seconds=0)
    assert result["inputs"] == EXAMPLES
    assert (result["uncaught"], result["hangs"]) == (0, 0), result["failures"]


@pytest.mark.parametrize("name,value", [
    ("msgid", "\xb2"), ("msgid", "\u0663"), ("msgid", "0x"),
    ("receipt_text", (b"id:\xb2 sub:001 dlvrd:001 stat:DELIVRD err:000", {})),
    ("receipt_text", (b"id:" + b"9" * 5000 + b" stat:DELIVRD", {})),
    ("receipt_text", (b"", {0x001E: b"\xff\xfe\x00", 0x0427: b""})),
    ("callrecord_json", '{"call_id":"1","pbx":"p","direction":"inbound","status":"missed","ring_seconds":NaN}'),
    ("callrecord_json", '{"call_id":"1","pbx":"p","direction":"inbound","status":"missed","talk_seconds":1e309}'),
    ("callrecord_json", '{"call_id":"1","pbx":"p","direction":"inbound","status":"missed",'
                        '"start_time":"0001-01-01T00:00:00+00:00"}'),
    ("callrecord_json", '{"call_id":"1","pbx":"p","direction":"inbound","status":"missed","caller_name":"Zo\\ud800"}'),
    ("callrecord_json", "[" * 100_000),
    ("templates", ("Hi {caller_name}\ud800", {})),
    ("templates", ("{caller_name}", {"caller_name": "Zo\ud800\u202e"})),
    ("config", '[general]\ntimezone = "America"\n'),
    ("config", "[general]\nkeep_days = " + "1" * 4400 + "\n"),
    ("config", "[dispatch]\nttl_seconds = nan\n"),
])
def test_inputs_that_broke_a_parser_before(name, value):
    """The inputs of issue 13 that crashed these parsers, fed the way the fuzzer feeds."""
    target = fuzz.TARGETS[name]
    try:
        target.feed(value)
    except target.refusals():
        pass

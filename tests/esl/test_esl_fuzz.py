"""Property-based fuzzing of the wire parsers (targets in tests/wire_fuzz.py; the long
runs, 100,000 inputs a target, are bench/fuzz_wire.py)."""
from __future__ import annotations

from wire_fuzz import suite_test

test_esl_framing_takes_any_stream = suite_test("esl framing")
test_esl_plain_events_take_any_body = suite_test("esl plain event")
test_esl_json_events_take_any_body = suite_test("esl json event")
test_esl_url_decoding_agrees_with_urllib = suite_test("esl url decoding")

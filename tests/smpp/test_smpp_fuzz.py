"""Property-based fuzzing of the wire parsers (targets in tests/wire_fuzz.py; the long
runs, 100,000 inputs a target, are bench/fuzz_wire.py)."""
from __future__ import annotations

from wire_fuzz import suite_test

test_smpp_pdu_stream_takes_any_bytes = suite_test("smpp pdu stream")
test_smpp_deliver_and_data_sm_take_any_body = suite_test("smpp deliver_sm/data_sm")

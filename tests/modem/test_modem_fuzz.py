"""Property-based fuzzing of the wire parsers (targets in tests/wire_fuzz.py; the long
runs, 100,000 inputs a target, are bench/fuzz_wire.py)."""
from __future__ import annotations

from wire_fuzz import suite_test

test_modem_lines_take_any_bytes = suite_test("modem lines")
test_modem_pdus_take_any_hex = suite_test("modem pdus")
test_modem_numbers_are_small_or_none = suite_test("modem numbers")

"""Property-based fuzzing of the wire parsers (targets in tests/wire_fuzz.py; the long
runs, 100,000 inputs a target, are bench/fuzz_wire.py)."""
from __future__ import annotations

from wire_fuzz import suite_test

test_ami_framing_takes_any_stream = suite_test("ami framing")

"""The PBX test servers' own CDR files (tests/ami/ami_cdr.py, tests/esl/esl_cdr.py), which
the fault service tests and bench/faults.py configure as `cdr`: in the layout our readers
take, and classified as the live trackers classify the same calls."""
from __future__ import annotations

import csv
import sys
from pathlib import Path
from zoneinfo import ZoneInfo

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS / "ami"), str(TESTS / "esl"), str(TESTS / "service")]

from ami_server import AmiServer  # noqa: E402
from diskfull import call_bytes, call_head_and_tail, call_id, caller  # noqa: E402
from esl_calls import numbered_missed_call, numbered_uuid  # noqa: E402
from esl_server import EslServer  # noqa: E402

from aftercalld.ami.config import AmiSettings  # noqa: E402
from aftercalld.ami.protocol import AmiParser  # noqa: E402
from aftercalld.ami.tracker import CallTracker  # noqa: E402
from aftercalld.cdr import asterisk, freeswitch  # noqa: E402
from aftercalld.classify import build_record  # noqa: E402
from aftercalld.esl.config import EslSettings  # noqa: E402
from aftercalld.model import CallStatus  # noqa: E402
from aftercalld.pbxconfig import default_pbx  # noqa: E402

UTC = ZoneInfo("UTC")


def test_the_ami_server_writes_cdr_csv_rows_of_each_call_it_lived_through(tmp_path):
    server = AmiServer(cdr=tmp_path / "Master.csv")
    for k in range(3):
        server.advance(call_bytes(k))
    server.advance(call_head_and_tail(3)[0])  # still up: no row yet
    lines = (tmp_path / "Master.csv").read_text().splitlines()
    rows = asterisk.parse_csv(lines, UTC)
    assert len(rows) == len(lines) and {len(fields) for fields in csv.reader(lines)} == {21}  # none skipped
    calls = asterisk.group(rows)
    assert [c.call_id for c in calls] == [call_id(k) for k in range(3)]
    settings = AmiSettings()
    live = CallTracker(default_pbx("asterisk", name="main"))
    for k, call in enumerate(calls):
        (seen,) = [r for ev in AmiParser().feed(call_bytes(k)) for r in live.feed(ev, 0.0)]
        record = build_record(asterisk.facts(call, "main", settings.is_extension), settings, UTC)
        assert (record.status, record.caller_number, record.dialled_number, record.direction) == (
            CallStatus.MISSED, caller(k), seen.dialled_number, seen.direction) == (
            seen.status, seen.caller_number, "18005550101", seen.direction)

    server.cdr.cut_all()  # a PBX shutdown hangs up call 3: its rows are written too
    assert [c.call_id for c in asterisk.group(asterisk.parse_csv(
        (tmp_path / "Master.csv").read_text().splitlines(), UTC))][-1] == call_id(3)


def test_the_esl_server_writes_mod_cdr_csv_rows_of_a_legs_and_shutdown_cuts(tmp_path):
    server = EslServer(cdr=tmp_path / "Master.csv")
    for k in range(2):
        head, tail = numbered_missed_call(k, caller(k), 4.0, "core-1")
        server.advance(_frames(head + tail))
    head, _ = numbered_missed_call(2, caller(2), 4.0, "core-1")
    server.advance(_frames(head))
    server.cdr.cut_all(server.channels, now=2_000_000_000.0)
    rows = freeswitch.parse_csv((tmp_path / "Master.csv").read_text().splitlines(), UTC)
    assert [r.uuid for r in rows] == [numbered_uuid(k, 0) for k in range(3)]  # A legs only
    settings = EslSettings()
    statuses = [build_record(freeswitch.facts(call, "fs", settings.is_extension), settings, UTC).status
                for call in freeswitch.group(rows)]
    assert statuses == [CallStatus.MISSED, CallStatus.MISSED, CallStatus.INTERRUPTED]


def _frames(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        head_end = data.index(b"\n\n", pos)
        length = int(data[pos:head_end].split(b"Content-Length: ")[1].split(b"\n")[0])
        out.append(data[pos:head_end + 2 + length])
        pos = head_end + 2 + length
    return out

"""CDR rows to call records: the same call, classified as the live trackers classify it.

Asterisk: tests/data/traces/asterisk-actions/Master.csv, written by a real Asterisk 22.10.1
for the calls of live.ami in that folder (21 columns; cut to 16 for the plain layout), and
the same rows shaped as FreePBX's asteriskcdrdb.cdr returns them. FreeSWITCH:
tests/data/cdr/freeswitch (see its README: built from the recorded mixed_concurrent.esl)."""
from __future__ import annotations

import csv
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from testdata import DATA

from aftercalld.ami import iter_trace_calls as ami_calls
from aftercalld.ami.config import AmiSettings
from aftercalld.cdr import asterisk, freeswitch
from aftercalld.classify import build_record
from aftercalld.esl.config import EslSettings
from aftercalld.esl.trace import iter_trace_calls as esl_calls
from aftercalld.pbxconfig import PbxConfig

UTC = ZoneInfo("UTC")  # the recording Asterisk and FreeSWITCH ran in UTC
AST = AmiSettings()
FS = EslSettings()
COMPARED = ("call_id", "direction", "status", "caller_number", "caller_name", "dialled_number",
            "agent_extension", "queue", "voicemail_reached", "voicemail_box")


def master_fields(traces) -> list[list[str]]:
    with open(traces / "asterisk-actions" / "Master.csv", newline="") as f:
        return list(csv.reader(f))


def ast_records(rows):
    return {r.call_id: r for r in (build_record(asterisk.facts(c, "pbx", AST.is_extension), AST, UTC)
                                    for c in asterisk.group(rows))}


def live_asterisk(traces):
    pbx = PbxConfig(name="pbx", type="asterisk", timezone=UTC)
    return {r.call_id: r for r in ami_calls(traces / "asterisk-actions" / "live.ami", pbx)}


def view(record, names=COMPARED):
    return {n: getattr(record, n) for n in names}


def test_asterisk_21_columns_give_the_live_trackers_calls_under_the_same_ids(traces):
    rows = [asterisk.parse_csv_line(f, UTC) for f in master_fields(traces)]
    got = ast_records(rows)
    live = live_asterisk(traces)
    assert set(got) == set(live) == {"1796469765.32", "1796469765.36", "1796469765.40", "1796469765.42"}
    for call_id, record in live.items():
        assert view(got[call_id]) == view(record), call_id
    # Whole seconds from the CDR (the live tracker has the bridge to the millisecond).
    assert got["1796469765.32"].talk_seconds == 3.0 and live["1796469765.32"].talk_seconds == pytest.approx(3.5, 0.01)
    # The queue answered at 11:22:45, the member at :47: talk counts from the member's answer.
    assert got["1796469765.40"].talk_seconds == 3.0
    assert got["1796469765.36"].ring_seconds == 3.0  # rang 202 for 3 s, then voicemail


def test_asterisk_16_columns_group_by_caller_and_time_and_classify_the_same(traces):
    rows = [asterisk.parse_csv_line(f[:16], UTC) for f in master_fields(traces)]
    got = list(ast_records(rows).values())
    live = sorted(live_asterisk(traces).values(), key=lambda r: r.caller_number)
    got.sort(key=lambda r: r.caller_number)
    # The voicemail call's two rows of its call leg (Dial, then VoiceMail at 11:22:48) are one call.
    assert len(got) == 4
    names = [n for n in COMPARED if n != "call_id"]
    assert [view(r, names) for r in got] == [view(r, names) for r in live]
    assert all(r.call_id.startswith("cdr-") for r in got)


def test_unknown_csv_layout_lines_are_skipped_with_a_warning(caplog):
    rows = asterisk.parse_csv(['"a","b"\n', '"x","1","2","ctx","clid","SIP/1-1","","Hangup","",'
                               '"2026-12-05 11:22:45","","2026-12-05 11:22:49",4,0,"NO ANSWER","DOCUMENTATION"\n'],
                              UTC, "Master.csv")
    assert len(rows) == 1 and rows[0].disposition == "NO ANSWER"
    assert ("Master.csv: CDR line skipped (2 columns, expected 16 or 18 or 21 (cdr_csv's Master.csv)): "
            "'\"a\",\"b\"\\n'") in caplog.text


def db_rows(traces) -> list[dict]:
    """The fixture's rows as PyMySQL's DictCursor returns FreePBX's cdr table: calldate a
    naive datetime (local time), duration/billsec ints, no answer/end columns."""
    out = []
    for f in master_fields(traces):
        row = dict(zip(asterisk.CSV_COLUMNS, f, strict=True))
        out.append({
            "calldate": datetime.strptime(row["start"], "%Y-%m-%d %H:%M:%S"),
            "clid": row["clid"], "src": row["src"], "dst": row["dst"], "dcontext": row["dcontext"],
            "channel": row["channel"], "dstchannel": row["dstchannel"], "lastapp": row["lastapp"],
            "lastdata": row["lastdata"], "duration": int(row["duration"]), "billsec": int(row["billsec"]),
            "disposition": row["disposition"], "amaflags": 3, "accountcode": row["accountcode"],
            "uniqueid": row["uniqueid"], "userfield": row["userfield"], "did": "", "recordingfile": "",
            "cnum": row["src"], "cnam": "", "outbound_cnum": "", "outbound_cnam": "", "dst_cnam": "",
            "linkedid": row["linkedid"], "peeraccount": row["peeraccount"], "sequence": int(row["sequence"]),
        })
    return out


def test_freepbx_database_rows_give_the_same_calls_as_the_csv(traces):
    rows = [asterisk.from_db_row(r, UTC) for r in db_rows(traces)]
    got = ast_records(rows)
    live = live_asterisk(traces)
    assert {k: view(v) for k, v in got.items()} == {k: view(v) for k, v in live.items()}
    # end = calldate + duration; answer = end - billsec
    first = rows[0]
    assert first.end - first.start == 4 and first.end - first.answer == 3


def test_freepbx_row_with_a_bad_calldate_is_refused_with_the_reason():
    with pytest.raises(asterisk.BadRow, match="calldate"):
        asterisk.from_db_row({"calldate": None, "duration": 1, "billsec": 0}, UTC)


FS_DIR = DATA / "cdr" / "freeswitch"


def fs_records(name: str):
    with open(FS_DIR / name, newline="") as f:
        rows = freeswitch.parse_csv(f, UTC, name)
    calls = freeswitch.group(rows)
    return {c.call_id: (build_record(freeswitch.facts(c, "fs", FS.is_extension), FS, UTC), freeswitch.uncertain(c))
            for c in calls}


def live_freeswitch(traces):
    pbx = PbxConfig(name="fs", type="freeswitch", timezone=UTC)
    return {r.call_id: r for r in esl_calls(traces / "freeswitch" / "mixed_concurrent.esl", pbx)}


def test_freeswitch_default_template_uses_the_esl_trackers_call_ids_and_never_guesses_who_answered(traces):
    got = fs_records("Master.csv")
    live = live_freeswitch(traces)
    assert set(got) == set(live)
    for call_id, (record, _) in got.items():
        assert (record.direction, record.caller_number, record.dialled_number) == (
            live[call_id].direction, live[call_id].caller_number, live[call_id].dialled_number)
    # Not answered at all: missed for sure. Answered: IVR, voicemail or an agent, the shipped
    # template cannot tell, so the call is recorded and not texted.
    unanswered = "2c71eeb2-14fc-4392-9abf-739896a36972"
    assert (got[unanswered][0].status, got[unanswered][1]) == ("missed", "")
    assert all(why == freeswitch.UNCERTAIN_REASON for cid, (_, why) in got.items() if cid != unanswered)


def test_freeswitch_template_with_last_app_and_last_bridge_to_classifies_like_the_esl_tracker(traces):
    got = fs_records("Master-extended.csv")
    live = live_freeswitch(traces)
    for call_id, (record, why) in got.items():
        assert why == ""
        expected = live[call_id].status
        if expected == "voicemail":
            # No CDR column says a message was left: missed, voicemail reached.
            assert (record.status, record.voicemail_reached) == ("missed", True)
        else:
            assert record.status == expected, call_id
    assert got["7f590450-6407-4c0f-adf8-11e1a626b3b1"][0].status == "missed"  # IVR abandon: answered, not bridged


def test_freeswitch_shutdown_cause_is_interrupted():
    row = freeswitch.parse_csv_line(
        ["Bob", "0611111111", "18005550100", "public", "2026-11-30 04:40:02", "2026-11-30 04:40:03",
         "2026-11-30 04:40:09", "7", "6", "SYSTEM_SHUTDOWN", "u-1", "", "", "PCMA", "PCMA"], UTC)
    (call,) = freeswitch.group([row])
    record = build_record(freeswitch.facts(call, "fs", FS.is_extension), FS, UTC)
    assert record.status == "interrupted" and freeswitch.uncertain(call) == ""
    assert record.end_time - record.start_time == timedelta(seconds=7)


def test_records_stored_before_the_source_field_load_as_live_and_cdr_ones_round_trip():
    from aftercalld.model import CallRecord

    old = {"call_id": "1", "pbx": "pbx", "direction": "inbound", "status": "missed", "caller_number": "2025550191"}
    assert CallRecord.from_dict(old).source == "live"
    record = CallRecord.from_dict(old).with_text(source="cdr")
    assert CallRecord.from_json(record.to_json()) == record and record.to_dict()["source"] == "cdr"

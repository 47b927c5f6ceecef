"""The recorded Asterisk traces, replayed from disk through the tracker, give exactly the calls
their README lists, with every listed field."""
from __future__ import annotations

import logging
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from ami_expected import ACCOUNTCODES, EXPECTED, TRACES, check_record

from aftercalld.ami import iter_trace_calls
from aftercalld.ami.trace import read_trace
from aftercalld.ami.tracker import CallTracker
from aftercalld.pbxconfig import PbxConfig

PBX = PbxConfig(name="pbx-a", type="asterisk", timezone=ZoneInfo("Europe/Berlin"),
                variables=("DEPARTMENT", "accountcode"))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_trace_yields_the_listed_calls(name, caplog):
    caplog.set_level(logging.WARNING)
    records = list(iter_trace_calls(TRACES / name, PBX))
    ids = [r.call_id for r in records]
    assert sorted(ids) == sorted(EXPECTED[name]), "each call exactly once"
    for record in records:
        check_record(record, EXPECTED[name][record.call_id])
        assert record.pbx == "pbx-a"
        assert record.variables.get("DEPARTMENT", "") == EXPECTED[name][record.call_id]["department"]
        assert record.variables.get("accountcode", "") == ACCOUNTCODES.get(record.call_id, "")
        assert record.start_time.tzinfo is not None and record.end_time.tzinfo is not None
        assert record.start_time.utcoffset() == timedelta(hours=1)  # in the PBX's zone
        assert record.start_time <= record.end_time
        if record.status == "connected":
            assert record.start_time <= record.answer_time <= record.end_time
        else:
            assert record.answer_time is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


RING = {  # seconds of ringing the traces show (agent answer / Dial timeout / none)
    "1796012880.0": 1.0, "1796012888.4": 3.0, "1796012895.8": 3.0, "1796012927.12": 2.0,
    "1796012938.16": 0.0,
}


@pytest.mark.parametrize("name", [n for n in EXPECTED if n != "mixed_concurrent.ami"])
def test_ring_time(name):
    (record,) = iter_trace_calls(TRACES / name, PBX)
    assert record.ring_seconds == pytest.approx(RING[record.call_id], abs=0.05)


def test_duplicated_events_after_reconnect_give_no_second_call():
    tracker = CallTracker(PBX)
    events = list(read_trace(TRACES / "mixed_concurrent.ami"))
    first = [r for ts, ev in events for r in tracker.feed(ev, ts)]
    again = [r for ts, ev in events for r in tracker.feed(ev, ts)]
    assert len(first) == 6 and again == []
    assert tracker.active_calls == 0


def test_unfinished_call_is_reported_not_yielded(tmp_path, caplog):
    raw = (TRACES / "inbound_connected.ami").read_bytes()
    cut = raw[: raw.rindex(b"Event: Hangup")]  # the last channel never hangs up
    path = tmp_path / "cut.ami"
    path.write_bytes(cut)
    with caplog.at_level(logging.WARNING):
        assert list(iter_trace_calls(path, PBX)) == []
    assert "1796012880.0" in caplog.text and "never ended" in caplog.text


def test_stale_calls_are_evicted_with_a_warning(caplog):
    pbx = PbxConfig(name="p", type="asterisk", timezone=ZoneInfo("UTC"), call_timeout_seconds=60)
    tracker = CallTracker(pbx)
    events = list(read_trace(TRACES / "inbound_connected.ami"))
    last_hangup = max(i for i, (_, ev) in enumerate(events) if ev.get("Event") == "Hangup")
    for ts, ev in events[:last_hangup]:
        tracker.feed(ev, ts)
    assert tracker.active_calls == 1
    with caplog.at_level(logging.WARNING):
        tracker.expire(events[0][0] + 61)
    assert tracker.active_calls == 0
    assert "no end seen" in caplog.text
    # the late hangup of an evicted call does not resurrect it
    ts, ev = events[last_hangup]
    assert tracker.feed(ev, ts + 61) == []
    assert tracker.active_calls == 0


def test_call_joined_midway_is_not_classified(caplog):
    tracker = CallTracker(PBX)
    events = list(read_trace(TRACES / "inbound_connected.ami"))
    with caplog.at_level(logging.WARNING):
        out = [r for ts, ev in events[40:] for r in tracker.feed(ev, ts)]
    assert out == [] and "before the AMI connection" in caplog.text
    assert tracker.active_calls == 0


def test_state_stays_bounded_over_many_calls():
    from aftercalld.ami.config import AmiSettings

    tracker = CallTracker(PBX, AmiSettings(remember_finished=100))
    events = list(read_trace(TRACES / "inbound_connected.ami"))
    id_keys = ("Uniqueid", "Linkedid", "DestUniqueid", "DestLinkedid", "UniqueID", "LinkedID")
    emitted = 0
    for k in range(200):
        for ts, ev in events:
            ev = {key: (f"{k}-{v}" if key in id_keys else v) for key, v in ev.items()}
            emitted += len(tracker.feed(ev, ts + k))
    assert emitted == 200
    assert tracker.active_calls == 0 and not tracker.book.chans
    assert len(tracker.book.finished) == 100


def test_calls_handed_over_across_a_restart_end_as_if_never_stopped():
    """Issue 12: at SIGTERM the tracker's open calls go to the outbox as JSON and come back
    at the next start (`aftercalld.ami.handover`): every fact seen so far survives."""
    import json

    from aftercalld.ami import handover

    events = list(read_trace(TRACES / "mixed_concurrent.ami"))
    reference = CallTracker(PBX)
    whole = [r for ts, ev in events for r in reference.feed(ev, ts)]
    before = CallTracker(PBX)
    half = len(events) // 2
    first = [r for ts, ev in events[:half] for r in before.feed(ev, ts)]
    assert before.active_calls >= 3
    state = json.loads(json.dumps(handover.dump(before.book, "2026-12-05 11:16:33")))
    after = CallTracker(PBX)
    assert handover.load(after.book, state) == (before.active_calls, "2026-12-05 11:16:33")
    rest = [r for ts, ev in events[half:] for r in after.feed(ev, ts)]
    assert first + rest == whole

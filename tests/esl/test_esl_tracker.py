"""Tracker on production-shaped calls (trunk leg + agent leg), and its bounds."""
from __future__ import annotations

import logging
import random
from dataclasses import replace

import pytest
from esl_calls import T0, inbound_call, new_uuid, outbound_call
from hypothesis import given, settings
from hypothesis import strategies as st

from aftercalld.esl.config import EslSettings
from aftercalld.esl.tracker import EslTracker
from aftercalld.model import CallRecord, CallStatus, Direction
from aftercalld.pbxconfig import default_pbx


def feed_all(tracker: EslTracker, events: list[dict[str, str]], now: float = 0.0) -> list[CallRecord]:
    out: list[CallRecord] = []
    for ev in events:
        out += tracker.feed(ev, now)
    return out


@pytest.fixture
def tracker() -> EslTracker:
    return EslTracker(replace(default_pbx("freeswitch", name="fs"), variables=("originate_disposition",)))


@pytest.mark.parametrize("outcome, status, cause", [
    ("connected", CallStatus.CONNECTED, "NORMAL_CLEARING"),
    ("noanswer", CallStatus.MISSED, "NO_ANSWER"),
    ("busy", CallStatus.MISSED, "USER_BUSY"),
    ("abandon", CallStatus.MISSED, "NORMAL_CLEARING"),
    ("unallocated", CallStatus.MISSED, "UNALLOCATED_NUMBER"),
    ("voicemail", CallStatus.VOICEMAIL, "NORMAL_CLEARING"),
])
def test_two_leg_outcomes(tracker: EslTracker, outcome: str, status: CallStatus, cause: str) -> None:
    call_id, events = inbound_call(outcome)
    last_hangup = max(i for i, e in enumerate(events) if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE")
    records = []
    for i, ev in enumerate(events):
        got = tracker.feed(ev, 0.0)
        if got:
            assert i == last_hangup  # reported on the last leg's hangup, not later
        records += got
    (r,) = records
    assert r.call_id == call_id and r.status is status and r.hangup_cause == cause
    assert r.direction is Direction.INBOUND
    assert (r.caller_number, r.caller_name, r.dialled_number) == ("+14155550123", "Jane Doe", "18005550100")
    assert r.department == "support"
    assert r.agent_extension == ("" if outcome == "unallocated" else "1001")
    if outcome == "connected":
        assert r.talk_seconds == 30.0 and r.ring_seconds == pytest.approx(4.0)
        assert r.agent_name == "Alice Agent"
        assert r.answer_time is not None
    else:
        assert r.talk_seconds == 0.0 and r.answer_time is None
    if outcome in ("noanswer", "busy", "abandon"):
        assert r.ring_seconds == pytest.approx(4.0, abs=0.01)
    if outcome == "voicemail":
        assert r.voicemail_box == "1001@pbx.example"
    if outcome in ("busy", "abandon"):
        assert r.variables["originate_disposition"] == {"busy": "USER_BUSY", "abandon": "ORIGINATOR_CANCEL"}[outcome]
    assert tracker.active_calls() == 0


def test_direction_without_dialplan_variable() -> None:
    tracker = EslTracker(default_pbx("freeswitch"))
    _, events = outbound_call()
    (r,) = feed_all(tracker, events)
    assert r.direction is Direction.OUTBOUND
    assert (r.caller_number, r.dialled_number, r.agent_extension, r.agent_name) == \
        ("1001", "14155550199", "1001", "Alice Agent")
    assert r.status is CallStatus.CONNECTED and r.talk_seconds == 10.0
    _, events = inbound_call("connected", direction_var=False)
    (r,) = feed_all(tracker, events)
    assert r.direction is Direction.INBOUND  # context "public"
    _, events = outbound_call(number="1002")
    (r,) = feed_all(tracker, events)
    assert r.direction is Direction.INTERNAL


def test_direction_variable_wins_and_can_be_renamed() -> None:
    settings = EslSettings(direction_variable="my_dir", inbound_contexts=("from-carrier",))
    pbx = replace(default_pbx("freeswitch"), settings=settings)
    tracker = EslTracker(pbx)
    _, events = inbound_call("connected")
    for ev in events:
        if "variable_call_direction" in ev:
            ev["variable_my_dir"] = "local"
    (r,) = feed_all(tracker, events)
    assert r.direction is Direction.INTERNAL


def test_interleaved_calls_and_shuffled_legs(tracker: EslTracker) -> None:
    calls = [inbound_call(o, t0=T0 + i * 1000) for i, o in
             enumerate(["connected", "busy", "voicemail", "abandon", "noanswer"] * 20)]
    rng = random.Random(7)
    streams = [list(evs) for _, evs in calls]
    merged = []
    while streams:
        s = rng.choice(streams)
        merged.append(s.pop(0))
        if not s:
            streams.remove(s)
    records = feed_all(tracker, merged)
    assert sorted(r.call_id for r in records) == sorted(cid for cid, _ in calls)
    assert tracker.active_calls() == 0


def test_replayed_events_do_not_report_twice(tracker: EslTracker) -> None:
    _, events = inbound_call("connected")
    assert len(feed_all(tracker, events)) == 1
    assert feed_all(tracker, events) == []
    assert tracker.stats["late"] >= len(events) - 1


def test_channel_uuid_rename_keeps_the_leg(tracker: EslTracker) -> None:
    call_id, events = inbound_call("connected")
    temp = new_uuid()
    # The call leg first shows up under a temporary id that originate then renames.
    first = dict(events[0], **{"Unique-ID": temp})
    rename = dict(events[0], **{"Event-Name": "CHANNEL_UUID", "Old-Unique-ID": temp})
    (r,) = feed_all(tracker, [first, rename] + events[1:])
    assert r.call_id == call_id and r.status is CallStatus.CONNECTED


def test_call_that_never_ends_is_evicted_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    pbx = replace(default_pbx("freeswitch"), call_timeout_seconds=60)
    tracker = EslTracker(pbx)
    _, events = inbound_call("connected")
    no_end = [e for e in events if e["Event-Name"] != "CHANNEL_HANGUP_COMPLETE"]
    feed_all(tracker, no_end, now=1000.0)
    assert tracker.active_calls() == 1
    with caplog.at_level(logging.WARNING, logger="aftercalld.esl"):
        tracker.feed({"Event-Name": "HEARTBEAT"}, 1061.0)
    assert tracker.active_calls() == 0
    assert "dropped without a record" in caplog.text


def test_state_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    tracker = EslTracker(default_pbx("freeswitch"), max_calls=50)
    with caplog.at_level(logging.ERROR, logger="aftercalld.esl"):
        for i in range(200):
            _, events = inbound_call("connected", t0=T0 + i)
            feed_all(tracker, events[:2], now=float(i))
    assert tracker.active_calls() == 50
    assert tracker.stats["evicted"] == 150


def test_cap_evictions_are_counted_and_logged_as_a_rate_limited_summary(caplog: pytest.LogCaptureFixture) -> None:
    # Issue 13.3: one WARNING per eviction made ~460k lines in 30 s under a flood.
    tracker = EslTracker(default_pbx("freeswitch"), max_calls=100)
    with caplog.at_level(logging.WARNING, logger="aftercalld.esl"):
        for i in range(5000):
            tracker.feed({"Event-Name": "CHANNEL_CREATE", "Unique-ID": f"flood-{i}", "Core-UUID": "c",
                          "Event-Date-Timestamp": str(T0 + i)}, 100.0 + i * 1e-4)
        during = [r.getMessage() for r in caplog.records]
        tracker.tick(100.0 + 11)
    lines = [r.getMessage() for r in caplog.records]
    assert tracker.active_calls() == 100 and tracker.stats["overflow"] == 4900
    assert len(during) == 1 and len(lines) == 2, lines
    assert lines[0].startswith("1 call(s) in progress dropped") and lines[1].startswith("4899 call(s)")


def test_restarted_freeswitch_records_its_calls_as_interrupted(tracker: EslTracker) -> None:
    """Issue 12: a FreeSWITCH restart used to drop the calls it cut, without a record."""
    _, events = inbound_call("connected", core="old")
    feed_all(tracker, events[:3])
    (record,) = tracker.drop_core("new", 0.0, 1_796_000_000_000_000)
    assert record.status is CallStatus.INTERRUPTED
    assert record.hangup_cause == "unknown (FreeSWITCH restarted while the call was up)"
    assert record.caller_number and record.end_time is not None
    assert tracker.active_calls() == 0 and tracker.stats["interrupted"] == 1


def test_malformed_events_are_skipped(tracker: EslTracker, caplog: pytest.LogCaptureFixture) -> None:
    junk = [
        {},
        {"Event-Name": "CHANNEL_CREATE"},
        {"Event-Name": "CHANNEL_HANGUP_COMPLETE", "Unique-ID": "x", "Caller-Channel-Created-Time": "soon"},
        {"Event-Name": "CHANNEL_BRIDGE", "Unique-ID": "y", "Other-Leg-Unique-ID": "y"},
        {"Event-Name": "CUSTOM", "Event-Subclass": "vm::maintenance", "VM-Action": "leave-message"},
        {"Event-Name": "CHANNEL_CREATE", "Unique-ID": "z", "variable_originated_legs": "ARRAY::|:;;|:q;a;b"},
    ]
    with caplog.at_level(logging.WARNING):
        for ev in junk:
            tracker.feed(ev, 0.0)
    _, events = inbound_call("busy")
    (r,) = feed_all(tracker, events)
    assert r.status is CallStatus.MISSED


_KEYS = ["Event-Name", "Unique-ID", "Other-Leg-Unique-ID", "variable_originator", "variable_last_bridge_to",
         "Old-Unique-ID", "Caller-Channel-Created-Time", "Caller-Channel-Hangup-Time", "variable_bridge_uepoch",
         "variable_billsec", "variable_originated_legs", "Event-Subclass", "VM-UUID", "VM-Action",
         "variable_call_direction", "Core-UUID"]
_VALUES = st.one_of(
    st.sampled_from(["CHANNEL_CREATE", "CHANNEL_UUID", "CHANNEL_BRIDGE", "CHANNEL_ANSWER",
                     "CHANNEL_HANGUP_COMPLETE", "CUSTOM", "vm::maintenance", "leave-message", "a", "b", "c",
                     "0", "-1", "99999999999999999999", "inbound", "ARRAY::a;x|:b;y"]),
    st.text(max_size=12),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(_KEYS), _VALUES, max_size=8), max_size=40))
def test_fuzzed_events_never_raise(stream: list[dict[str, str]]) -> None:
    tracker = EslTracker(default_pbx("freeswitch"), max_calls=10)
    for i, ev in enumerate(stream):
        for r in tracker.feed(ev, float(i)):
            assert isinstance(r, CallRecord)
    tracker.unfinished(1e9)
    assert tracker.active_calls() == 0


def _as_hangup_during_greeting(events: list[dict[str, str]], last_arg: str) -> list[dict[str, str]]:
    out = []
    for ev in events:
        if ev.get("Event-Name") == "CUSTOM":
            continue  # no message saved: no leave-message event
        ev = {k: v for k, v in ev.items() if not k.startswith("variable_voicemail_")}
        if ev.get("variable_last_app") == "voicemail":
            ev["variable_last_arg"] = last_arg
        out.append(ev)
    return out


def test_hangup_during_the_greeting_is_missed_with_voicemail_reached(tracker: EslTracker) -> None:
    # As on Asterisk: voicemail only when a message was left; reaching the mailbox (the
    # caller hung up during the greeting) is missed, with voicemail_reached for the rules.
    _, events = inbound_call("voicemail")
    (r,) = feed_all(tracker, _as_hangup_during_greeting(events, "default pbx.example 1001"))
    assert r.status is CallStatus.MISSED and r.voicemail_reached and r.voicemail_box == "1001@pbx.example"
    _, events = inbound_call("voicemail")
    (r,) = feed_all(tracker, events)
    assert r.status is CallStatus.VOICEMAIL and r.voicemail_reached
    # Someone listening to their own mailbox is not a voicemail call.
    _, events = inbound_call("voicemail")
    (r,) = feed_all(tracker, _as_hangup_during_greeting(events, "check default pbx.example"))
    assert r.status is CallStatus.MISSED and r.voicemail_box == "" and not r.voicemail_reached


def test_joined_mid_call_still_reports_from_hangup_complete(tracker: EslTracker) -> None:
    call_id, events = inbound_call("connected")
    finals = [e for e in events if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE"]
    # CREATE/BRIDGE happened before we connected; the agent leg's end names a call leg we
    # have not seen yet, which then ends too.
    (r,) = feed_all(tracker, finals)
    assert r.call_id == call_id and r.status is CallStatus.CONNECTED and r.talk_seconds == 30.0


def test_legs_lost_in_a_reconnect_gap(tracker: EslTracker, caplog: pytest.LogCaptureFixture) -> None:
    # The agent leg hung up while we were reconnecting: the call leg still reports.
    call_id, events = inbound_call("connected")
    feed_all(tracker, events[:1])
    tracker.connection_gap()
    assert feed_all(tracker, [e for e in events if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE"][1:]) == []
    (r,) = tracker.tick(EslTracker.PARTIAL_GRACE_SECONDS)
    assert r.call_id == call_id and r.status is CallStatus.CONNECTED
    # Only the agent leg's end was seen: after a short wait for the call leg, no record
    # (and no 4-hour wait either).
    _, events = inbound_call("connected")
    b_final = [e for e in events if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE"][0]
    with caplog.at_level(logging.WARNING, logger="aftercalld.esl"):
        assert tracker.feed(b_final, 100.0) == []
        assert tracker.active_calls() == 1
        assert tracker.tick(100.0 + EslTracker.PARTIAL_GRACE_SECONDS) == []
    assert tracker.active_calls() == 0
    assert "not connected" in caplog.text
    # The call leg lost its agent leg in the gap and waits; then it is reported on a tick.
    call_id, events = inbound_call("busy")
    feed_all(tracker, events[:2], now=200.0)
    tracker.connection_gap()
    assert tracker.feed(events[-2], 201.0) == []  # the call leg's HANGUP_COMPLETE
    (r,) = tracker.tick(201.0 + EslTracker.PARTIAL_GRACE_SECONDS)
    assert r.call_id == call_id and r.status is CallStatus.MISSED


@pytest.mark.parametrize("outcome", ["connected", "voicemail", "noanswer"])
def test_calls_handed_over_across_a_restart_end_as_if_never_stopped(outcome: str) -> None:
    """Issue 12: at SIGTERM the tracker's open calls go to the outbox as JSON and come back
    at the next start (`aftercalld.esl.handover`): every leg and fact seen so far survives
    (a bridge, a voicemail left), and the call ends with the record it would have had."""
    import json

    from aftercalld.esl import handover

    pbx = replace(default_pbx("freeswitch", name="fs"), variables=("originate_disposition",))
    calls = [inbound_call(outcome, caller=f"+1415555{n:04d}", core="core-7") for n in range(3)]
    events = [ev for _, evs in calls for ev in evs]
    reference = EslTracker(pbx)
    whole = feed_all(reference, events)
    assert len(whole) == 3
    before = EslTracker(pbx)
    half = [ev for _, evs in calls for ev in evs[:-2]]  # every call short of its end
    assert feed_all(before, half) == [] and before.active_calls() == 3
    state = json.loads(json.dumps(handover.dump(before, "core-7")))
    after = EslTracker(pbx)
    assert handover.load(after, state, now=100.0) == (3, "core-7")
    assert handover.load(after, state, now=100.0) == (0, "core-7")  # known already: not twice
    rest = feed_all(after, [ev for _, evs in calls for ev in evs[-2:]], now=100.0)
    assert sorted(rest, key=lambda r: r.call_id) == sorted(whole, key=lambda r: r.call_id)
    assert after.active_calls() == 0

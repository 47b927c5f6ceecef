"""Every recorded FreeSWITCH trace yields exactly the calls its README lists."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
from testdata import FREESWITCH_TRACES

from aftercalld.esl import iter_trace_calls, iter_trace_events
from aftercalld.model import CallStatus, Direction
from aftercalld.pbxconfig import default_pbx

TRACES = FREESWITCH_TRACES

# From traces/freeswitch/README.md: call leg Unique-ID, direction, caller, dialled, agent,
# department, status, talk time (approx.), voicemail box.
IN, OUT = Direction.INBOUND, Direction.OUTBOUND
C, M, V = CallStatus.CONNECTED, CallStatus.MISSED, CallStatus.VOICEMAIL
VM = "1002@aftercall.test"
EXPECTED = {
    "inbound_connected.esl": [
        ("8ce581dd-ae3c-47ac-9521-9e2fc6a157b8", IN, "9876543210", "John Customer", "18005550100", "1001", "support", C, 2.0, ""),
    ],
    "inbound_missed_noanswer.esl": [
        ("a826612b-d614-44a4-a5fb-1aa171e8bb46", IN, "9876543211", "Mary Customer", "18005550100", "1001", "support", M, 0.0, ""),
    ],
    "inbound_voicemail.esl": [
        ("d2a74b11-43a5-4740-896c-923332a4a4f9", IN, "9876543214", "Vic Customer", "18005550200", "1002", "sales", V, 0.0, VM),
    ],
    "inbound_voicemail.json.esl": [
        ("c9cafe01-549f-4d3c-8ddf-37a159cf5ceb", IN, "9876543214", "Vic Customer", "18005550200", "1002", "sales", V, 0.0, VM),
    ],
    "outbound_connected.esl": [
        ("d2a23454-311a-42c8-b6fc-4dee4c4a5892", OUT, "1001", "Alice Agent", "15551230001", "1001", "support", C, 3.0, ""),
    ],
    "ivr_abandon.esl": [
        ("93aeb987-659a-4902-b458-59b30ab54b20", IN, "9876543215", "Ivy Customer", "18005550300", "", "reception", M, 0.0, ""),
    ],
    "mixed_concurrent.esl": [
        ("1cf1c3a4-eeb0-450b-9e8c-b1cdb0105997", IN, "9876543210", "John Customer", "18005550100", "1001", "support", C, 2.0, ""),
        ("fca221dc-c6ad-4f23-985c-926cea3d0795", IN, "9876543214", "Vic Customer", "18005550200", "1002", "sales", V, 0.0, VM),
        ("0dfc997e-202c-41ec-b207-ba83b64e505c", OUT, "1001", "Alice Agent", "15551230001", "1001", "support", C, 3.0, ""),
        ("2c71eeb2-14fc-4392-9abf-739896a36972", IN, "9876543211", "Mary Customer", "18005550100", "1001", "support", M, 0.0, ""),
        ("7f590450-6407-4c0f-adf8-11e1a626b3b1", IN, "9876543215", "Ivy Customer", "18005550300", "", "reception", M, 0.0, ""),
        ("1dccefa9-f3af-44f3-b62f-688a7ee29fc5", IN, "9876543216", "Dana Customer", "18005550200", "1002", "sales", C, 3.0, ""),
    ],
}


def test_every_trace_is_covered() -> None:
    assert sorted(p.name for p in TRACES.glob("*.esl")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_trace_yields_the_listed_calls(name: str, caplog: pytest.LogCaptureFixture) -> None:
    pbx = default_pbx("freeswitch", name="fs1")
    with caplog.at_level(logging.WARNING, logger="aftercalld.esl"):
        records = list(iter_trace_calls(TRACES / name, pbx))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    got = {r.call_id: r for r in records}
    assert len(got) == len(records), "a call was reported twice"
    assert sorted(got) == sorted(e[0] for e in EXPECTED[name])
    for call_id, direction, caller, caller_name, dialled, agent, dept, status, talk, vm in EXPECTED[name]:
        r = got[call_id]
        assert r.pbx == "fs1"
        assert (r.direction, r.status) == (direction, status), call_id
        assert (r.caller_number, r.caller_name, r.dialled_number) == (caller, caller_name, dialled)
        assert r.agent_extension == agent
        assert r.department == dept
        assert r.hangup_cause == "NORMAL_CLEARING"
        assert r.voicemail_box == vm
        assert r.talk_seconds == pytest.approx(talk, abs=0.1)
        assert r.agent_number == ""
        assert r.start_time is not None and r.end_time is not None
        assert r.start_time.tzinfo is not None and r.start_time < r.end_time
        if status is CallStatus.CONNECTED:
            assert r.answer_time is not None and r.start_time < r.answer_time < r.end_time
            assert r.ring_seconds == pytest.approx((r.answer_time - r.start_time).total_seconds(), abs=0.01)
        else:
            assert r.answer_time is None and r.talk_seconds == 0.0
        if direction is Direction.OUTBOUND:
            assert r.agent_name == "Alice Agent"


def test_ring_times_follow_the_scenarios() -> None:
    pbx = default_pbx("freeswitch")
    rings = {r.call_id[:8]: r.ring_seconds for r in iter_trace_calls(TRACES / "mixed_concurrent.esl", pbx)}
    assert rings["1cf1c3a4"] == pytest.approx(1.0, abs=0.1)   # agent answers after ~1 s
    assert rings["0dfc997e"] == pytest.approx(1.5, abs=0.1)   # customer answers after ~1.5 s
    assert 2.5 <= rings["2c71eeb2"] <= 3.1                     # rings until call_timeout=3
    assert rings["7f590450"] == pytest.approx(1.0, abs=0.1)   # IVR answers after one ring
    assert 2.5 <= rings["fca221dc"] <= 3.1                     # agent rings 3 s, then voicemail


def test_plain_and_json_decode_to_the_same_shape() -> None:
    plain = [e for _, e in iter_trace_events(TRACES / "inbound_voicemail.esl")]
    js = [e for _, e in iter_trace_events(TRACES / "inbound_voicemail.json.esl")]
    # Two recordings of one scenario: same events, not necessarily in the same order.
    assert sorted(e["Event-Name"] for e in plain) == sorted(e["Event-Name"] for e in js)
    p_hc = next(e for e in plain if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE" and "variable_call_direction" in e)
    j_hc = next(e for e in js if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE" and "variable_call_direction" in e)
    assert p_hc["Caller-Caller-ID-Name"] == j_hc["Caller-Caller-ID-Name"] == "Vic Customer"  # URL-decoded
    assert set(p_hc) == set(j_hc)


def test_configured_variables_are_copied(tmp_path: Path) -> None:
    from dataclasses import replace

    pbx = replace(default_pbx("freeswitch"), variables=("did_number", "originate_disposition", "nonexistent"))
    (r,) = iter_trace_calls(TRACES / "inbound_missed_noanswer.esl", pbx)
    assert dict(r.variables) == {"did_number": "18005550100", "originate_disposition": "NO_ANSWER"}


def test_unfinished_call_is_warned_about_not_yielded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Cut the trace before the call leg's CHANNEL_HANGUP_COMPLETE.
    data = (TRACES / "inbound_voicemail.esl").read_bytes()
    cut = data.index(b"Event-Name: CHANNEL_HANGUP_COMPLETE")
    cut = data.rindex(b"\n#@ ", 0, cut) + 1
    partial = tmp_path / "partial.esl"
    partial.write_bytes(data[:cut])
    with caplog.at_level(logging.WARNING, logger="aftercalld.esl"):
        assert list(iter_trace_calls(partial, default_pbx("freeswitch"))) == []
    assert "never ended" in caplog.text

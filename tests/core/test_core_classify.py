"""The protocol-neutral classification rules (aftercalld/classify.py), one function at a time."""
from __future__ import annotations

from datetime import UTC

import pytest

from aftercalld.classify import (
    CallFacts,
    DirectionSettings,
    Talk,
    build_record,
    choose_agent,
    direction,
    merge_variables,
    ring_seconds,
    status,
    talk_seconds,
)
from aftercalld.model import CallStatus, Direction

SETTINGS = DirectionSettings(inbound_contexts=("from-pstn",), extension_pattern=r"\d{3}")


def facts(**kw) -> CallFacts:
    return CallFacts(**{"call_id": "c1", "pbx": "p", "start": 1000.0, "end": 1060.0, **kw})


@pytest.mark.parametrize("kw, expected", [
    (dict(context="from-pstn", caller_number="201"), Direction.INBOUND),
    (dict(caller_number="201", dialled_number="0612345678"), Direction.OUTBOUND),
    (dict(caller_number="201", dialled_number="202"), Direction.INTERNAL),
    (dict(caller_number="0612345678"), Direction.INBOUND),
    (dict(caller_number="0612345678", placed_by_pbx=True), Direction.OUTBOUND),
    (dict(context="from-pstn", direction_hint=Direction.OUTBOUND), Direction.OUTBOUND),
])
def test_direction(kw, expected):
    assert direction(facts(**kw), SETTINGS) is expected


def test_status_order():
    talk = [Talk("201", "", 1001.0, 1010.0)]
    assert status(facts()) is CallStatus.MISSED
    assert status(facts(voicemail_reached=True)) is CallStatus.MISSED  # greeting only
    assert status(facts(voicemail_reached=True, voicemail_left=True)) is CallStatus.VOICEMAIL
    assert status(facts(talks=talk, voicemail_left=True)) is CallStatus.CONNECTED
    assert status(facts(talks=talk, interrupted=True)) is CallStatus.INTERRUPTED


def test_talk_seconds_sums_stretches_before_rounding():
    assert talk_seconds([Talk("205", "", 0.0, 3.0004), Talk("204", "", 5.0, 10.3003)]) == 8.301
    assert talk_seconds([]) == 0.0


def test_agent_is_who_talked_longest_ties_go_to_the_later():
    talks = [Talk("205", "Bob", 0, 3), Talk("204", "Carol", 5, 10.3)]
    assert choose_agent(talks, []) == ("204", "Carol")
    assert choose_agent([Talk("205", "Bob", 0, 5), Talk("204", "", 5, 10)], []) == ("204", "")
    # 201 twice (held, back again) beats 202 once
    assert choose_agent([Talk("201", "", 0, 4), Talk("202", "", 4, 9), Talk("201", "", 9, 11)], [])[0] == "201"
    assert choose_agent([], [("", ""), ("202", "Bob")]) == ("202", "Bob")


def test_ring_seconds():
    assert ring_seconds(facts(talks=[Talk("201", "", 1004.5, 1010)])) == 4.5
    assert ring_seconds(facts(ring_end=1012.25)) == 12.25
    assert ring_seconds(facts()) == 60.0


def test_merge_variables_call_leg_first():
    assert merge_variables([{"A": "1"}, None, {"A": "2", "B": "3"}, {"C": "x"}], ("A", "B")) == {"A": "1", "B": "3"}


def test_record_fields():
    talks = [Talk("205", "Bob", 1002.0, 1005.0), Talk("204", "Carol", 1007.0, 1012.3)]
    r = build_record(facts(context="from-pstn", caller_number="0612", talks=talks), SETTINGS, UTC)
    assert (r.status, r.agent_extension, r.agent_name, r.agents) == ("connected", "204", "Carol", ("205", "204"))
    assert r.answer_time.timestamp() == 1002.0 and r.ring_seconds == 2.0 and r.talk_seconds == 8.3
    out = build_record(facts(caller_number="201", dialled_number="0612345678",
                             talks=[Talk("", "", 1003.0, 1009.0)]), SETTINGS, UTC)
    assert (out.direction, out.agent_extension, out.agents) == ("outbound", "201", ("201",))

"""Issue 15 on FreeSWITCH: blind transfer, `fsctl shutdown` and a voicemail greeting hang-up,
from the traces of tests/data/traces/freeswitch-written (see its README); and talk time =
bridged time on every recorded trace."""
from __future__ import annotations

import pytest

from aftercalld.esl.trace import iter_trace_calls, iter_trace_events
from aftercalld.pbxconfig import default_pbx

PBX = default_pbx("freeswitch", name="fs")


def calls(traces, folder: str, name: str) -> list:
    return list(iter_trace_calls(traces / folder / name, PBX))


def test_blind_transfer_sums_talk_and_names_the_agent_who_talked_longest(traces):
    (r,) = calls(traces, "freeswitch-written", "blind_transfer.esl")
    assert r.status == "connected"
    assert r.talk_seconds == pytest.approx(8.3, abs=0.01)  # 3.0 with 1001 + 5.3 with 1002
    assert (r.agent_extension, r.agent_name, r.agents) == ("1002", "Carol Agent", ("1001", "1002"))
    assert r.ring_seconds == pytest.approx(2.0, abs=0.01)


def test_shutdown_gives_interrupted_calls(traces):
    got = {r.caller_number: (r.status, r.hangup_cause) for r in calls(traces, "freeswitch-written", "shutdown.esl")}
    assert got == {"+14155550111": ("interrupted", "SYSTEM_SHUTDOWN"),
                   "+14155550222": ("interrupted", "MANAGER_REQUEST")}


def test_greeting_hangup_is_missed_with_voicemail_reached(traces):
    (r,) = calls(traces, "freeswitch-written", "voicemail_greeting_hangup.esl")
    assert (r.status, r.voicemail_reached, r.voicemail_box) == ("missed", True, "1001@pbx.example")
    (left,) = calls(traces, "freeswitch", "inbound_voicemail.esl")  # recorded: a message was left
    assert (left.status, left.voicemail_reached) == ("voicemail", True)


@pytest.mark.parametrize("folder, name", [
    ("freeswitch", "inbound_connected.esl"), ("freeswitch", "outbound_connected.esl"),
    ("freeswitch", "mixed_concurrent.esl"), ("freeswitch-written", "shutdown.esl"),
])
def test_talk_time_is_the_bridged_time_in_every_trace(traces, folder, name):
    """The call leg's CHANNEL_BRIDGE to its CHANNEL_UNBRIDGE (or its hangup), measured here
    on the raw events, within 1 s."""
    events = [ev for _, ev in iter_trace_events(traces / folder / name)]
    talked = 0
    for r in calls(traces, folder, name):
        if not r.agents:
            continue
        mine = [ev for ev in events if r.call_id in (ev.get("Unique-ID"), ev.get("Other-Leg-Unique-ID"))]
        bridged = [int(ev["Event-Date-Timestamp"]) for ev in mine if ev.get("Event-Name") == "CHANNEL_BRIDGE"]
        ended = [int(ev["Event-Date-Timestamp"]) for ev in mine
                 if ev.get("Event-Name") in ("CHANNEL_UNBRIDGE", "CHANNEL_HANGUP_COMPLETE")]
        assert abs(r.talk_seconds - (min(ended) - bridged[0]) / 1e6) < 1.0, r.call_id
        talked += 1
    assert talked

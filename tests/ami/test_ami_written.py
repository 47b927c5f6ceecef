"""Issue 15 on Asterisk: the FreePBX queue, blind transfer and `core restart now` traces of
tests/data/traces/asterisk-written (see its README), and the live recording's queue call and
voicemail greeting hang-up (tests/data/traces/asterisk-actions)."""
from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest

from aftercalld.ami import iter_trace_calls
from aftercalld.pbxconfig import PbxConfig

PBX = PbxConfig(name="pbx", type="asterisk", timezone=ZoneInfo("UTC"))


def calls(traces, folder: str, name: str) -> dict:
    return {r.call_id: r for r in iter_trace_calls(traces / folder / name, PBX)}


def test_freepbx_queue_member_gives_its_extension_and_bridged_talk_time(traces):
    (r,) = calls(traces, "asterisk-written", "freepbx_queue.ami").values()
    assert (r.status, r.agent_extension, r.agent_name, r.queue) == ("connected", "201", "Alice", "400")
    assert r.agents == ("201",)
    # Bridged 10.0 s; the Cdr that arrived first says 18 (from the announcement's answer).
    assert r.talk_seconds == pytest.approx(10.0, abs=0.01)
    assert r.ring_seconds == pytest.approx(8.0, abs=0.01)  # 6 s queue wait + 2 s ringing


def test_live_queue_call_agent_and_talk_time(traces):
    # Asterisk 22.10.1, queue member Local/201@agents/n, answered before Queue() ran.
    r = calls(traces, "asterisk-actions", "live.ami")["1796469765.40"]
    assert (r.status, r.agent_extension, r.agent_name, r.queue) == ("connected", "201", "Alice", "support")
    # BridgeEnter 1796469767.002 .. BridgeLeave 1796469770.504; the CDR says 5 (from Answer).
    assert r.talk_seconds == pytest.approx(3.502, abs=0.01)


def test_blind_transfer_sums_talk_and_names_the_agent_who_talked_longest(traces):
    (r,) = calls(traces, "asterisk-written", "blind_transfer.ami").values()
    assert r.status == "connected"
    assert r.talk_seconds == pytest.approx(8.3, abs=0.01)  # 3.0 with 205 + 5.3 with 204
    assert (r.agent_extension, r.agent_name) == ("204", "Carol")
    assert r.agents == ("205", "204")
    assert r.ring_seconds == pytest.approx(2.0, abs=0.01)


def test_core_restart_gives_interrupted_calls(traces):
    got = calls(traces, "asterisk-written", "core_restart.ami")
    assert {r.caller_number: r.status for r in got.values()} == {
        "0611111111": "interrupted", "0622222222": "interrupted"}


def test_voicemail_greeting_hangup_is_missed_with_voicemail_reached(traces):
    # Live recording: the caller hung up during the greeting, VMSTATUS=FAILED.
    r = calls(traces, "asterisk-actions", "live.ami")["1796469765.36"]
    assert (r.status, r.voicemail_reached, r.voicemail_box) == ("missed", True, "100@default")
    # A message left (the recorded voicemail trace): voicemail, reached too.
    (left,) = calls(traces, "asterisk", "inbound_voicemail.ami").values()
    assert (left.status, left.voicemail_reached, left.voicemail_box) == ("voicemail", True, "100@default")


@pytest.mark.parametrize("folder, name", [
    ("asterisk", "inbound_connected.ami"), ("asterisk", "outbound_connected.ami"),
    ("asterisk", "mixed_concurrent.ami"), ("asterisk-actions", "live.ami"),
    ("asterisk-written", "freepbx_queue.ami"), ("asterisk-written", "core_restart.ami"),
])
def test_talk_time_is_the_bridged_time_in_every_trace(traces, folder, name):
    """Talk = the call leg's first BridgeEnter to its last BridgeLeave, measured here
    independently on the trace's own times (one bridge per call in these traces; the
    transfer has its own test), within 1 s."""
    from aftercalld.ami.trace import read_trace

    events = list(read_trace(traces / folder / name))
    talked = 0
    for r in calls(traces, folder, name).values():
        if r.status not in ("connected", "interrupted") or not r.agents:
            continue
        leg = _call_leg([ev for _, ev in events], r.call_id)
        entered = [ts for ts, ev in events if ev.get("Event") == "BridgeEnter" and ev.get("Uniqueid") == leg]
        left = [ts for ts, ev in events if ev.get("Event") == "BridgeLeave" and ev.get("Uniqueid") == leg]
        assert abs(r.talk_seconds - (left[-1] - entered[0])) < 1.0, r.call_id
        talked += 1
    assert talked


def _call_leg(events, linkedid):
    first = next(ev for ev in events if ev.get("Event") == "Newchannel" and ev.get("Uniqueid") == linkedid)
    name = first["Channel"]
    if name.startswith("Local/") and name.endswith(";1"):
        return next(ev["Uniqueid"] for ev in events
                    if ev.get("Event") == "Newchannel" and ev.get("Channel") == name[:-1] + "2")
    return linkedid


def test_the_readme_eventfilter_lets_through_every_event_the_tracker_reads():
    """The manager.conf in the README is what sites copy: an event missing from its filter
    (SoftHangupRequest: shutdowns would be texted) silently breaks classification."""
    import re
    from pathlib import Path

    from aftercalld.ami.tracker import CallTracker

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (names,) = re.findall(r"^eventfilter = Event: \(([^)]*)\)", readme, re.M)
    filtered = set(names.split("|"))
    # Newexten and VarSet come through the Application: and Variable: lines instead.
    assert CallTracker(PBX).wanted_events - {"Newexten", "VarSet"} <= filtered
    assert "SoftHangupRequest" in filtered

"""Production-shaped calls (PJSIP trunk and phones, queues, busy, pickup): the tracker
follows Asterisk's call semantics, not the Local-channel simulation of the traces."""
from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest
from ami_synth import Synth

from aftercalld.ami.tracker import CallTracker
from aftercalld.pbxconfig import PbxConfig

PBX = PbxConfig(name="pbx", type="asterisk", timezone=ZoneInfo("UTC"), variables=("DEPARTMENT",))


def run(s: Synth):
    tracker = CallTracker(PBX)
    out = [r for ts, ev in s.events for r in tracker.feed(ev, ts)]
    assert tracker.active_calls == 0
    return out


def inbound(s: Synth, caller="0612345678", did="0201234567") -> str:
    trunk = s.channel("PJSIP/carrier", context="from-trunk", exten=did, cid=caller,
                      cidname="Caller")
    s.app(trunk, "Set", "__DEPARTMENT=support")
    s.setvar(trunk, "__DEPARTMENT", "support")
    return trunk


def test_inbound_answered_by_agent():
    s = Synth()
    trunk = inbound(s)
    agent = s.channel("PJSIP/201", trunk, context="from-internal", exten="0201234567",
                      cid="0612345678", state="Down")
    s.app(trunk, "Dial", "PJSIP/201,20")
    s.dial_begin(trunk, agent, "201")
    s.wait(4)
    s.up(agent)
    s.dial_end(trunk, agent, "ANSWER")
    s.up(trunk)
    s.connected_line(trunk, "201", "Alice")
    s.bridge("b1", agent, trunk)
    s.wait(62.7)
    s.hangup(agent)
    s.unbridge("b1", agent, trunk)
    s.hangup(trunk)
    (r,) = run(s)
    assert (r.status, r.direction, r.caller_number, r.dialled_number) == \
        ("connected", "inbound", "0612345678", "0201234567")
    assert (r.agent_extension, r.agent_name, r.department) == ("201", "Alice", "support")
    # bridged time, to the millisecond (not billsec's whole seconds)
    assert r.talk_seconds == pytest.approx(62.7, abs=0.01) and r.ring_seconds == pytest.approx(4.0, abs=0.01)
    assert r.call_id == trunk and r.hangup_cause == "NORMAL_CLEARING"


def test_queue_rings_three_one_answers():
    s = Synth()
    trunk = inbound(s)
    s.app(trunk, "Queue", "support,t")
    s.queue_join(trunk, "support")
    members = [s.channel(f"PJSIP/{ext}", trunk, context="from-internal", exten="s",
                         cid="0612345678", state="Down") for ext in ("201", "202", "203")]
    for ext, m in zip(("201", "202", "203"), members, strict=True):
        s.dial_begin(trunk, m, ext)
    s.wait(6)
    s.up(members[1])
    s.dial_end(trunk, members[0], "CANCEL")
    s.dial_end(trunk, members[2], "CANCEL")
    s.dial_end(trunk, members[1], "ANSWER")
    s.hangup(members[0], "26")
    s.hangup(members[2], "26")
    s.up(trunk)
    s.agent_connect(trunk, members[1], "support", "Bob")
    s.bridge("b2", trunk, members[1])
    s.wait(30)
    s.hangup(trunk)
    s.unbridge("b2", trunk, members[1])
    s.hangup(members[1])
    (r,) = run(s)
    assert (r.status, r.queue, r.agent_extension, r.agent_name) == ("connected", "support", "202", "Bob")
    assert r.talk_seconds == 30.0


def test_queue_abandon_is_missed():
    s = Synth()
    trunk = inbound(s)
    s.app(trunk, "Queue", "sales")
    s.queue_join(trunk, "sales")
    m = s.channel("PJSIP/202", trunk, context="from-internal", exten="s", state="Down")
    s.dial_begin(trunk, m, "202")
    s.wait(12)
    s.queue_abandon(trunk, "sales")
    s.dial_end(trunk, m, "CANCEL")
    s.hangup(m, "26")
    s.hangup(trunk)
    (r,) = run(s)
    assert (r.status, r.queue, r.agent_extension) == ("missed", "sales", "202")
    assert r.ring_seconds == pytest.approx(12.0, abs=0.01) and r.answer_time is None


@pytest.mark.parametrize("status,cause,name", [("BUSY", "17", "USER_BUSY"),
                                               ("CONGESTION", "34", "NORMAL_CIRCUIT_CONGESTION"),
                                               ("CHANUNAVAIL", "20", "SUBSCRIBER_ABSENT"),
                                               ("CANCEL", "16", "NORMAL_CLEARING")])
def test_not_answered_variants_are_missed(status, cause, name):
    s = Synth()
    trunk = inbound(s)
    agent = s.channel("PJSIP/201", trunk, context="from-internal", exten="s", state="Down")
    s.dial_begin(trunk, agent, "201")
    s.wait(2)
    s.dial_end(trunk, agent, status)
    s.hangup(agent, cause)
    s.hangup(trunk, cause)
    (r,) = run(s)
    assert (r.status, r.hangup_cause, r.agent_extension) == ("missed", name, "201")


def test_voicemail_after_no_answer_and_failed_voicemail():
    for vmstatus, expected in (("SUCCESS", "voicemail"), ("FAILED", "missed")):
        s = Synth()
        trunk = inbound(s)
        agent = s.channel("PJSIP/201", trunk, context="from-internal", exten="s", state="Down")
        s.dial_begin(trunk, agent, "201")
        s.wait(15)
        s.dial_end(trunk, agent, "NOANSWER")
        s.hangup(agent, "19")
        s.app(trunk, "VoiceMail", "201&300,u")
        if vmstatus == "SUCCESS":
            s.up(trunk)
            s.wait(20)
        s.setvar(trunk, "VMSTATUS", vmstatus)
        s.hangup(trunk)
        (r,) = run(s)
        assert r.status == expected
        # FAILED (hung up during the greeting): missed, but the mailbox was reached
        assert r.voicemail_reached and r.voicemail_box == "201@default"
        assert r.talk_seconds == 0.0 and r.ring_seconds == pytest.approx(15.0, abs=0.01)


def test_internal_and_outbound_from_a_phone():
    s = Synth()
    phone = s.channel("PJSIP/201", context="from-internal", exten="202", cid="201", cidname="Alice")
    other = s.channel("PJSIP/202", phone, context="from-internal", exten="s", state="Down")
    s.dial_begin(phone, other, "202")
    s.wait(3)
    s.dial_end(phone, other, "ANSWER")
    s.bridge("b3", phone, other)
    s.wait(10)
    s.hangup(other)
    s.unbridge("b3", other, phone)
    s.hangup(phone)
    (r,) = run(s)
    assert (r.direction, r.status, r.caller_number, r.agent_extension) == \
        ("internal", "connected", "201", "202")

    s = Synth()
    phone = s.channel("PJSIP/201", context="from-internal", exten="0049301234567", cid="201",
                      cidname="Alice")
    trunk = s.channel("PJSIP/carrier", phone, context="from-internal", exten="s", state="Down")
    s.dial_begin(phone, trunk, "carrier/sip:0049301234567@carrier")
    s.wait(5)
    s.dial_end(phone, trunk, "ANSWER")
    s.bridge("b4", phone, trunk)
    s.wait(7.5)
    s.hangup(phone)
    s.unbridge("b4", phone, trunk)
    s.hangup(trunk)
    (r,) = run(s)
    assert (r.direction, r.status, r.caller_number, r.dialled_number) == \
        ("outbound", "connected", "201", "0049301234567")
    assert (r.agent_extension, r.agent_name) == ("201", "Alice")
    assert r.talk_seconds == pytest.approx(7.5, abs=0.01)


def test_pickup_moves_the_picking_phone_into_the_call():
    s = Synth()
    trunk = inbound(s)
    ringing = s.channel("PJSIP/201", trunk, context="from-internal", exten="s", state="Down")
    s.dial_begin(trunk, ringing, "201")
    s.wait(3)
    picker = s.channel("PJSIP/203", context="from-internal", exten="*8", cid="203")  # own call
    s.app(picker, "Pickup", "")
    s.dial_end(trunk, ringing, "CANCEL")
    s.hangup(ringing, "26")
    s.relink(picker, trunk)  # bridging adopts the older Linkedid
    s.bridge("b5", trunk, picker)
    s.wait(20)
    s.hangup(picker)
    s.unbridge("b5", picker, trunk)
    s.hangup(trunk)
    (r,) = run(s)  # one call, not two
    assert (r.call_id, r.status, r.agent_extension) == (trunk, "connected", "203")
    assert r.talk_seconds == pytest.approx(20.0, abs=0.01)


def test_out_of_order_and_duplicate_hangups():
    s = Synth()
    trunk = inbound(s)
    agent = s.channel("PJSIP/201", trunk, context="from-internal", exten="s", state="Down")
    s.dial_begin(trunk, agent, "201")
    s.wait(2)
    s.dial_end(trunk, agent, "NOANSWER")
    s.hangup(agent)
    s.hangup(agent)  # duplicate
    s.hangup(trunk)
    events = s.events
    # Swap the two last hangups (trunk first) and repeat the trunk's after the end.
    events = events[:-3] + [events[-1], events[-3], events[-2], events[-1]]
    tracker = CallTracker(PBX)
    out = [r for ts, ev in events for r in tracker.feed(ev, ts)]
    assert [r.status for r in out] == ["missed"]

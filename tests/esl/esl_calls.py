"""Events of production-shaped FreeSWITCH calls (a SIP trunk leg and an agent leg, no
loopback), with the headers FreeSWITCH 1.10 puts on them. The recorded traces cover the
loopback topology; these cover the two-leg one and outcomes the traces lack (busy, caller
hang-up while ringing, unallocated number)."""
from __future__ import annotations

import itertools
import time
import uuid as uuidlib

T0 = 1_796_000_000_000_000  # microseconds
_counter = itertools.count()


def new_uuid() -> str:
    return str(uuidlib.UUID(int=(next(_counter) << 64) | 0xABCDEF))


def _base(name: str, uid: str, t: int, *, direction: str, channel: str, context: str, dest: str,
          cid_num: str, cid_name: str, created: int, core: str = "core-1") -> dict[str, str]:
    return {
        "Event-Name": name,
        "Core-UUID": core,
        "Event-Date-Timestamp": str(t),
        "Unique-ID": uid,
        "Channel-Name": channel,
        "Call-Direction": direction,
        "Answer-State": "ringing",
        "Caller-Caller-ID-Number": cid_num,
        "Caller-Caller-ID-Name": cid_name,
        "Caller-Destination-Number": dest,
        "Caller-Context": context,
        "Caller-Channel-Created-Time": str(created),
        "Caller-Channel-Answered-Time": "0",
        "Caller-Channel-Bridged-Time": "0",
        "Caller-Channel-Hangup-Time": "0",
    }


def inbound_call(outcome: str, *, caller: str = "+14155550123", did: str = "18005550100", agent: str = "1001",
                 department: str = "support", ring_s: float = 4.0, talk_s: float = 30.0,
                 t0: int = T0, core: str = "core-1", direction_var: bool = True) -> tuple[str, list[dict[str, str]]]:
    """(call leg uuid, events) of an inbound call from a SIP trunk to one agent phone.
    outcome: connected | noanswer | busy | abandon | unallocated | voicemail."""
    a, b = new_uuid(), new_uuid()
    ring = int(ring_s * 1e6)
    talk = int(talk_s * 1e6)
    common_a = dict(direction="inbound", channel=f"sofia/external/{caller}@carrier", context="public", dest=did,
                    cid_num=caller, cid_name="Jane Doe", created=t0, core=core)
    common_b = dict(direction="outbound", channel=f"sofia/internal/{agent}@10.0.0.5", context="default", dest=agent,
                    cid_num=caller, cid_name="Jane Doe", created=t0 + 20_000, core=core)
    ev: list[dict[str, str]] = []
    a_vars = {"variable_department": department, "variable_export_vars": "department"}
    if direction_var:
        a_vars["variable_call_direction"] = "inbound"
    ev.append(_base("CHANNEL_CREATE", a, t0, **common_a))
    if outcome == "unallocated":
        end = t0 + 50_000
        hc = _base("CHANNEL_HANGUP_COMPLETE", a, end, **common_a)
        hc.update(a_vars, **{"Hangup-Cause": "UNALLOCATED_NUMBER", "Caller-Channel-Hangup-Time": str(end),
                             "variable_billsec": "0", "variable_last_app": "hangup"})
        ev.append(hc)
        return a, ev
    link = {"variable_originator": a, "variable_originating_leg_uuid": a, "Other-Leg-Unique-ID": a,
            "variable_department": department}
    b_create = _base("CHANNEL_CREATE", b, t0 + 20_000, **common_b)
    b_create.update(link)
    ev.append(b_create)
    a_final = _base("CHANNEL_HANGUP_COMPLETE", a, 0, **common_a)
    a_final.update(a_vars)
    a_final["variable_originated_legs"] = f"{b};Outbound Call;{agent}"
    b_final = _base("CHANNEL_HANGUP_COMPLETE", b, 0, **common_b)
    b_final.update(link)
    if outcome == "connected":
        answer = t0 + ring
        end = answer + talk
        ev.append({**_base("CHANNEL_ANSWER", b, answer, **common_b), **link})
        ev.append(_base("CHANNEL_ANSWER", a, answer, **common_a))
        ev.append({**_base("CHANNEL_BRIDGE", a, answer, **common_a), "Other-Leg-Unique-ID": b})
        b_final.update({"Event-Date-Timestamp": str(end), "Hangup-Cause": "NORMAL_CLEARING",
                        "Caller-Channel-Answered-Time": str(answer), "Caller-Channel-Hangup-Time": str(end),
                        "Caller-Callee-ID-Name": "Alice Agent", "Caller-Callee-ID-Number": agent,
                        "variable_billsec": str(int(talk_s)), "variable_bridge_uuid": a, "variable_last_bridge_to": a})
        a_final.update({"Event-Date-Timestamp": str(end + 1000), "Hangup-Cause": "NORMAL_CLEARING",
                        "Caller-Channel-Answered-Time": str(answer), "Caller-Channel-Bridged-Time": str(answer),
                        "Caller-Channel-Hangup-Time": str(end + 1000), "variable_bridge_uepoch": str(answer),
                        "variable_last_bridge_to": b, "variable_bridge_uuid": b,
                        "variable_originate_disposition": "SUCCESS", "variable_DIALSTATUS": "SUCCESS",
                        "variable_billsec": str(int(talk_s)), "variable_last_app": "bridge"})
        ev += [b_final, a_final]
    elif outcome in ("noanswer", "busy", "voicemail"):
        stop = t0 + ring
        cause = "USER_BUSY" if outcome == "busy" else "NO_ANSWER"
        b_final.update({"Event-Date-Timestamp": str(stop), "Hangup-Cause": cause,
                        "Caller-Channel-Hangup-Time": str(stop), "variable_billsec": "0"})
        ev.append(b_final)
        a_final.update({"variable_originate_disposition": cause,
                        "variable_DIALSTATUS": "BUSY" if outcome == "busy" else "NOANSWER",
                        "variable_originate_failed_cause": cause})
        if outcome == "voicemail":
            answered = stop + 10_000
            end = answered + 20_000_000
            ev.append(_base("CHANNEL_ANSWER", a, answered, **common_a))
            ev.append({"Event-Name": "CUSTOM", "Event-Subclass": "vm::maintenance", "Core-UUID": core,
                       "Event-Date-Timestamp": str(end - 1000), "VM-Action": "leave-message", "VM-User": "1001",
                       "VM-Domain": "pbx.example", "VM-UUID": a, "VM-Message-Len": "12", "Unique-ID": a})
            a_final.update({"Event-Date-Timestamp": str(end), "Hangup-Cause": "NORMAL_CLEARING",
                            "Caller-Channel-Answered-Time": str(answered), "Caller-Channel-Hangup-Time": str(end),
                            "variable_billsec": "20", "variable_last_app": "voicemail",
                            "variable_voicemail_account": "1001", "variable_voicemail_domain": "pbx.example",
                            "variable_voicemail_message_len": "00:00:12"})
        else:
            # No continue_on_fail: FreeSWITCH hangs the call leg up with the bridge's cause.
            a_final.update({"Event-Date-Timestamp": str(stop + 1000), "Hangup-Cause": cause,
                            "Caller-Channel-Hangup-Time": str(stop + 1000), "variable_billsec": "0",
                            "variable_last_app": "bridge"})
        ev.append(a_final)
    elif outcome == "abandon":
        stop = t0 + ring
        a_final.update({"Event-Date-Timestamp": str(stop + 2000), "Hangup-Cause": "NORMAL_CLEARING",
                        "Caller-Channel-Hangup-Time": str(stop), "variable_billsec": "0",
                        "variable_originate_disposition": "ORIGINATOR_CANCEL", "variable_DIALSTATUS": "CANCEL",
                        "variable_last_app": "bridge"})
        b_final.update({"Event-Date-Timestamp": str(stop + 1000), "Hangup-Cause": "ORIGINATOR_CANCEL",
                        "Caller-Channel-Hangup-Time": str(stop + 1000), "variable_billsec": "0"})
        ev += [a_final, b_final]  # the caller's leg goes first when the caller gives up
    else:
        raise ValueError(outcome)
    ev.append({**_base("CHANNEL_DESTROY", a, int(ev[-1]["Event-Date-Timestamp"]) + 5000, **common_a)})
    return a, ev


def outbound_call(*, agent: str = "1001", number: str = "14155550199", t0: int = T0,
                  direction_var: bool = False) -> tuple[str, list[dict[str, str]]]:
    """An agent phone dials out through a gateway; the far end answers after 2 s, talks 10 s."""
    a, b = new_uuid(), new_uuid()
    ca = dict(direction="inbound", channel=f"sofia/internal/{agent}@pbx", context="default", dest=number,
              cid_num=agent, cid_name="Alice Agent", created=t0)
    cb = dict(direction="outbound", channel=f"sofia/gateway/carrier/{number}", context="default", dest=number,
              cid_num="18005550100", cid_name="Example Co", created=t0 + 10_000)
    link = {"variable_originator": a, "Other-Leg-Unique-ID": a}
    answer, end = t0 + 2_000_000, t0 + 12_000_000
    a_final = _base("CHANNEL_HANGUP_COMPLETE", a, end, **ca)
    a_final.update({"Hangup-Cause": "NORMAL_CLEARING", "Caller-Channel-Hangup-Time": str(end),
                    "variable_bridge_uepoch": str(answer), "variable_last_bridge_to": b})
    if direction_var:
        a_final["variable_call_direction"] = "outbound"
    b_final = _base("CHANNEL_HANGUP_COMPLETE", b, end, **cb)
    b_final.update(link, **{"Hangup-Cause": "NORMAL_CLEARING", "Caller-Channel-Hangup-Time": str(end),
                            "variable_billsec": "10"})
    return a, [
        _base("CHANNEL_CREATE", a, t0, **ca),
        {**_base("CHANNEL_CREATE", b, t0 + 10_000, **cb), **link},
        {**_base("CHANNEL_BRIDGE", a, answer, **ca), "Other-Leg-Unique-ID": b},
        b_final,
        a_final,
    ]


_LINK_KEYS = ("Unique-ID", "Other-Leg-Unique-ID", "variable_originator", "variable_originating_leg_uuid")


def numbered_uuid(k: int, leg: int) -> str:
    """Leg `leg` (0: the call leg, the call's id) of call number `k`."""
    return f"{k:08x}-0000-4000-8000-{leg:012x}"


def numbered_missed_call(k: int, caller: str, ring_s: float, core: str, t0_us: int | None = None
                         ) -> tuple[bytes, bytes]:
    """Call number `k` from `caller` to a phone that rings `ring_s` unanswered, as plain
    event frames split where it ends (before the first CHANNEL_HANGUP_COMPLETE): a call in
    progress, then its end. Ids `numbered_uuid(k, …)`, times from `t0_us` (default now)."""
    from esl_server import plain_event  # the server imports this module's neighbours only

    t0 = int(time.time() * 1e6) if t0_us is None else t0_us
    _, events = inbound_call("noanswer", caller=caller, ring_s=ring_s, t0=t0, core=core)
    uuids: dict[str, str] = {}
    for ev in events:
        for key in _LINK_KEYS:
            if key in ev and ev[key] not in uuids:
                uuids[ev[key]] = numbered_uuid(k, len(uuids))
    frames = []
    for ev in events:
        fixed = {key: uuids.get(value, value) if key in _LINK_KEYS else value for key, value in ev.items()}
        if "variable_originated_legs" in fixed:
            leg, _, rest = fixed["variable_originated_legs"].partition(";")
            fixed["variable_originated_legs"] = f"{uuids.get(leg, leg)};{rest}"
        frames.append(plain_event(fixed))
    cut = next(i for i, ev in enumerate(events) if ev["Event-Name"] == "CHANNEL_HANGUP_COMPLETE")
    return b"".join(frames[:cut]), b"".join(frames[cut:])

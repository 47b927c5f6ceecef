"""Writes the ESL traces of ``tests/data/traces/freeswitch-written/``: scenarios no recording
covers (a blind transfer, `fsctl shutdown`, a caller hanging up during the voicemail
greeting), as FreeSWITCH 1.10 sends them with ``event plain``: the ``aftercalld-esl-trace/1``
format of the recorded traces, URL-encoded header values, the headers of `esl_calls.py`
(SIP trunk and phone legs). The files are committed; the tests read the files, not this
script. Regenerate with ``python tests/esl/esl_written.py``."""
from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from esl_calls import _base, inbound_call, new_uuid  # noqa: E402
from testdata import TRACES  # noqa: E402

OUT = TRACES / "freeswitch-written"
T0 = 1_796_600_000_000_000  # microseconds


def write(path: Path, title: str, notes: list[str], events: list[dict[str, str]]) -> None:
    lines = [b"# format: aftercalld-esl-trace/1",
             f"# WRITTEN, not recorded: {title} (tests/esl/esl_written.py)".encode(),
             b"# subscription: event plain CHANNEL_CREATE CHANNEL_UUID CHANNEL_ORIGINATE CHANNEL_ANSWER "
             b"CHANNEL_BRIDGE CHANNEL_UNBRIDGE CHANNEL_HANGUP_COMPLETE HEARTBEAT CUSTOM vm::maintenance",
             *(f"# plan: {n}".encode() for n in notes)]
    for seq, ev in enumerate(sorted(events, key=lambda e: int(e["Event-Date-Timestamp"])), 1):
        body = "".join(f"{k}: {quote(v, safe='')}\n" for k, v in ev.items()).encode() + b"\n"
        raw = b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(body) + body
        when = int(ev["Event-Date-Timestamp"]) / 1e6
        iso = datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        lines.append(f"#@ {iso} {when:.6f} seq={seq} len={len(raw)}".encode())
        lines.append(raw)
    path.write_bytes(b"\n".join(lines) + b"\n")


def _leg(uid: str, t: int, **kw: str) -> dict:
    return dict(direction=kw["direction"], channel=kw["channel"], context=kw["context"], dest=kw["dest"],
                cid_num=kw.get("cid_num", "+14155550123"), cid_name=kw.get("cid_name", "Jane Doe"), created=t)


def blind_transfer() -> list[dict[str, str]]:
    """1001 answers after 2 s, talks 3.0 s, blind-transfers (SIP REFER) the caller to 1002,
    which rings 2 s and talks 5.3 s."""
    a, b, c = new_uuid(), new_uuid(), new_uuid()
    t0 = T0
    la = _leg(a, t0, direction="inbound", channel="sofia/external/+14155550123@carrier", context="public",
              dest="18005550100")
    lb = _leg(b, t0 + 20_000, direction="outbound", channel="sofia/internal/1001@10.0.0.5", context="default",
              dest="1001")
    lc = _leg(c, t0 + 5_100_000, direction="outbound", channel="sofia/internal/1002@10.0.0.6", context="default",
              dest="1002")
    link = {"variable_originator": a, "variable_originating_leg_uuid": a, "Other-Leg-Unique-ID": a}
    ans1, xfer, ans2, end = t0 + 2_000_000, t0 + 5_000_000, t0 + 7_100_000, t0 + 12_400_000
    ev = [_base("CHANNEL_CREATE", a, t0, **la), {**_base("CHANNEL_CREATE", b, t0 + 20_000, **lb), **link},
          {**_base("CHANNEL_ANSWER", b, ans1, **lb), **link}, _base("CHANNEL_ANSWER", a, ans1 + 100, **la),
          {**_base("CHANNEL_BRIDGE", a, ans1 + 200, **la), "Other-Leg-Unique-ID": b},
          {**_base("CHANNEL_UNBRIDGE", a, xfer, **la), "Other-Leg-Unique-ID": b}]
    b_final = _base("CHANNEL_HANGUP_COMPLETE", b, xfer + 50_000, **lb)
    b_final.update(link, **{"Hangup-Cause": "NORMAL_CLEARING", "Caller-Channel-Answered-Time": str(ans1),
                            "Caller-Channel-Hangup-Time": str(xfer + 50_000), "variable_billsec": "3",
                            "variable_sip_refer_to": "<sip:1002@pbx.example>", "variable_last_bridge_to": a})
    ev.append(b_final)
    ev += [{**_base("CHANNEL_CREATE", c, xfer + 100_000, **lc), **link},
           {**_base("CHANNEL_ANSWER", c, ans2, **lc), **link},
           {**_base("CHANNEL_BRIDGE", a, ans2 + 200, **la), "Other-Leg-Unique-ID": c},
           {**_base("CHANNEL_UNBRIDGE", a, end, **la), "Other-Leg-Unique-ID": c}]
    c_final = _base("CHANNEL_HANGUP_COMPLETE", c, end + 1000, **lc)
    c_final.update(link, **{"Hangup-Cause": "NORMAL_CLEARING", "Caller-Channel-Answered-Time": str(ans2),
                            "Caller-Channel-Hangup-Time": str(end), "Caller-Callee-ID-Name": "Carol Agent",
                            "Caller-Callee-ID-Number": "1002", "variable_billsec": "5",
                            "variable_last_bridge_to": a})
    a_final = _base("CHANNEL_HANGUP_COMPLETE", a, end + 2000, **la)
    a_final.update({"Hangup-Cause": "NORMAL_CLEARING", "Caller-Channel-Answered-Time": str(ans1 + 100),
                    "Caller-Channel-Bridged-Time": str(ans2 + 200), "Caller-Channel-Hangup-Time": str(end + 2000),
                    "variable_call_direction": "inbound", "variable_bridge_uepoch": str(ans1 + 200),
                    "variable_last_bridge_to": c, "variable_bridge_uuid": c, "variable_billsec": "10",
                    "variable_originated_legs": f"ARRAY::{b};Outbound Call;1001|:{c};Outbound Call;1002",
                    "variable_last_app": "bridge"})
    return ev + [c_final, a_final]


def shutdown() -> list[dict[str, str]]:
    """`fsctl shutdown` while one call talks to 1001 and another rings 1002: FreeSWITCH hangs
    every channel up, the talking call with SYSTEM_SHUTDOWN, the ringing one MANAGER_REQUEST."""
    _, talking = inbound_call("connected", caller="+14155550111", ring_s=1.0, talk_s=6.0, t0=T0 + 60_000_000)
    _, ringing = inbound_call("abandon", caller="+14155550222", agent="1002", ring_s=3.0, t0=T0 + 63_000_000)
    out = []
    for events, cause in ((talking, "SYSTEM_SHUTDOWN"), (ringing, "MANAGER_REQUEST")):
        for ev in events:
            if ev["Event-Name"] == "CHANNEL_HANGUP_COMPLETE":
                ev = {**ev, "Hangup-Cause": cause, "variable_hangup_cause": cause}
                ev.pop("variable_originate_disposition", None)
            if ev["Event-Name"] != "CHANNEL_DESTROY":
                out.append(ev)
    return out


def greeting_hangup() -> list[dict[str, str]]:
    """1001 does not answer (4 s); voicemail 1001 answers; the caller hangs up during the
    greeting: no leave-message event, no voicemail_message_len."""
    _, events = inbound_call("voicemail", caller="+14155550333", t0=T0 + 120_000_000)
    out = []
    for ev in events:
        if ev["Event-Name"] in ("CUSTOM", "CHANNEL_DESTROY"):
            continue
        ev = {k: v for k, v in ev.items() if k != "variable_voicemail_message_len"}
        if ev.get("variable_last_app") == "voicemail":
            ev["variable_last_arg"] = "default pbx.example 1001"
        out.append(ev)
    return out


def main() -> None:
    OUT.mkdir(exist_ok=True)
    write(OUT / "blind_transfer.esl", "blind transfer 1001 -> 1002", [
        "1001 answers after 2 s, talks 3.0 s, transfers (REFER) to 1002, who rings 2 s and talks 5.3 s.",
        "expect=connected talk 8.3 s, agent 1002 (longest), agents 1001, 1002",
    ], blind_transfer())
    write(OUT / "shutdown.esl", "fsctl shutdown with two calls up", [
        "+14155550111 talking to 1001 (SYSTEM_SHUTDOWN), +14155550222 ringing 1002 (MANAGER_REQUEST).",
        "expect=interrupted for both",
    ], shutdown())
    write(OUT / "voicemail_greeting_hangup.esl", "caller hangs up during the voicemail greeting", [
        "+14155550333 -> 1001 no answer 4 s -> voicemail 1001@pbx.example; hangs up before the beep.",
        "expect=missed, voicemail_reached, voicemail_box 1001@pbx.example",
    ], greeting_hangup())


if __name__ == "__main__":
    main()

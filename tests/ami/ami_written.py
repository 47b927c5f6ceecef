"""Writes the AMI traces of ``tests/data/traces/asterisk-written/``: scenarios no recording
covers (a FreePBX queue, a blind transfer, `core restart now`), in the exact event shapes
Asterisk 22 sends (field names and orders as in the recorded traces, ``timestampevents =
yes``). The files are committed; the tests read the files, not this script. Regenerate with
``python tests/ami/ami_written.py``."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ami_synth import Synth  # noqa: E402
from testdata import TRACES  # noqa: E402

OUT = TRACES / "asterisk-written"
T0 = 1_796_500_000.0  # 2026-12-05 21:46:40 UTC


def freepbx_queue() -> Synth:
    """FreePBX: the trunk call is answered (announcement), waits 6 s in queue 400, whose
    member Local/201@from-queue/n rings PJSIP/201 for 2 s; Alice talks 10.0 s and hangs
    up. The trunk's Cdr (billsec counted from its answer: 18) arrives before its Hangup."""
    s = Synth(T0)
    trunk = s.channel("PJSIP/carrier", context="from-pstn", exten="0201234567", cid="0612345678",
                      cidname="Queue Caller")
    s.app(trunk, "Answer")
    s.up(trunk)
    s.app(trunk, "Queue", "400,t,,,300")
    s.queue_join(trunk, "400")
    s.wait(6)
    l1, l2 = s.local("Local/201@from-queue", trunk, context="from-queue", exten="201", cid="0612345678",
                     cidname="Queue Caller")
    s.agent_called(trunk, l1, "400", "Alice", "Local/201@from-queue/n")
    s.dial_begin(trunk, l1, "Local/201@from-queue/n")
    s.app(l2, "Dial", "PJSIP/201,,HhtrM(auto-blkvm)")
    phone = s.channel("PJSIP/201", trunk, context="from-internal", exten="201", cid="0612345678",
                      cidname="Queue Caller", state="Down")
    s.dial_begin(l2, phone, "201")
    s.wait(2)
    s.up(phone)
    s.dial_end(l2, phone, "ANSWER")
    s.up(l2)
    s.bridge("7a1e0b3c-l", phone, l2)
    s.up(l1)
    s.dial_end(trunk, l1, "ANSWER")
    s.agent_connect(trunk, l1, "400", "Alice", "Local/201@from-queue/n", hold="6", ring="2")
    s.connected_line(trunk, "201", "Alice")
    s.bridge("7a1e0b3c-q", l1, trunk)
    s.wait(10)
    s.hangup(phone)
    s.unbridge("7a1e0b3c-l", phone, l2)
    s.hangup(l2)
    s.unbridge("7a1e0b3c-q", l1)
    s.hangup(l1)
    s.cdr(trunk, l1, src="0612345678", dst="0201234567", context="from-pstn", app="Queue", data="400,t,,,300",
          start="2026-12-05 21:46:40", answer="2026-12-05 21:46:40", end="2026-12-05 21:46:58", duration=18,
          billsec=18)
    s.unbridge("7a1e0b3c-q", trunk)
    s.hangup(trunk)
    return s


def blind_transfer() -> Synth:
    """Agent 205 answers after 2 s, talks 3.0 s, blind-transfers the caller to 204 (a Local
    channel takes 205's place in the bridge; 204 rings 2 s, answers, Local optimisation swaps
    204 in), the caller talks 5.3 s with 204. The Cdr of the first segment (205, billsec 3)
    arrives at the transfer, long before the last Hangup."""
    s = Synth(T0 + 100)
    trunk = s.channel("PJSIP/carrier", context="from-pstn", exten="0201234567", cid="0698765432",
                      cidname="Transfer Caller")
    s.app(trunk, "Dial", "PJSIP/205,20")
    a205 = s.channel("PJSIP/205", trunk, context="from-internal", exten="205", cid="0698765432",
                     cidname="Transfer Caller", state="Down")
    s.dial_begin(trunk, a205, "205")
    s.wait(2)
    s.up(a205)
    s.dial_end(trunk, a205, "ANSWER")
    s.up(trunk)
    s.connected_line(trunk, "205", "Bob")
    s.bridge("b0c3f1d2-1", a205, trunk)
    s.wait(3)
    s.blind_transfer(a205, trunk, "b0c3f1d2-1", "204", "from-internal")
    s.unbridge("b0c3f1d2-1", a205)
    l1, l2 = s.local("Local/204@from-internal", trunk, context="from-internal", exten="204",
                     cid="0698765432", cidname="Transfer Caller")
    s.bridge("b0c3f1d2-1", l1)
    s.hangup(a205)
    s.cdr(trunk, a205, src="0698765432", dst="0201234567", context="from-pstn", app="Dial", data="PJSIP/205,20",
          start="2026-12-05 21:48:20", answer="2026-12-05 21:48:22", end="2026-12-05 21:48:25", duration=5,
          billsec=3)
    s.app(l2, "Dial", "PJSIP/204,20")
    a204 = s.channel("PJSIP/204", trunk, context="from-internal", exten="204", cid="0698765432",
                     cidname="Transfer Caller", state="Down")
    s.dial_begin(l2, a204, "204")
    s.wait(2)
    s.up(a204)
    s.dial_end(l2, a204, "ANSWER")
    s.up(l2)
    s.up(l1)
    s.bridge("b0c3f1d2-2", a204, l2)
    # Local channel optimisation: 204 takes the Local channel's place in the caller's bridge.
    s.unbridge("b0c3f1d2-2", a204)
    s.bridge("b0c3f1d2-1", a204)
    s.unbridge("b0c3f1d2-1", l1)
    s.connected_line(trunk, "204", "Carol")
    s.unbridge("b0c3f1d2-2", l2)
    s.hangup(l1)
    s.hangup(l2)
    s.wait(5.3)
    s.hangup(a204)
    s.unbridge("b0c3f1d2-1", a204, trunk)
    s.hangup(trunk)
    return s


def core_restart() -> Synth:
    """Two calls up, then `core restart now`: every channel gets SoftHangupRequest with
    Cause 4 (AST_SOFTHANGUP_SHUTDOWN), then the Hangups, then Shutdown 1.1 s later. One call
    is talking to 201, the other is ringing 202."""
    s = Synth(T0 + 200)
    talking = s.channel("PJSIP/carrier", context="from-pstn", exten="0201234567", cid="0611111111",
                        cidname="Cut Talker")
    agent = s.channel("PJSIP/201", talking, context="from-internal", exten="201", cid="0611111111",
                      state="Down")
    s.dial_begin(talking, agent, "201")
    s.wait(1)
    s.up(agent)
    s.dial_end(talking, agent, "ANSWER")
    s.up(talking)
    s.bridge("c0ffee00-1", agent, talking)
    s.wait(4)
    ringing = s.channel("PJSIP/carrier", context="from-pstn", exten="0201234567", cid="0622222222",
                        cidname="Cut Ringer")
    phone = s.channel("PJSIP/202", ringing, context="from-internal", exten="202", cid="0622222222",
                      state="Down")
    s.dial_begin(ringing, phone, "202")
    s.wait(3)
    for uid in (talking, agent, ringing, phone):
        s.soft_hangup(uid, "4")
    s.unbridge("c0ffee00-1", agent)
    s.hangup(agent, "16")
    s.unbridge("c0ffee00-1", talking)
    s.hangup(talking, "16")
    s.dial_end(ringing, phone, "CANCEL")
    s.hangup(phone, "0")
    s.hangup(ringing, "0")
    s.wait(1.1)
    s.shutdown()
    return s


def main() -> None:
    OUT.mkdir(exist_ok=True)
    freepbx_queue().write(OUT / "freepbx_queue.ami", "FreePBX queue 400, member Local/201@from-queue/n", [
        "caller 0612345678 -> DID 0201234567 (from-pstn), answered, 6 s in queue 400; Alice (201) rings 2 s,",
        "talks 10.0 s (bridged), hangs up. Expect: connected, agent 201 Alice, queue 400, talk 10.0 s, ring 8.0 s.",
    ])
    blind_transfer().write(OUT / "blind_transfer.ami", "blind transfer 205 -> 204", [
        "caller 0698765432 -> DID 0201234567; 205 (Bob) talks 3.0 s, blind-transfers to 204 (Carol), who talks",
        "5.3 s. Expect: connected, talk 8.3 s, agent 204 (longest), agents 205, 204.",
    ])
    core_restart().write(OUT / "core_restart.ami", "`core restart now` with two calls up", [
        "0611111111 talking to 201 for 4 s, 0622222222 ringing 202 for 3 s; then core restart now.",
        "Expect: both calls status interrupted (not texted by default).",
    ])


if __name__ == "__main__":
    main()

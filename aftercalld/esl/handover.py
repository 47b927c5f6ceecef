"""The ESL tracker's calls in progress as JSON, and back: handed over across a clean stop.

The counterpart of `aftercalld.ami.handover`. At SIGTERM the daemon writes them to the
outbox; the next start reads them back before it connects, and the first connect's
reconciliation (`reconcile.py`) settles what changed meanwhile: calls still up continue
with every leg and fact seen so far (the phones that rang, bridges, a voicemail left, which
FreeSWITCH's channel list alone cannot give), calls that ended are left to the CDR
backfill or finished with what was seen. The Core-UUID of the FreeSWITCH they belonged to
travels with them, so that a restart during the stop still records them as interrupted.

Times kept in the tracker's own clock (a call's start, for its timeout) do not survive a
process: a handed-over call counts its age from the new start.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .legs import Leg, call_leg

if TYPE_CHECKING:
    from .tracker import EslTracker

FORMAT = 1


def dump(tracker: EslTracker, core: str) -> dict[str, Any]:
    calls = []
    for call in tracker._calls.values():
        legs = sorted(call.legs.values(), key=lambda leg: leg.seq)
        calls.append({
            "uuids": sorted(call.uuids),
            "core": call.core,
            "partial": call.partial,
            "legs": [_leg_fields(leg) for leg in legs],
        })
    return {"format": FORMAT, "core": core, "calls": calls}


def _leg_fields(leg: Leg) -> dict[str, Any]:
    out = {name: getattr(leg, name) for name in Leg.__slots__ if name != "seq"}
    if leg.final is not None:
        out["final"] = dict(leg.final)  # a live event is a read-only mapping, not a dict
    return out


def load(tracker: EslTracker, state: dict[str, Any], now: float) -> tuple[int, str]:
    """Put the calls back in `tracker`; returns how many, and the Core-UUID they belong to.
    A call any of whose channels the tracker already knows (events came first) is left out."""
    if state.get("format") != FORMAT:
        return 0, ""
    count = 0
    for fields in state.get("calls", ()):
        uuids = set(fields["uuids"])
        if any(uuid in tracker._by_uuid or uuid in tracker._done for uuid in uuids):
            continue
        call = tracker._new_call(now, str(fields.get("core", "")))
        call.partial = bool(fields.get("partial"))
        for leg_fields in fields["legs"]:
            tracker._seq += 1
            leg = Leg.__new__(Leg)
            leg.seq = tracker._seq
            for name in Leg.__slots__:
                if name != "seq":
                    setattr(leg, name, leg_fields[name])
            call.legs[leg.uuid] = leg
            if leg.final is None:
                call.open += 1
        for uuid in uuids | call.legs.keys():
            tracker._attach(call, uuid)
        if call.legs and call_leg(call.legs.values(), tracker._direction_var).final is not None:
            # It was waiting for legs lost in a gap: it waits again, as long as it would have.
            tracker._waiting.setdefault(call.key, (now + tracker.PARTIAL_GRACE_SECONDS, call))
        count += 1
    return count, str(state.get("core", ""))

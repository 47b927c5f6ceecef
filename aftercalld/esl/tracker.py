"""FreeSWITCH call tracker: groups channel events into calls and classifies each finished call.

A *call* is the set of channels (Unique-IDs) that FreeSWITCH links together: a B-leg names
its A-leg in ``variable_originator`` / ``variable_originating_leg_uuid``, bridged legs name
each other in ``Other-Leg-Unique-ID`` / ``variable_last_bridge_to`` / ``variable_bridge_uuid``,
``variable_originated_legs`` lists what an A-leg dialled, the two halves of a loopback channel
name each other in ``variable_other_loopback_leg_uuid``, and mod_callcenter names the
member's channel in ``variable_cc_member_session_uuid``. The call is over when every linked
channel has sent CHANNEL_HANGUP_COMPLETE; the record is built then, with no grace period
(that event carries every variable we need, and nothing later changes the outcome).

The *call leg* (what a PBX admin calls "the call") is the channel that ran the routing
dialplan: the one carrying the configured direction variable (FusionPBX's ``call_direction``),
else the first inbound channel that no other channel originated, else the first channel.

Classification, from FreeSWITCH's semantics rather than from counters that lie (billsec > 0
also for IVR and voicemail, Answer-State is always "hangup" at the end):
  voicemail  mod_voicemail saved a message for this call (``vm::maintenance`` leave-message
             whose VM-UUID is one of our channels, or ``voicemail_message_len`` on a leg);
  connected  the call leg was bridged (``bridge_uepoch`` / Bridged-Time / CHANNEL_BRIDGE);
  missed     everything else: no answer, busy, caller gave up while ringing or in the IVR.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo

from ..logutil import fields
from ..model import CallRecord, CallStatus, Direction
from ..pbxconfig import PbxConfig
from .config import EslSettings

log = logging.getLogger("aftercalld.esl.tracker")

# Events the tracker reads; everything else is dropped after one lookup (its name). Every
# link it needs is on CREATE/ORIGINATE (B-leg to A-leg), BRIDGE and HANGUP_COMPLETE.
CHANNEL_EVENTS = frozenset({
    "CHANNEL_CREATE", "CHANNEL_UUID", "CHANNEL_ORIGINATE", "CHANNEL_ANSWER", "CHANNEL_BRIDGE",
    "CHANNEL_HANGUP_COMPLETE",
})
# What a live connection subscribes to (the README lists the same). CHANNEL_UUID is needed
# because originate renames a channel; HEARTBEAT lets the source notice a dead connection.
SUBSCRIBE_EVENTS = (
    "CHANNEL_CREATE CHANNEL_UUID CHANNEL_ORIGINATE CHANNEL_ANSWER CHANNEL_BRIDGE "
    "CHANNEL_HANGUP_COMPLETE HEARTBEAT CUSTOM vm::maintenance"
)

# Variables that name another channel of the same call. Each named channel really existed,
# so the call is not over until we have seen it hang up too.
_LINK_HEADERS = (
    "Other-Leg-Unique-ID", "variable_originator", "variable_originating_leg_uuid",
    "variable_last_bridge_to", "variable_bridge_uuid", "variable_other_loopback_leg_uuid",
    "variable_signal_bond", "variable_cc_member_session_uuid",
)
# Which of them can be on each event (each lookup scans the raw event, so fewer is faster):
# a new channel names its creator or loopback twin; a bridge names the partner; the end
# names everything.
_CREATE_LINKS = ("Other-Leg-Unique-ID", "variable_originator", "variable_originating_leg_uuid",
                 "variable_other_loopback_leg_uuid", "variable_cc_member_session_uuid")
_EVENT_LINKS = {
    "CHANNEL_CREATE": _CREATE_LINKS,
    "CHANNEL_ORIGINATE": _CREATE_LINKS,
    "CHANNEL_BRIDGE": ("Other-Leg-Unique-ID", "variable_bridge_uuid"),
    "CHANNEL_ANSWER": (),  # what it carries was on the channel's CREATE already
}
_PARENT_HEADERS = ("variable_originator", "variable_originating_leg_uuid")
# A channel's first event when we see it from its start (CHANNEL_UUID: originate renames it).
_FIRST_EVENTS = frozenset({"CHANNEL_CREATE", "CHANNEL_UUID"})
# FreeSWITCH's stand-in names for a leg it originated; they say nothing about the person.
_PLACEHOLDER_NAMES = frozenset({"", "Outbound Call", "Unknown", "unknown", "UNKNOWN"})
_QUEUE_VARIABLES = ("variable_cc_queue", "variable_fifo_name")

_DIRECTIONS = {
    "inbound": Direction.INBOUND, "in": Direction.INBOUND,
    "outbound": Direction.OUTBOUND, "out": Direction.OUTBOUND,
    "local": Direction.INTERNAL, "internal": Direction.INTERNAL,
}


def _us(value: str | None) -> int:
    """A FreeSWITCH microsecond timestamp; 0 when absent or malformed."""
    if not value:
        return 0
    try:
        return int(value)
    except ValueError:
        return 0


def _time(us: int, tz: tzinfo) -> datetime | None:
    return datetime.fromtimestamp(us / 1_000_000, tz) if us > 0 else None


class _Leg:
    __slots__ = ("uuid", "seq", "created_us", "direction", "context", "dest", "cid_num", "cid_name",
                 "parent", "answered_us", "bridged_us", "bridged_to", "final", "vm_box")

    def __init__(self, uuid: str, seq: int, event: dict[str, str]) -> None:
        self.uuid = uuid
        self.seq = seq
        # The first event's caller profile is the one the call arrived with: later ones are
        # rewritten by transfers (an IVR's transfer changes Caller-Destination-Number).
        self.created_us = _us(event.get("Caller-Channel-Created-Time")) or _us(event.get("Event-Date-Timestamp"))
        self.direction = event.get("Call-Direction", "")
        self.context = event.get("Caller-Context", "")
        self.dest = event.get("Caller-Destination-Number", "")
        self.cid_num = event.get("Caller-Caller-ID-Number", "")
        self.cid_name = event.get("Caller-Caller-ID-Name", "")
        self.parent = ""
        self.answered_us = 0
        self.bridged_us = 0
        self.bridged_to = ""
        self.final: dict[str, str] | None = None  # its CHANNEL_HANGUP_COMPLETE
        self.vm_box = ""


class _Call:
    __slots__ = ("key", "uuids", "legs", "open", "started", "core", "partial")

    def __init__(self, key: int, now: float, core: str) -> None:
        self.key = key
        self.uuids: set[str] = set()  # every Unique-ID seen or named for this call
        self.legs: dict[str, _Leg] = {}
        self.open = 0  # legs seen whose CHANNEL_HANGUP_COMPLETE has not arrived
        self.started = now
        self.core = core
        # Some of its events may be missing: we joined mid-call or the connection dropped.
        self.partial = False


@dataclass(frozen=True, slots=True)
class Evicted:
    """A call dropped without a record (it never ended, or its FreeSWITCH restarted)."""

    uuids: tuple[str, ...]
    legs: int
    reason: str


class EslTracker:
    """Synchronous and protocol-free: ``feed()`` takes one decoded event dict (plain or json
    decoding gives the same dict) and returns the calls it finished. Used by the live source
    and by trace replay alike.

    ``now`` is only used for bounding state (unit: seconds, any monotonic-ish clock; replay
    passes the recording's timestamps)."""

    # Ended calls' Unique-IDs are remembered this long so late events (CHANNEL_DESTROY, a
    # straggling leg) are recognised and ignored instead of starting a phantom call.
    DONE_RETENTION_SECONDS = 120.0
    DONE_MAX = 200_000
    SWEEP_INTERVAL_SECONDS = 1.0
    # How long a call with a gap (reconnect, joined mid-call) waits for legs it never saw.
    PARTIAL_GRACE_SECONDS = 5.0

    def __init__(self, pbx: PbxConfig, settings: EslSettings | None = None, *, max_calls: int = 20_000) -> None:
        if settings is None:
            settings = pbx.settings if isinstance(pbx.settings, EslSettings) else EslSettings()
        self.pbx = pbx
        self.settings = settings
        self.tz: tzinfo = pbx.timezone or UTC
        self._direction_var = f"variable_{settings.direction_variable}" if settings.direction_variable else ""
        self._agent_var = f"variable_{settings.agent_variable}" if settings.agent_variable else ""
        self._department_var = f"variable_{pbx.department_variable}" if pbx.department_variable else ""
        self._wanted_vars = tuple((name, f"variable_{name}") for name in pbx.variables)
        self._timeout = pbx.call_timeout_seconds
        self._max_calls = max_calls
        self._by_uuid: dict[str, _Call] = {}
        self._calls: dict[int, _Call] = {}  # insertion order = age, so eviction pops the front
        self._done: dict[str, float] = {}  # uuid -> forget-after (insertion ordered)
        self._waiting: dict[int, tuple[float, _Call]] = {}  # partial calls waiting for lost legs
        self._seq = 0
        self._next_key = 0
        self._next_sweep = 0.0
        self.stats = {"events": 0, "calls": 0, "evicted": 0, "malformed": 0, "late": 0}

    # ------------------------------------------------------------------ public API

    def feed(self, event: dict[str, str], now: float) -> list[CallRecord]:
        """Process one event; returns the calls it finished (usually none, at most a few)."""
        swept = self.tick(now) if now >= self._next_sweep else []
        name = event.get("Event-Name")
        try:
            if name in CHANNEL_EVENTS:
                self.stats["events"] += 1
                done = self._channel_event(name, event, now)
                return swept + done if swept else done
            if name == "CUSTOM" and event.get("Event-Subclass") == "vm::maintenance":
                self.stats["events"] += 1
                self._voicemail_event(event)
        except Exception:  # one odd event must not take the tracker (and the source) down
            self.stats["malformed"] += 1
            log.exception("ESL tracker: event %s for %s skipped", name, event.get("Unique-ID", "?"),
                          extra=fields(pbx=self.pbx.name, call_id=event.get("Unique-ID")))
        return swept

    def tick(self, now: float) -> list[CallRecord]:
        """Housekeeping, also called by the source when no events come: forget old ids,
        evict calls past the timeout, settle calls that waited for lost legs."""
        self._sweep(now)
        out: list[CallRecord] = []
        for deadline, call in list(self._waiting.values()):
            if deadline <= now:
                out += self._settle(call, now)
        return out

    def active_calls(self) -> int:
        return len(self._calls)

    def expire(self, now: float) -> list[Evicted]:
        """Drop calls older than the configured call timeout (warning logged for each)."""
        out: list[Evicted] = []
        limit = now - self._timeout
        while self._calls:
            call = next(iter(self._calls.values()))
            if call.started > limit:
                break
            out.append(self._evict(call, f"no hangup within {self._timeout:g}s", now))
        return out

    def drop_core(self, core_uuid: str, now: float) -> list[Evicted]:
        """FreeSWITCH restarted (new Core-UUID): the old instance's calls can never end."""
        stale = [c for c in self._calls.values() if c.core and c.core != core_uuid]
        return [self._evict(c, "FreeSWITCH restarted while the call was up", now) for c in stale]

    def connection_gap(self) -> None:
        """The source reconnected: events of calls in progress may have been lost."""
        for call in self._calls.values():
            call.partial = True

    def unfinished(self, now: float) -> list[Evicted]:
        """Drop and report every call still open (end of a replayed trace)."""
        return [self._evict(c, "trace ended before the call did", now) for c in list(self._calls.values())]

    # ------------------------------------------------------------------ events

    def _channel_event(self, name: str, ev: dict[str, str], now: float) -> list[CallRecord]:
        uuid = ev.get("Unique-ID")
        if not uuid:
            self.stats["malformed"] += 1
            log.warning("ESL tracker: %s without Unique-ID skipped", name, extra=fields(pbx=self.pbx.name))
            return []
        if name == "CHANNEL_UUID":
            old = ev.get("Old-Unique-ID", "")
            if old and old != uuid:
                self._rename(old, uuid)
        if uuid in self._done:
            self.stats["late"] += 1
            return []  # the call this channel belonged to is already reported
        links: list[str] = []
        parent = ""
        link_headers = _EVENT_LINKS.get(name, _LINK_HEADERS)
        for header in link_headers:
            other = ev.get(header)
            if other and other != uuid:
                links.append(other)
                if not parent and header in _PARENT_HEADERS:
                    parent = other
        if link_headers is _LINK_HEADERS:
            legs_var = ev.get("variable_originated_legs")
            if legs_var:
                links.extend(u for u in _originated_legs(legs_var) if u != uuid)
        call = self._by_uuid.get(uuid)
        if call is None:
            # A B-leg names its A-leg on its first event: join that call rather than start
            # one (which would also count against max_calls for nothing).
            for other in links:
                call = self._by_uuid.get(other)
                if call is not None:
                    break
            if call is None:
                call = self._new_call(now, ev.get("Core-UUID", ""))
            self._attach(call, uuid)
        leg = call.legs.get(uuid)
        if leg is None:
            self._seq += 1
            leg = _Leg(uuid, self._seq, ev)
            call.legs[uuid] = leg
            call.open += 1
            if name not in _FIRST_EVENTS:
                call.partial = True
        for other in links:
            call = self._link(call, other)
        if parent and not leg.parent:
            leg.parent = parent
        if name == "CHANNEL_ANSWER":
            leg.answered_us = leg.answered_us or _us(ev.get("Event-Date-Timestamp"))
        elif name == "CHANNEL_BRIDGE":
            when = _us(ev.get("Event-Date-Timestamp"))
            other_uuid = ev.get("Other-Leg-Unique-ID", "")
            leg.bridged_us = leg.bridged_us or when
            leg.bridged_to = leg.bridged_to or other_uuid
            other_leg = call.legs.get(other_uuid)
            if other_leg is not None:
                other_leg.bridged_us = other_leg.bridged_us or when
                other_leg.bridged_to = other_leg.bridged_to or uuid
        elif name == "CHANNEL_HANGUP_COMPLETE":
            if leg.final is None:
                leg.final = ev
                call.open -= 1
            else:
                leg.final = ev  # a repeat (replayed stream): keep the newest, count once
            if call.open == 0 and len(call.legs) == len(call.uuids):
                return self._finish(call, now)
            if call.open == 0 or (call.partial and self._call_leg(list(call.legs.values())).final is not None):
                # Some legs were never seen (or never seen to end): they ended while we were
                # not listening, or (joined mid-call) are still up and will show. Only such
                # calls wait, so normal calls keep their latency.
                self._waiting.setdefault(call.key, (now + self.PARTIAL_GRACE_SECONDS, call))
        return []

    def _voicemail_event(self, ev: dict[str, str]) -> None:
        if ev.get("VM-Action") != "leave-message":
            return
        uuid = ev.get("VM-UUID") or ev.get("Unique-ID", "")
        call = self._by_uuid.get(uuid)
        if call is None:
            return
        leg = call.legs.get(uuid)
        if leg is None:
            return
        user, domain = ev.get("VM-User", ""), ev.get("VM-Domain", "")
        leg.vm_box = f"{user}@{domain}" if user and domain else user or "voicemail"

    # ------------------------------------------------------------------ grouping

    def _new_call(self, now: float, core: str) -> _Call:
        if len(self._calls) >= self._max_calls:
            oldest = next(iter(self._calls.values()))
            self._evict(oldest, f"more than {self._max_calls} calls in progress", now)
        self._next_key += 1
        call = _Call(self._next_key, now, core)
        self._calls[call.key] = call
        return call

    def _attach(self, call: _Call, uuid: str) -> None:
        call.uuids.add(uuid)
        self._by_uuid[uuid] = call

    def _link(self, call: _Call, other: str) -> _Call:
        """Put `other` in `call`; if it already belongs to another call, merge the two."""
        if other in self._done:
            return call
        found = self._by_uuid.get(other)
        if found is None:
            self._attach(call, other)
            return call
        if found is call:
            return call
        big, small = (call, found) if len(call.uuids) >= len(found.uuids) else (found, call)
        for uuid in small.uuids:
            self._by_uuid[uuid] = big
        big.uuids |= small.uuids
        big.legs.update(small.legs)
        big.open += small.open
        big.started = min(big.started, small.started)
        big.partial = big.partial or small.partial
        self._waiting.pop(small.key, None)
        del self._calls[small.key]
        return big

    def _rename(self, old: str, new: str) -> None:
        call = self._by_uuid.pop(old, None)
        if call is None:
            return
        call.uuids.discard(old)
        leg = call.legs.pop(old, None)
        if leg is not None:
            leg.uuid = new
            call.legs[new] = leg
        existing = self._by_uuid.get(new)
        if existing is None:
            self._attach(call, new)
        elif existing is not call:
            self._link(call, new)

    # ------------------------------------------------------------------ ending

    def _settle(self, call: _Call, now: float) -> list[CallRecord]:
        """A call that lost legs in a gap: the call leg's own HANGUP_COMPLETE carries what
        classification needs, but only if we have the call leg itself."""
        main = self._call_leg(list(call.legs.values()))
        if main.final is None and call.open:
            self._waiting.pop(call.key, None)  # the call leg showed up after all; its end decides
            return []
        if main.final is None or (main.parent and main.parent not in call.legs):
            self._evict(call, "its call leg ended while aftercalld was not connected", now)
            return []
        return self._finish(call, now)

    def _forget(self, call: _Call, now: float) -> None:
        self._waiting.pop(call.key, None)
        self._calls.pop(call.key, None)
        until = now + self.DONE_RETENTION_SECONDS
        for uuid in call.uuids:
            self._by_uuid.pop(uuid, None)
            self._done[uuid] = until
        while len(self._done) > self.DONE_MAX:
            del self._done[next(iter(self._done))]

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + self.SWEEP_INTERVAL_SECONDS
        done = self._done
        while done:
            uuid = next(iter(done))
            if done[uuid] > now:
                break
            del done[uuid]
        self.expire(now)

    def _evict(self, call: _Call, reason: str, now: float) -> Evicted:
        self.stats["evicted"] += 1
        main = self._call_leg(list(call.legs.values())) if call.legs else None
        ident = main.uuid if main else next(iter(call.uuids), "?")
        log.warning("ESL tracker: call %s dropped without a record: %s (%d channel(s) seen, %d still up)",
                    ident, reason, len(call.legs), call.open,
                    extra=fields(pbx=self.pbx.name, call_id=ident))
        self._forget(call, now)
        return Evicted(tuple(sorted(call.uuids)), len(call.legs), reason)

    def _finish(self, call: _Call, now: float) -> list[CallRecord]:
        self._forget(call, now)
        try:
            record = self._build(call)
        except Exception:
            self.stats["malformed"] += 1
            log.exception("ESL tracker: could not build a record for call with channels %s",
                          ", ".join(sorted(call.legs)), extra=fields(pbx=self.pbx.name))
            return []
        if record is None:
            return []
        self.stats["calls"] += 1
        log.info("call %s finished: %s %s, caller %s, dialled %s, agent %s, talk %.1fs, cause %s",
                 record.call_id, record.direction.value, record.status.value, record.caller_number or "-",
                 record.dialled_number or "-", record.agent_extension or "-", record.talk_seconds,
                 record.hangup_cause or "-",
                 extra=fields(pbx=record.pbx, call_id=record.call_id, status=record.status.value))
        return [record]

    # ------------------------------------------------------------------ building the record

    def _call_leg(self, legs: list[_Leg]) -> _Leg:
        legs = sorted(legs, key=lambda leg: leg.seq)
        if self._direction_var:
            for leg in legs:
                if leg.final is not None and leg.final.get(self._direction_var):
                    return leg
        for leg in legs:
            if leg.direction == "inbound" and not leg.parent:
                return leg
        return legs[0]

    def _direction(self, main: _Leg, fin: dict[str, str]) -> Direction:
        value = fin.get(self._direction_var, "").strip().lower() if self._direction_var else ""
        direction = _DIRECTIONS.get(value)
        if direction is not None:
            return direction
        # No dialplan hint: the same rules as the AMI tracker. Carrier calls land in an
        # inbound context ("public" in FreeSWITCH's stock config); a call placed by an
        # extension is outbound unless it dialled another extension.
        settings = self.settings
        if main.context in settings.inbound_contexts:
            return Direction.INBOUND
        if settings.is_extension(main.cid_num):
            return Direction.INTERNAL if settings.is_extension(main.dest) else Direction.OUTBOUND
        if main.direction == "outbound":
            return Direction.OUTBOUND  # an A-leg FreeSWITCH itself originated (click-to-call)
        return Direction.INBOUND

    def _var(self, legs: Iterable[_Leg], header: str) -> str:
        for leg in legs:
            if leg.final is not None:
                value = leg.final.get(header)
                if value:
                    return value
        return ""

    def _build(self, call: _Call) -> CallRecord | None:
        legs = sorted(call.legs.values(), key=lambda leg: leg.seq)
        main = self._call_leg(legs)
        fin = main.final or {}
        others = [leg for leg in legs if leg is not main]
        by_main_first = [main, *others]

        direction = self._direction(main, fin)
        # Legs FreeSWITCH dialled for the call leg (agents, carrier) and the one it talked to.
        children = [leg for leg in others if leg.parent == main.uuid]
        bridged_uuid = (fin.get("variable_last_bridge_to") or fin.get("variable_bridge_uuid")
                        or main.bridged_to)
        bridged = call.legs.get(bridged_uuid) if bridged_uuid else None
        if bridged is not None and bridged not in children:
            children.append(bridged)

        bridge_us = (_us(fin.get("variable_bridge_uepoch")) or _us(fin.get("Caller-Channel-Bridged-Time"))
                     or main.bridged_us)
        # The call leg and what it dialled; the loopback twins a simulation adds are skipped.
        vm_boxes = {leg.uuid: _voicemail_box(leg) for leg in (main, *children)}
        vm_box = next((box for box in vm_boxes.values() if box), "") or \
            next((leg.vm_box for leg in others if leg.vm_box), "")
        # Connected means a person: a bridge to a leg that ran voicemail is not one.
        bridged_person = (bridge_us > 0 or bridged is not None) and not (bridged and vm_boxes.get(bridged.uuid))
        if bridged_person:
            status = CallStatus.CONNECTED
        elif vm_box:
            status = CallStatus.VOICEMAIL
        else:
            status = CallStatus.MISSED

        start_us = main.created_us or _us(fin.get("variable_start_uepoch"))
        main_end = _us(fin.get("Caller-Channel-Hangup-Time")) or _us(fin.get("variable_end_uepoch")) \
            or _us(fin.get("Event-Date-Timestamp"))
        end_us = main_end
        for leg in children:
            f = leg.final or {}
            end_us = max(end_us, _us(f.get("Caller-Channel-Hangup-Time")) or _us(f.get("variable_end_uepoch")))

        answer_time = None
        talk = 0.0
        if status is CallStatus.CONNECTED and bridge_us > 0:
            answer_time = _time(bridge_us, self.tz)
            # Whole billsec of the agent/carrier leg, as FreeSWITCH's CDR (and the AMI
            # tracker's Cdr billsec) count it, so one call gives one number on either PBX.
            billsec = (bridged.final or {}).get("variable_billsec", "") if bridged is not None else ""
            if billsec.isdigit():
                talk = float(billsec)
            else:
                talk_end = main_end
                if bridged is not None and bridged.final is not None:
                    b_end = _us(bridged.final.get("Caller-Channel-Hangup-Time"))
                    if b_end:
                        talk_end = min(talk_end, b_end) if talk_end else b_end
                talk = float(max(0, talk_end - bridge_us) // 1_000_000)
        # Ringing ends when a person answers; otherwise when the last dialled phone stopped
        # ringing, or when FreeSWITCH itself answered (IVR) if it never dialled anyone.
        if status is CallStatus.CONNECTED and bridge_us:
            ring_end = bridge_us
        else:
            child_ends = [_us((leg.final or {}).get("Caller-Channel-Hangup-Time")) for leg in children]
            child_ends = [t for t in child_ends if t]
            main_answer = _us(fin.get("variable_answer_uepoch")) or _us(fin.get("Caller-Channel-Answered-Time")) \
                or main.answered_us
            ring_end = max(child_ends) if child_ends else (main_answer or main_end)
        ring = max(0.0, (ring_end - start_us) / 1_000_000) if start_us and ring_end else 0.0

        if direction is Direction.OUTBOUND:
            agent_ext, agent_name = main.cid_num, main.cid_name
        else:
            # Whoever the call leg was bridged with, else the first phone it rang.
            agent_leg = bridged if bridged is not None else (children[0] if children else None)
            agent_ext, agent_name = "", ""
            if agent_leg is not None:
                agent_ext = agent_leg.dest.split("@", 1)[0]
                if fin.get("Caller-Callee-ID-Number") == agent_ext:
                    callee = fin.get("Caller-Callee-ID-Name", "")
                else:
                    callee = (agent_leg.final or {}).get("Caller-Callee-ID-Name", "")
                if callee not in _PLACEHOLDER_NAMES and callee != agent_ext:
                    agent_name = callee
        if self._agent_var:
            agent_ext = self._var(by_main_first, self._agent_var).split("@", 1)[0] or agent_ext

        department = self._var(by_main_first, self._department_var) if self._department_var else ""
        queue = ""
        for header in _QUEUE_VARIABLES:  # set on the caller's channel, i.e. the call leg
            queue = fin.get(header, "")
            if queue:
                break
        variables = {}
        for name, header in self._wanted_vars:
            value = self._var(by_main_first, header)
            if value:
                variables[name] = value

        return CallRecord(
            call_id=main.uuid,
            pbx=self.pbx.name,
            direction=direction,
            status=status,
            caller_number=main.cid_num or fin.get("Caller-Caller-ID-Number", ""),
            caller_name=main.cid_name or fin.get("Caller-Caller-ID-Name", ""),
            dialled_number=main.dest or fin.get("Caller-Destination-Number", ""),
            agent_extension=agent_ext,
            agent_name=agent_name,
            department=department,
            queue=queue,
            start_time=_time(start_us, self.tz),
            answer_time=answer_time,
            end_time=_time(end_us, self.tz),
            ring_seconds=round(ring, 3),
            talk_seconds=talk,
            hangup_cause=fin.get("Hangup-Cause") or fin.get("variable_hangup_cause", ""),
            voicemail_box=vm_box,
            variables=variables,
        )


def _voicemail_box(leg: _Leg) -> str:
    """The mailbox if this leg reached mod_voicemail to leave a message, else "".

    Reaching voicemail counts, as in the AMI tracker, not only a saved message: the caller
    was not served either way. Evidence: the vm::maintenance leave-message event, the
    variables mod_voicemail sets when it saves, or the voicemail app still running at
    hangup (``last_app``; ``voicemail check ...`` is someone reading their mailbox)."""
    if leg.vm_box:
        return leg.vm_box
    fin = leg.final
    if fin is None:
        return ""
    account = fin.get("variable_voicemail_account", "")
    domain = fin.get("variable_voicemail_domain", "")
    if fin.get("variable_voicemail_message_len") or account:
        return f"{account}@{domain}" if account and domain else account or "voicemail"
    if fin.get("variable_last_app") == "voicemail":
        args = fin.get("variable_last_arg", "").split()
        if args and args[0] == "check":
            return ""
        # voicemail <profile> <domain> <id>
        return f"{args[2]}@{args[1]}" if len(args) >= 3 else "voicemail"
    return ""


def _originated_legs(value: str) -> list[str]:
    """``variable_originated_legs``: ``uuid;name;number`` items, as an ``ARRAY::a|:b`` when
    the call leg dialled more than once."""
    if value.startswith("ARRAY::"):
        items = value[7:].split("|:")
    else:
        items = [value]
    return [item.split(";", 1)[0] for item in items if item]

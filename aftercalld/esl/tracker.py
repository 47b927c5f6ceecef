"""FreeSWITCH call tracker: groups channel events into calls and classifies each finished call.

A *call* is the set of channels (Unique-IDs) that FreeSWITCH links together: a B-leg names
its A-leg in ``variable_originator`` / ``variable_originating_leg_uuid``, bridged legs name
each other in ``Other-Leg-Unique-ID`` / ``variable_last_bridge_to`` / ``variable_bridge_uuid``,
``variable_originated_legs`` lists what an A-leg dialled, the two halves of a loopback channel
name each other in ``variable_other_loopback_leg_uuid``, and mod_callcenter names the
member's channel in ``variable_cc_member_session_uuid``. The call is over when every linked
channel has sent CHANNEL_HANGUP_COMPLETE; the record is built then, with no grace period
(that event carries every variable we need, and nothing later changes the outcome).

The call leg, and how its legs become facts, is in `legs.py`; what the call *was* is
decided in `aftercalld.classify`, the same rules as for Asterisk.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, tzinfo

from ..classify import build_record
from ..evictions import OverflowLog
from ..logutil import fields
from ..model import CallRecord
from ..pbxconfig import PbxConfig
from . import reconcile
from .config import EslSettings
from .legs import FactsReader, Leg, call_leg, on_bridge_event, originated_legs, us

log = logging.getLogger("aftercalld.esl.tracker")

# Events the tracker reads; everything else is dropped after one lookup (its name). Every
# link it needs is on CREATE/ORIGINATE (B-leg to A-leg), BRIDGE and HANGUP_COMPLETE.
CHANNEL_EVENTS = frozenset({
    "CHANNEL_CREATE", "CHANNEL_UUID", "CHANNEL_ORIGINATE", "CHANNEL_ANSWER", "CHANNEL_BRIDGE",
    "CHANNEL_UNBRIDGE", "CHANNEL_HANGUP_COMPLETE",
})
# What a live connection subscribes to (the README lists the same). CHANNEL_UUID is needed
# because originate renames a channel; HEARTBEAT lets the source notice a dead connection.
SUBSCRIBE_EVENTS = (
    "CHANNEL_CREATE CHANNEL_UUID CHANNEL_ORIGINATE CHANNEL_ANSWER CHANNEL_BRIDGE CHANNEL_UNBRIDGE "
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
    "CHANNEL_UNBRIDGE": ("Other-Leg-Unique-ID",),
    "CHANNEL_ANSWER": (),  # what it carries was on the channel's CREATE already
}
_PARENT_HEADERS = ("variable_originator", "variable_originating_leg_uuid")
# A channel's first event when we see it from its start (CHANNEL_UUID: originate renames it).
_FIRST_EVENTS = frozenset({"CHANNEL_CREATE", "CHANNEL_UUID"})
_STATS = ("events", "calls", "evicted", "overflow", "malformed", "late", "adopted", "ended_unseen", "interrupted")
class _Call:
    __slots__ = ("key", "uuids", "legs", "open", "started", "core", "partial")

    def __init__(self, key: int, now: float, core: str) -> None:
        self.key = key
        self.uuids: set[str] = set()  # every Unique-ID seen or named for this call
        self.legs: dict[str, Leg] = {}
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
        self._reader = FactsReader(
            pbx.name, self._direction_var,
            agent_var=f"variable_{settings.agent_variable}" if settings.agent_variable else "",
            department_var=f"variable_{pbx.department_variable}" if pbx.department_variable else "",
            wanted_vars=tuple((name, f"variable_{name}") for name in pbx.variables))
        self._timeout = pbx.call_timeout_seconds
        self._max_calls = max_calls
        self._overflow = OverflowLog(log, pbx.name, max_calls)
        self._by_uuid: dict[str, _Call] = {}
        self._calls: dict[int, _Call] = {}  # insertion order = age, so eviction pops the front
        self._done: dict[str, float] = {}  # uuid -> forget-after (insertion ordered)
        self._waiting: dict[int, tuple[float, _Call]] = {}  # partial calls waiting for lost legs
        self._seq = 0
        self._next_key = 0
        self._next_sweep = 0.0
        self.stats = dict.fromkeys(_STATS, 0)

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

    def drop_core(self, core_uuid: str, now: float, now_us: int) -> list[CallRecord]:
        """FreeSWITCH restarted (new Core-UUID): its calls were cut, recorded as interrupted."""
        stale = [c for c in self._calls.values() if c.core and c.core != core_uuid]
        self.stats["interrupted"] += len(stale)
        return [r for c in stale for r in reconcile.interrupted(self, c, now, now_us)]

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
                links.extend(u for u in originated_legs(legs_var) if u != uuid)
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
            leg = Leg(uuid, self._seq, ev)
            call.legs[uuid] = leg
            call.open += 1
            if name not in _FIRST_EVENTS:
                call.partial = True
        for other in links:
            call = self._link(call, other)
        if parent and not leg.parent:
            leg.parent = parent
        if name == "CHANNEL_ANSWER":
            leg.answered_us = leg.answered_us or us(ev.get("Event-Date-Timestamp"))
        elif name == "CHANNEL_BRIDGE" or name == "CHANNEL_UNBRIDGE":
            on_bridge_event(call.legs, leg, name, ev)
        elif name == "CHANNEL_HANGUP_COMPLETE":
            if leg.final is None:
                leg.final = ev
                call.open -= 1
            else:
                leg.final = ev  # a repeat (replayed stream): keep the newest, count once
            if call.open == 0 and len(call.legs) == len(call.uuids):
                return self._finish(call, now)
            if call.open == 0 or (call.partial and call_leg(call.legs.values(), self._direction_var).final is not None):
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
            self.stats["overflow"] += 1
            self._evict(oldest, f"more than {self._max_calls} calls in progress", now, quiet=True)
            self._overflow.dropped(now)
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
        main = call_leg(call.legs.values(), self._direction_var)
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
        self._overflow.flush(now)

    def _evict(self, call: _Call, reason: str, now: float, quiet: bool = False) -> Evicted:
        """Drop a call without a record; logged here unless the caller summarises (quiet)."""
        self.stats["evicted"] += 1
        main = call_leg(call.legs.values(), self._direction_var) if call.legs else None
        ident = main.uuid if main else next(iter(call.uuids), "?")
        if not quiet:
            log.warning("ESL tracker: call %s dropped without a record: %s (%d channel(s) seen, %d still up)",
                        ident, reason, len(call.legs), call.open,
                        extra=fields(pbx=self.pbx.name, call_id=ident))
        self._forget(call, now)
        return Evicted(tuple(sorted(call.uuids)), len(call.legs), reason)

    def _finish(self, call: _Call, now: float) -> list[CallRecord]:
        self._forget(call, now)
        try:
            record = build_record(self._reader.facts(call.legs), self.settings, self.tz)
        except Exception:
            self.stats["malformed"] += 1
            log.exception("ESL tracker: could not build a record for call with channels %s",
                          ", ".join(sorted(call.legs)), extra=fields(pbx=self.pbx.name))
            return []
        self.stats["calls"] += 1
        log.info("call %s finished: %s %s, caller %s, dialled %s, agent %s, talk %.1fs, cause %s",
                 record.call_id, record.direction.value, record.status.value, record.caller_number or "-",
                 record.dialled_number or "-", record.agent_extension or "-", record.talk_seconds,
                 record.hangup_cause or "-",
                 extra=fields(pbx=record.pbx, call_id=record.call_id, status=record.status.value))
        return [record]

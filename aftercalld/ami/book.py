"""Which call and channel an AMI event belongs to: the AMI tracker's bookkeeping.

Calls are keyed by ``Linkedid`` and channels by ``Uniqueid``; a channel moves to another
call when Asterisk relinks it (pickup, transfer). The book also bounds what it holds: calls
whose end never came are dropped after the call timeout, at most ``max_calls`` are open at
once (the oldest goes first, logged as a rate-limited summary), and the ids of finished
calls are remembered (bounded) so their late events do not open a phantom call.
"""
from __future__ import annotations

import logging
from collections import OrderedDict

from ..evictions import OverflowLog
from ..logutil import fields
from .calls import Call, Chan

log = logging.getLogger("aftercalld.ami.tracker")


class CallBook:
    def __init__(self, pbx: str, *, timeout: float, max_calls: int, remember_finished: int,
                 stats: dict[str, int]) -> None:
        self.pbx = pbx
        self.calls: dict[str, Call] = {}  # insertion order = age: eviction pops the front
        self.chans: dict[str, Chan] = {}
        # Bounded FIFO set; OrderedDict pops its oldest entry in O(1), where a plain dict
        # would rescan the deleted slots at its front on every eviction.
        self.finished: OrderedDict[str, None] = OrderedDict()
        self.timeout = timeout
        self.remember_finished = remember_finished
        self.stats = stats
        self.overflow = OverflowLog(log, pbx, max_calls)
        self.max_calls = max_calls
        self.arrival = 0.0  # our clock at the event being fed

    # ------------------------------------------------------------------ calls

    def new_call(self, lid: str, ts: float, partial: bool) -> Call:
        if len(self.calls) >= self.max_calls:
            self.forget(next(iter(self.calls.values())))
            self.stats["evicted"] += 1
            self.stats["overflow"] += 1
            self.overflow.dropped(self.arrival)
        call = Call(lid, ts, partial=partial, seen=self.arrival)
        self.calls[lid] = call
        return call

    def forget(self, call: Call) -> None:
        self.calls.pop(call.linkedid, None)
        chans = self.chans
        for uid, chan in call.channels.items():
            if chans.get(uid) is chan:
                del chans[uid]
        finished = self.finished
        finished[call.linkedid] = None
        if len(finished) > self.remember_finished:
            finished.popitem(last=False)
        call.release()

    def expire(self, now: float) -> int:
        """Drop calls that started more than the call timeout ago (their end never arrived).
        Counted on our clock, not the PBX's: a PBX whose clock is off, or a recorded trace
        replayed later, must not age calls. Calls are kept in arrival order, so this only
        looks at the oldest."""
        self.overflow.flush(now)
        cutoff = now - self.timeout
        evicted = 0
        while self.calls:
            lid, call = next(iter(self.calls.items()))
            if call.seen > cutoff:
                break
            live = call.live
            self.forget(call)
            evicted += 1
            self.stats["evicted"] += 1
            log.warning("AMI call %s dropped: no end seen within %.0f s (channels still up: %d)",
                        lid, self.timeout, live, extra=fields(call_id=lid, pbx=self.pbx))
        return evicted

    def drop_all(self, reason: str) -> int:
        calls = list(self.calls.values())
        for call in calls:
            self.forget(call)
            self.stats["dropped_calls"] += 1
            log.warning("AMI call %s dropped: %s", call.linkedid, reason,
                        extra=fields(call_id=call.linkedid, pbx=self.pbx))
        return len(calls)

    def drop_unclassified(self, call: Call) -> None:
        """A call that ended but was not seen whole: not guessed at (a wrong "sorry we missed
        you" is worse than none)."""
        self.forget(call)
        self.stats["dropped_calls"] += 1
        self.stats["unclassified"] += 1
        # Seen after a crash too: a call whose end reaches the new process before the answer
        # to CoreShowChannels is in neither (issue 12's bench traced each such call).
        log.warning("AMI call %s ended but is not classified: it began before the AMI connection and "
                    "Asterisk's list of live channels did not have it (refused, or the call ended before the "
                    "list came); the CDR backfill records it when [[pbx]] cdr is set", call.linkedid,
                    extra=fields(call_id=call.linkedid, pbx=self.pbx))

    # ------------------------------------------------------------------ channels

    def chan(self, ev: dict[str, str], ts: float) -> Chan | None:
        """The channel an event is about, creating the call/channel for events of a call
        we joined mid-way. None for events of finished calls or without ids."""
        uid = ev.get("Uniqueid")
        if not uid:
            return None
        lid = ev.get("Linkedid")
        chan = self.chans.get(uid)
        if chan is not None:
            if lid and lid != chan.call.linkedid:
                return self.migrate(chan, lid, ts)
            return chan
        if not lid or lid in self.finished:
            return None
        call = self.calls.get(lid) or self.new_call(lid, ts, partial=True)
        return self.add_chan(call, uid, ev.get("Channel", ""))

    def open_chan(self, uid: str, lid: str, name: str, ts: float) -> Chan | None:
        """A Newchannel: we saw its call begin only if its first channel is the Linkedid one."""
        chan = self.chans.get(uid)
        if chan is None:
            call = self.calls.get(lid) or self.new_call(lid, ts, partial=(uid != lid))
            return self.add_chan(call, uid, name)
        if chan.call.linkedid != lid:
            return self.migrate(chan, lid, ts)
        return chan

    def add_chan(self, call: Call, uid: str, name: str) -> Chan:
        chan = Chan(uid, name, call)
        call.channels[uid] = chan
        if name:
            call.by_name[name] = chan
        call.live += 1
        self.chans[uid] = chan
        return chan

    def migrate(self, chan: Chan, lid: str, ts: float) -> Chan | None:
        """Bridging two calls moves a channel to the older Linkedid (pickup, transfer)."""
        if lid in self.finished:
            return None
        old = chan.call
        old.leave_all_bridges(chan.uid, ts)
        del old.channels[chan.uid]
        old.by_name.pop(chan.name, None)
        if not chan.hung:
            old.live -= 1
        if not old.channels:
            # Nothing of the old call is left: it was only a step of this one.
            self.calls.pop(old.linkedid, None)
        new = self.calls.get(lid) or self.new_call(lid, ts, partial=True)
        chan.call = new
        new.channels[chan.uid] = chan
        if chan.name:
            new.by_name[chan.name] = chan
        if not chan.hung:
            new.live += 1
        return chan

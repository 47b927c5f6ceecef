"""AMI call tracker: groups events by ``Linkedid`` and turns each finished call into one
`CallRecord`.

Synchronous and allocation-light on purpose: it runs inline in the socket reader (live) and
in the trace replayer, on every event, and most events (VarSet, Newexten, CEL, device state)
are looked at for a few dictionary probes and dropped.

How a call is read (Asterisk semantics, not the test simulation's):

* **Call** = all channels sharing a ``Linkedid`` (the Uniqueid of the oldest channel).
  It is over when every channel seen in it has hung up; the record is emitted on that
  last ``Hangup`` with no grace period. ``Cdr`` and ``CEL LINKEDID_END`` arrive around it in
  no fixed order; a ``Cdr`` that arrives before it refines talk time, later ones are dropped.
* **Call leg** (the one classified) = the ``Linkedid`` channel: the trunk channel of an
  inbound SIP call, the agent's phone of an outbound one. When that channel is the ``;1``
  half of a Local channel (a call started by AMI ``Originate`` of ``Local/...``), the
  dialplan runs on the ``;2`` half, so that half is the call leg.
* **connected**: the call leg was in a bridge together with another channel (a person:
  not a channel that ran VoiceMail). **voicemail**: no such bridge, and the VoiceMail
  application ran on a channel of the call without failing (``VMSTATUS`` not ``FAILED``).
  Reaching voicemail is enough -- whether a message was left does not change the class (the
  caller was not served either way); ``MessageWaiting`` only confirms the mailbox.
  **missed**: everything else (no answer, busy, abandoned while ringing, queue or IVR
  abandon, congestion, unavailable). Hangup cause and CDR disposition are *not* used to
  classify: an IVR or voicemail answer makes the CDR say ANSWERED.
* Calls we did not see start (joined mid-call) or that were live while the AMI link was
  down (events lost) are not classified: a wrong "sorry we missed you" is worse than none.
  They are logged with a warning when they end.
"""
from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo

from ..logutil import fields
from ..model import CallRecord, CallStatus, Direction
from ..pbxconfig import PbxConfig
from .causes import cause_name
from .config import AmiSettings

log = logging.getLogger("aftercalld.ami.tracker")

_UNKNOWN = ("", "<unknown>", "<Unknown>")


def _clean(value: str | None) -> str:
    return "" if value is None or value in _UNKNOWN else value


def _ext_from_dialstring(dialstring: str) -> str:
    """``201@agents`` → 201, ``PJSIP/201`` → 201, ``trunk/sip:0123@host`` → 0123."""
    ds = dialstring.split("&", 1)[0].split(",", 1)[0]
    if "/" in ds:
        ds = ds.rsplit("/", 1)[1]
    if ds.startswith("sip:"):
        ds = ds[4:]
    return ds.split("@", 1)[0]


def _ext_from_channel(name: str) -> str:
    """``PJSIP/201-0000002a`` → 201, ``Local/201@agents-00000001;1`` → 201."""
    if "/" not in name:
        return ""
    res = name.split("/", 1)[1]
    if "@" in res:
        return res.split("@", 1)[0]
    return res.rsplit("-", 1)[0]


class _Chan:
    __slots__ = ("uid", "name", "call", "hung", "context", "exten", "cid_num", "cid_name",
                 "cl_num", "cl_name", "account", "vars", "cause", "up_at", "ran_vm")

    def __init__(self, uid: str, name: str, call: _Call) -> None:
        self.uid = uid
        self.name = name
        self.call = call
        self.hung = False
        self.context = ""
        self.exten = ""
        self.cid_num = ""
        self.cid_name = ""
        self.cl_num = ""
        self.cl_name = ""
        self.account = ""
        self.vars: dict[str, str] | None = None
        self.cause = ""
        self.up_at = 0.0
        self.ran_vm = False


class _Dial:
    __slots__ = ("src", "dest", "dialstring", "status", "end")

    def __init__(self, src: str, dest: str, dialstring: str) -> None:
        self.src = src
        self.dest = dest
        self.dialstring = dialstring
        self.status = ""
        self.end = 0.0


class _Call:
    __slots__ = ("linkedid", "start", "seen", "end", "channels", "by_name", "live", "partial", "gap",
                 "main", "dials", "bridges", "talk_start", "talk_total", "talk_peer",
                 "answer_at", "vm_box", "vm_failed", "queue", "member_name", "cdr_billsec")

    def __init__(self, linkedid: str, start: float, partial: bool, seen: float) -> None:
        self.linkedid = linkedid
        self.start = start  # the PBX's clock (the event's Timestamp): what the record says
        self.seen = seen  # our clock when the first event arrived: what eviction counts from
        self.end = start
        self.channels: dict[str, _Chan] = {}
        self.by_name: dict[str, _Chan] = {}
        self.live = 0
        self.partial = partial
        self.gap = False
        self.main: _Chan | None = None
        self.dials: list[_Dial] = []
        self.bridges: dict[str, list[str]] | None = None
        self.talk_start = 0.0
        self.talk_total = 0.0
        self.talk_peer = ""
        self.answer_at = 0.0
        self.vm_box = ""
        self.vm_failed = False
        self.queue = ""
        self.member_name = ""
        self.cdr_billsec: int | None = None


class CallTracker:
    """``feed(event, now)`` → the CallRecords of calls that this event finished.

    Never raises for bad input: malformed or unknown events are skipped (debug log).
    """

    def __init__(self, pbx: PbxConfig, settings: AmiSettings | None = None) -> None:
        self.pbx = pbx
        self.settings = settings if settings is not None else (
            pbx.settings if isinstance(pbx.settings, AmiSettings) else AmiSettings())
        self.tz: tzinfo = pbx.timezone or UTC
        self._calls: dict[str, _Call] = {}
        self._chans: dict[str, _Chan] = {}
        # Bounded FIFO set; OrderedDict pops its oldest entry in O(1), where a plain dict
        # would rescan the deleted slots at its front on every eviction.
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._timeout = float(pbx.call_timeout_seconds)
        self._next_expiry = 0.0
        self._arrival = 0.0  # our clock at the event being fed
        dept = pbx.department_variable
        self._dept_var = dept.lstrip("_") if dept else ""
        wanted = {v.lstrip("_") for v in pbx.variables}
        self._wanted_vars = wanted
        self._vars_of_interest = frozenset(wanted | {self._dept_var, "VMSTATUS"} - {""})
        self._account_var = next((v for v in pbx.variables if v.lower() == "accountcode"), "")
        self.stats = {"events": 0, "calls": 0, "dropped_calls": 0, "evicted": 0, "errors": 0}
        self._handlers: dict[str, Callable[[dict, float], list[CallRecord] | None]] = {
            "Newchannel": self._on_newchannel,
            "Hangup": self._on_hangup,
            "VarSet": self._on_varset,
            "Newexten": self._on_newexten,
            "NewCallerid": self._on_newcallerid,
            "NewConnectedLine": self._on_newconnectedline,
            "NewAccountCode": self._on_newaccountcode,
            "Newstate": self._on_newstate,
            "DialBegin": self._on_dialbegin,
            "DialEnd": self._on_dialend,
            "BridgeEnter": self._on_bridgeenter,
            "BridgeLeave": self._on_bridgeleave,
            "MessageWaiting": self._on_messagewaiting,
            "QueueCallerJoin": self._on_queue,
            "QueueCallerAbandon": self._on_queue,
            "AgentCalled": self._on_queue,
            "AgentConnect": self._on_agentconnect,
            "Cdr": self._on_cdr,
        }

    # ------------------------------------------------------------------ public API

    @property
    def wanted_events(self) -> frozenset[str]:
        """Event names the tracker reads: the parser may drop the rest unparsed."""
        return frozenset(self._handlers)

    @property
    def wanted_variables(self) -> frozenset[str]:
        """VarSet variable names the tracker reads (without leading underscores)."""
        return self._vars_of_interest

    @property
    def active_calls(self) -> int:
        return len(self._calls)

    def feed(self, event: dict[str, str], now: datetime | float) -> list[CallRecord]:
        """Process one AMI event received at ``now`` (its ``Timestamp`` header wins when
        the PBX sends one). Returns the calls this event finished (usually none)."""
        self.stats["events"] += 1
        handler = self._handlers.get(event.get("Event"))  # type: ignore[arg-type]
        ts = now if isinstance(now, float) else now.timestamp()
        self._arrival = ts
        if ts >= self._next_expiry:
            self._next_expiry = ts + 1.0
            self.expire(ts)
        if handler is None:
            return []
        stamp = event.get("Timestamp")
        if stamp:
            try:
                ts = float(stamp)
            except ValueError:
                pass
        try:
            return handler(event, ts) or []
        except Exception:  # belt and braces: one odd event must not stop the source
            self.stats["errors"] += 1
            log.debug("AMI event skipped: %s", event.get("Event"), exc_info=True)
            return []

    def expire(self, now: datetime | float) -> int:
        """Drop calls that started more than ``call_timeout_seconds`` ago (their end never
        arrived). Counted on our clock, not the PBX's: a PBX whose clock is off, or a
        recorded trace replayed later, must not age calls. Calls are kept in arrival order,
        so this only looks at the oldest."""
        cutoff = (now if isinstance(now, float) else now.timestamp()) - self._timeout
        evicted = 0
        while self._calls:
            lid, call = next(iter(self._calls.items()))
            if call.seen > cutoff:
                break
            self._forget(call)
            evicted += 1
            self.stats["evicted"] += 1
            log.warning("AMI call %s dropped: no end seen within %.0f s (channels still up: %d)",
                        lid, self._timeout, call.live,
                        extra=fields(call_id=lid, pbx=self.pbx.name))
        return evicted

    def connection_lost(self) -> None:
        """Events are lost while the link is down: mark live calls so they are not
        classified on half the story."""
        for call in self._calls.values():
            call.gap = True

    def drop_all(self, reason: str) -> int:
        """Forget every live call (the PBX restarted: their ends will never come)."""
        calls = list(self._calls.values())
        for call in calls:
            self._forget(call)
            self.stats["dropped_calls"] += 1
            log.warning("AMI call %s dropped: %s", call.linkedid, reason,
                        extra=fields(call_id=call.linkedid, pbx=self.pbx.name))
        return len(calls)

    def flush(self, reason: str = "end of input") -> int:
        """At end of a trace: calls that never ended are reported, not emitted."""
        return self.drop_all(f"never ended ({reason})")

    # ------------------------------------------------------------------ bookkeeping

    def _forget(self, call: _Call) -> None:
        self._calls.pop(call.linkedid, None)
        chans = self._chans
        for uid, chan in call.channels.items():
            if chans.get(uid) is chan:
                del chans[uid]
        finished = self._finished
        finished[call.linkedid] = None
        if len(finished) > self.settings.remember_finished:
            finished.popitem(last=False)

    def _chan(self, ev: dict[str, str], ts: float, uid_key: str = "Uniqueid",
              lid_key: str = "Linkedid", name_key: str = "Channel") -> _Chan | None:
        """The channel an event is about, creating the call/channel for events of a call
        we joined mid-way. None for events of finished calls or without ids."""
        uid = ev.get(uid_key)
        if not uid:
            return None
        lid = ev.get(lid_key)
        chan = self._chans.get(uid)
        if chan is not None:
            if lid and lid != chan.call.linkedid:
                return self._migrate(chan, lid, ts)
            return chan
        if not lid or lid in self._finished:
            return None
        call = self._calls.get(lid)
        if call is None:
            call = _Call(lid, ts, partial=True, seen=self._arrival)
            self._calls[lid] = call
        return self._add_chan(call, uid, ev.get(name_key, ""))

    def _add_chan(self, call: _Call, uid: str, name: str) -> _Chan:
        chan = _Chan(uid, name, call)
        call.channels[uid] = chan
        if name:
            call.by_name[name] = chan
        call.live += 1
        self._chans[uid] = chan
        return chan

    def _migrate(self, chan: _Chan, lid: str, ts: float) -> _Chan | None:
        """Bridging two calls moves a channel to the older Linkedid (pickup, transfer)."""
        if lid in self._finished:
            return None
        old = chan.call
        del old.channels[chan.uid]
        old.by_name.pop(chan.name, None)
        if not chan.hung:
            old.live -= 1
        if not old.channels:
            # Nothing of the old call is left: it was only a step of this one.
            self._calls.pop(old.linkedid, None)
        new = self._calls.get(lid)
        if new is None:
            new = _Call(lid, ts, partial=True, seen=self._arrival)
            self._calls[lid] = new
        chan.call = new
        new.channels[chan.uid] = chan
        if chan.name:
            new.by_name[chan.name] = chan
        if not chan.hung:
            new.live += 1
        return chan

    def _main(self, call: _Call) -> _Chan | None:
        if call.main is not None:
            return call.main
        chan = call.channels.get(call.linkedid)
        if chan is None:
            return None
        name = chan.name
        if name.startswith("Local/") and name.endswith(";1"):
            partner = call.by_name.get(name[:-1] + "2")
            if partner is None:
                return chan  # not cached: the ;2 half may not have appeared yet
            chan = partner
        call.main = chan
        return chan

    # ------------------------------------------------------------------ handlers

    def _on_newchannel(self, ev: dict[str, str], ts: float) -> None:
        uid = ev.get("Uniqueid")
        lid = ev.get("Linkedid")
        # Asterisk >= 12 always sends all three; without them it is not a channel we can
        # follow (a truncated or garbled block).
        if not uid or not lid or not ev.get("Channel") or lid in self._finished:
            log.debug("AMI Newchannel without Uniqueid/Linkedid/Channel skipped")
            return
        chan = self._chans.get(uid)
        if chan is None:
            call = self._calls.get(lid)
            if call is None:
                # We saw this call begin only if its first channel is the Linkedid one.
                call = _Call(lid, ts, partial=(uid != lid), seen=self._arrival)
                self._calls[lid] = call
            chan = self._add_chan(call, uid, ev.get("Channel", ""))
        elif chan.call.linkedid != lid:
            chan = self._migrate(chan, lid, ts)
            if chan is None:
                return
        chan.context = ev.get("Context", "")
        chan.exten = ev.get("Exten", "")
        chan.cid_num = _clean(ev.get("CallerIDNum"))
        chan.cid_name = _clean(ev.get("CallerIDName"))
        chan.account = ev.get("AccountCode", "")
        if ev.get("ChannelStateDesc") == "Up":
            chan.up_at = ts

    def _on_newcallerid(self, ev: dict[str, str], ts: float) -> None:
        chan = self._chan(ev, ts)
        if chan is not None:
            num = _clean(ev.get("CallerIDNum"))
            if num:
                chan.cid_num = num
                chan.cid_name = _clean(ev.get("CallerIDName"))

    def _on_newconnectedline(self, ev: dict[str, str], ts: float) -> None:
        chan = self._chan(ev, ts)
        if chan is not None:
            chan.cl_num = _clean(ev.get("ConnectedLineNum"))
            chan.cl_name = _clean(ev.get("ConnectedLineName"))

    def _on_newaccountcode(self, ev: dict[str, str], ts: float) -> None:
        chan = self._chan(ev, ts)
        if chan is not None:
            chan.account = ev.get("AccountCode", "")

    def _on_newstate(self, ev: dict[str, str], ts: float) -> None:
        if ev.get("ChannelStateDesc") != "Up":
            return
        chan = self._chan(ev, ts)
        if chan is not None and not chan.up_at:
            chan.up_at = ts

    def _on_varset(self, ev: dict[str, str], ts: float) -> None:
        var = ev.get("Variable")
        if not var:
            return
        if var[0] == "_":
            var = var.lstrip("_")
        if var not in self._vars_of_interest:
            return
        chan = self._chan(ev, ts)
        if chan is None:
            return
        value = ev.get("Value", "")
        if var == "VMSTATUS":
            if value == "FAILED":
                chan.call.vm_failed = True
            if var not in self._wanted_vars:
                return
        if chan.vars is None:
            chan.vars = {}
        chan.vars[var] = value

    def _on_newexten(self, ev: dict[str, str], ts: float) -> None:
        app = ev.get("Application")
        if app == "VoiceMail":
            chan = self._chan(ev, ts)
            if chan is not None:
                chan.ran_vm = True
                call = chan.call
                if not call.vm_box:
                    box = ev.get("AppData", "").split(",", 1)[0].split("&", 1)[0].strip()
                    if box and "@" not in box:
                        box += "@default"
                    call.vm_box = box
        elif app == "Queue":
            chan = self._chan(ev, ts)
            if chan is not None and not chan.call.queue:
                chan.call.queue = ev.get("AppData", "").split(",", 1)[0].strip()
        else:
            # The number a call leg started with may only show up once it runs dialplan
            # (an Originate'd phone channel starts in exten "s" or none).
            uid = ev.get("Uniqueid")
            chan = self._chans.get(uid) if uid else None
            if chan is not None and chan.exten in ("", "s"):
                exten = ev.get("Exten", "")
                if exten and exten != "s":
                    chan.exten = exten

    def _dial_legs(self, ev: dict[str, str], ts: float) -> tuple[_Chan, str] | None:
        """The calling channel and the dialled one's uniqueid of a DialBegin/DialEnd."""
        # Originate's own dial has only Dest* fields: no caller channel, not the PBX's Dial.
        if not ev.get("Uniqueid"):
            return None
        chan = self._chan(ev, ts)
        dest = ev.get("DestUniqueid")
        if chan is None or not dest:
            return None
        return chan, dest

    def _on_dialbegin(self, ev: dict[str, str], ts: float) -> None:
        if legs := self._dial_legs(ev, ts):
            chan, dest = legs
            chan.call.dials.append(_Dial(chan.uid, dest, ev.get("DialString", "")))

    def _on_dialend(self, ev: dict[str, str], ts: float) -> None:
        legs = self._dial_legs(ev, ts)
        if legs is None:
            return
        chan, dest = legs
        for dial in reversed(chan.call.dials):
            if dial.dest == dest and not dial.status:
                dial.status = ev.get("DialStatus", "") or "UNKNOWN"
                dial.end = ts
                break

    def _on_bridgeenter(self, ev: dict[str, str], ts: float) -> None:
        chan = self._chan(ev, ts)
        bid = ev.get("BridgeUniqueid")
        if chan is None or not bid:
            return
        call = chan.call
        if call.bridges is None:
            call.bridges = {}
        members = call.bridges.setdefault(bid, [])
        if chan.uid not in members:
            members.append(chan.uid)
        main = self._main(call)
        if main is None or call.talk_start or main.uid not in members or len(members) < 2:
            return
        peer_uid = next(u for u in members if u != main.uid)
        call.talk_start = ts
        if not call.answer_at:
            call.answer_at = ts
        if not call.talk_peer:
            call.talk_peer = peer_uid

    def _on_bridgeleave(self, ev: dict[str, str], ts: float) -> None:
        chan = self._chan(ev, ts)
        bid = ev.get("BridgeUniqueid")
        if chan is None or not bid or chan.call.bridges is None:
            return
        call = chan.call
        members = call.bridges.get(bid)
        if not members:
            return
        if chan.uid in members:
            members.remove(chan.uid)
        if not members:
            del call.bridges[bid]
        main = call.main
        if call.talk_start and main is not None and (chan.uid == main.uid or len(members) < 2):
            call.talk_total += ts - call.talk_start
            call.talk_start = 0.0

    def _on_messagewaiting(self, ev: dict[str, str], ts: float) -> None:
        chan = self._chan(ev, ts)
        box = ev.get("Mailbox", "")
        if chan is not None and box:
            chan.call.vm_box = box

    def _on_queue(self, ev: dict[str, str], ts: float) -> None:
        chan = self._chan(ev, ts)
        queue = ev.get("Queue", "")
        if chan is not None and queue and not chan.call.queue:
            chan.call.queue = queue

    def _on_agentconnect(self, ev: dict[str, str], ts: float) -> None:
        chan = self._chan(ev, ts)
        if chan is None:
            return
        call = chan.call
        if ev.get("Queue") and not call.queue:
            call.queue = ev["Queue"]
        call.member_name = _clean(ev.get("MemberName"))

    def _on_cdr(self, ev: dict[str, str], ts: float) -> None:
        # Cdr carries no Linkedid: join it through a channel we know (dropped once the
        # call has finished; talk time is then already measured from the bridge).
        uid = ev.get("UniqueID") or ev.get("Uniqueid")
        chan = self._chans.get(uid) if uid else None
        if chan is None:
            return
        call = chan.call
        main = self._main(call)
        if main is None or chan is not main or ev.get("Disposition") != "ANSWERED":
            return
        peer = call.channels.get(call.talk_peer) if call.talk_peer else None
        if peer is None or ev.get("DestinationChannel") != peer.name:
            return
        try:
            call.cdr_billsec = int(ev.get("BillableSeconds", ""))
        except ValueError:
            pass

    def _on_hangup(self, ev: dict[str, str], ts: float) -> list[CallRecord] | None:
        uid = ev.get("Uniqueid")
        chan = self._chans.get(uid) if uid else None
        if chan is None:
            chan = self._chan(ev, ts)
            if chan is None:
                return None
        elif ev.get("Linkedid") and ev["Linkedid"] != chan.call.linkedid:
            chan = self._migrate(chan, ev["Linkedid"], ts)
            if chan is None:
                return None
        if chan.hung:
            return None  # duplicate
        chan.hung = True
        chan.cause = ev.get("Cause", "")
        num = _clean(ev.get("CallerIDNum"))
        if num and not chan.cid_num:
            chan.cid_num = num
            chan.cid_name = _clean(ev.get("CallerIDName"))
        account = ev.get("AccountCode")
        if account:
            chan.account = account
        call = chan.call
        call.live -= 1
        if ts > call.end:
            call.end = ts
        if call.talk_start and call.main is chan:
            call.talk_total += ts - call.talk_start
            call.talk_start = 0.0
        if call.live > 0:
            return None
        self._forget(call)
        if call.partial or call.gap:
            self.stats["dropped_calls"] += 1
            why = ("it began before the AMI connection" if call.partial
                   else "AMI events were lost while disconnected")
            log.warning("AMI call %s ended but is not classified: %s", call.linkedid, why,
                        extra=fields(call_id=call.linkedid, pbx=self.pbx.name))
            return None
        try:
            record = self._record(call)
        except Exception:
            self.stats["errors"] += 1
            log.warning("AMI call %s could not be turned into a record", call.linkedid,
                        exc_info=True, extra=fields(call_id=call.linkedid, pbx=self.pbx.name))
            return None
        self.stats["calls"] += 1
        return [record]

    # ------------------------------------------------------------------ classification

    def _record(self, call: _Call) -> CallRecord:
        main = self._main(call) or next(iter(call.channels.values()))
        if call.talk_start:  # still bridged at the last hangup (events cut short)
            call.talk_total += call.end - call.talk_start
        chans = call.channels
        peer = chans.get(call.talk_peer) if call.talk_peer else None
        if peer is not None and (peer.ran_vm or self._local_partner_ran_vm(call, peer)):
            peer = None  # bridged to a voicemail leg, not a person

        if peer is not None:
            status = CallStatus.CONNECTED
        elif call.vm_box and not call.vm_failed:
            status = CallStatus.VOICEMAIL
        else:
            status = CallStatus.MISSED

        caller_num, caller_name = main.cid_num, main.cid_name
        dialled = main.exten if main.exten != "s" else ""
        settings = self.settings
        if main.context in settings.inbound_contexts:
            direction = Direction.INBOUND
        elif settings.is_extension(caller_num):
            direction = Direction.INTERNAL if settings.is_extension(dialled) else Direction.OUTBOUND
        else:
            direction = Direction.INBOUND

        # The agent: whoever the call leg was bridged with, else whoever it rang first.
        agent_ext = agent_name = ""
        main_dials = [d for d in call.dials if d.src == main.uid]
        if direction is Direction.OUTBOUND:
            agent_ext, agent_name = caller_num, caller_name
        else:
            dial = None
            if peer is not None:
                dial = next((d for d in call.dials if d.dest == peer.uid), None)
                agent_ext = _ext_from_dialstring(dial.dialstring) if dial and dial.dialstring \
                    else _ext_from_channel(peer.name)
            elif main_dials:
                dial = main_dials[0]
                agent_ext = _ext_from_dialstring(dial.dialstring) if dial.dialstring \
                    else _ext_from_channel(chans[dial.dest].name if dial.dest in chans else "")
            if call.member_name:
                agent_name = call.member_name
            elif agent_ext and main.cl_num == agent_ext:
                agent_name = main.cl_name

        start, end = call.start, call.end
        if status is CallStatus.CONNECTED:
            answer = call.answer_at
            ring_end = answer
            measured = math.floor(call.talk_total + 1e-6)
            talk = float(call.cdr_billsec if call.cdr_billsec is not None else measured)
            if call.cdr_billsec is not None and abs(call.cdr_billsec - measured) > 1:
                log.debug("AMI call %s: CDR billsec %s vs bridged %.3f s", call.linkedid,
                          call.cdr_billsec, call.talk_total)
        else:
            answer = 0.0
            talk = 0.0
            ended = [d.end for d in main_dials if d.end]
            ring_end = max(ended) if ended else (main.up_at or end)
        ring = max(0.0, min(ring_end, end) - start)

        variables: dict[str, str] = {}
        department = ""
        dept_var = self._dept_var
        # The call leg's own values win; inherited copies on other legs fill the gaps.
        ordered = [main] + [c for c in chans.values() if c is not main]
        for chan in ordered:
            if chan.vars:
                if not department and dept_var:
                    department = chan.vars.get(dept_var, "")
                for name in self._wanted_vars:
                    if name not in variables and name in chan.vars:
                        variables[name] = chan.vars[name]
        if self._account_var and self._account_var not in variables and main.account:
            variables[self._account_var] = main.account

        tz = self.tz
        return CallRecord(
            call_id=call.linkedid,
            pbx=self.pbx.name,
            direction=direction,
            status=status,
            caller_number=caller_num,
            caller_name=caller_name,
            dialled_number=dialled,
            agent_extension=agent_ext,
            agent_name=agent_name,
            department=department,
            queue=call.queue,
            start_time=datetime.fromtimestamp(start, tz),
            answer_time=datetime.fromtimestamp(answer, tz) if answer else None,
            end_time=datetime.fromtimestamp(end, tz),
            ring_seconds=round(ring, 3),
            talk_seconds=talk,
            hangup_cause=cause_name(main.cause),
            voicemail_box=call.vm_box if status is CallStatus.VOICEMAIL else "",
            variables=variables,
        )

    @staticmethod
    def _local_partner_ran_vm(call: _Call, chan: _Chan) -> bool:
        name = chan.name
        if name.startswith("Local/") and name.endswith(";1"):
            partner = call.by_name.get(name[:-1] + "2")
            return partner is not None and partner.ran_vm
        return False

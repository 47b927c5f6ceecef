"""AMI call tracker: groups events by ``Linkedid`` and turns each finished call into one
`CallRecord`.

Synchronous and allocation-light on purpose: it runs inline in the socket reader (live) and
in the trace replayer, on every event, and most events (VarSet, Newexten, CEL, device state)
are looked at for a few dictionary probes and dropped.

How a call is read (Asterisk semantics, not the test simulation's):

* **Call** = all channels sharing a ``Linkedid`` (the Uniqueid of the oldest channel).
  It is over when every channel seen in it has hung up; the record is emitted on that
  last ``Hangup`` with no grace period (``Cdr`` and ``CEL LINKEDID_END`` are not read).
* **Call leg** (the customer's channel) = the ``Linkedid`` channel: the trunk channel of an
  inbound SIP call, the agent's phone of an outbound one. When that channel is the ``;1``
  half of a Local channel (a call started by AMI ``Originate`` of ``Local/...``), the
  dialplan runs on the ``;2`` half, so that half is the call leg.
* This module only turns events into facts (`calls.Call.facts`): who the call leg was
  bridged with and when (BridgeEnter/BridgeLeave), what it dialled (DialBegin/DialEnd),
  whether VoiceMail ran and what ``VMSTATUS`` it set, whether the PBX's shutdown hung it up
  (``SoftHangupRequest`` with ``Cause: 4``, Asterisk's AST_SOFTHANGUP_SHUTDOWN). What the
  call *was* is decided in `aftercalld.classify`, the same rules as for FreeSWITCH.
* A reconnect to the same Asterisk keeps every call: what was missed in between is usually
  nothing (Asterisk queues events for a while) or a few events, and a record with the facts
  known beats no record. On every connect the source reconciles the calls with Asterisk's
  own list of live channels (`reconcile.py`): calls that began while nobody listened are
  adopted, calls that ended meanwhile are finished. Only a call joined mid-way without that
  list (the AMI user may not run CoreShowChannels) is not classified, counted in
  ``stats["unclassified"]``: a wrong "sorry we missed you" is worse than none.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo

from ..classify import build_record
from ..logutil import fields
from ..model import CallRecord
from ..pbxconfig import PbxConfig
from . import reconcile
from .book import CallBook
from .calls import Call, Chan, Dial, voicemail_box
from .config import AmiSettings

log = logging.getLogger("aftercalld.ami.tracker")

_UNKNOWN = ("", "<unknown>", "<Unknown>")
# SoftHangupRequest's Cause is Asterisk's soft-hangup reason, not a Q.850 cause:
# AST_SOFTHANGUP_SHUTDOWN, which `core stop now` and `core restart now` send to every channel
# (the graceful forms wait for the calls to end instead).
_SOFTHANGUP_SHUTDOWN = "4"
# A Timestamp header outside this range (or not a number) is not the PBX's clock: the
# event's arrival time stands in for it. 32503680000 = year 3000.
_SANE_TIMESTAMPS = (0.0, 32_503_680_000.0)
DEFAULT_MAX_CALLS = 20_000
# Events read, each by its _on_<name in lower case> method (the queue ones share two).
_HANDLED = ("Newchannel", "Hangup", "SoftHangupRequest", "VarSet", "Newexten", "NewCallerid", "NewConnectedLine",
            "NewAccountCode", "Newstate", "DialBegin", "DialEnd", "BridgeEnter", "BridgeLeave", "MessageWaiting")


def _pbx_time(stamp: str) -> float | None:
    """A Timestamp header's value, None when it is not a sane Unix time (inf, nan, 1e308)."""
    try:
        value = float(stamp)
    except ValueError:
        return None
    low, high = _SANE_TIMESTAMPS
    return value if low < value < high else None  # also None for nan


def _clean(value: str | None) -> str:
    return "" if value is None or value in _UNKNOWN else value


class CallTracker:
    """``feed(event, now)`` → the CallRecords of calls that this event finished.

    Never raises for bad input: malformed or unknown events are skipped (debug log).
    At most ``max_calls`` calls are followed at once; beyond that the oldest is dropped
    (counted in ``stats["overflow"]``, logged as a rate-limited summary).
    """

    def __init__(self, pbx: PbxConfig, settings: AmiSettings | None = None, *,
                 max_calls: int = DEFAULT_MAX_CALLS) -> None:
        self.pbx = pbx
        self.settings = settings if settings is not None else (
            pbx.settings if isinstance(pbx.settings, AmiSettings) else AmiSettings())
        self.tz: tzinfo = pbx.timezone or UTC
        self.stats = {"events": 0, "calls": 0, "dropped_calls": 0, "evicted": 0, "overflow": 0,
                      "errors": 0, "bad_timestamps": 0, "unclassified": 0, "adopted": 0,
                      "ended_unseen": 0, "interrupted": 0}
        self.book = CallBook(pbx.name, timeout=float(pbx.call_timeout_seconds), max_calls=max_calls,
                             remember_finished=self.settings.remember_finished, stats=self.stats)
        self._next_expiry = 0.0
        dept = pbx.department_variable
        self._dept_var = dept.lstrip("_") if dept else ""
        wanted = frozenset(v.lstrip("_") for v in pbx.variables)
        self._wanted_vars = wanted
        self._vars_of_interest = frozenset(wanted | {self._dept_var, "VMSTATUS"} - {""})
        self._account_var = next((v for v in pbx.variables if v.lower() == "accountcode"), "")
        self._handlers: dict[str, Callable[[dict, float], list[CallRecord] | None]] = {
            name: getattr(self, f"_on_{name.lower()}") for name in _HANDLED}
        self._handlers.update(QueueCallerJoin=self._on_queue, QueueCallerAbandon=self._on_queue,
                              AgentCalled=self._on_agent, AgentConnect=self._on_agent)

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
        return len(self.book.calls)

    def feed(self, event: dict[str, str], now: datetime | float) -> list[CallRecord]:
        """Process one AMI event received at ``now`` (its ``Timestamp`` header wins when
        the PBX sends a sane one). Returns the calls this event finished (usually none)."""
        self.stats["events"] += 1
        handler = self._handlers.get(event.get("Event"))  # type: ignore[arg-type]
        ts = now if isinstance(now, float) else now.timestamp()
        self.book.arrival = ts
        if ts >= self._next_expiry:
            self._next_expiry = ts + 1.0
            self.book.expire(ts)
        if handler is None:
            return []
        stamp = event.get("Timestamp")
        if stamp:
            pbx_ts = _pbx_time(stamp)
            if pbx_ts is None:
                self.stats["bad_timestamps"] += 1
                log.debug("AMI Timestamp %r is not a time; the arrival time stands in", stamp[:40])
            else:
                ts = pbx_ts
        try:
            return handler(event, ts) or []
        except Exception:  # belt and braces: one odd event must not stop the source
            self.stats["errors"] += 1
            log.debug("AMI event skipped: %s", event.get("Event"), exc_info=True)
            return []

    def expire(self, now: datetime | float) -> int:
        """Drop calls that started more than ``call_timeout_seconds`` ago (on our clock)."""
        return self.book.expire(now if isinstance(now, float) else now.timestamp())

    def reconcile(self, channels: list[dict[str, str]], now: float) -> list[CallRecord]:
        """Asterisk's live channels (CoreShowChannel events): see `reconcile.apply`."""
        self.book.arrival = now
        return reconcile.apply(self, channels, now)

    def flush(self, reason: str = "end of input") -> int:
        """At end of a trace: calls that never ended are reported, not emitted."""
        return self.book.drop_all(f"never ended ({reason})")

    # ------------------------------------------------------------------ handlers

    def _on_newchannel(self, ev: dict[str, str], ts: float) -> None:
        uid = ev.get("Uniqueid")
        lid = ev.get("Linkedid")
        # Asterisk >= 12 always sends all three; without them it is not a channel we can
        # follow (a truncated or garbled block).
        if not uid or not lid or not ev.get("Channel") or lid in self.book.finished:
            log.debug("AMI Newchannel without Uniqueid/Linkedid/Channel skipped")
            return
        chan = self.book.open_chan(uid, lid, ev["Channel"], ts)
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
        chan = self.book.chan(ev, ts)
        if chan is not None:
            num = _clean(ev.get("CallerIDNum"))
            if num:
                chan.cid_num = num
                chan.cid_name = _clean(ev.get("CallerIDName"))

    def _on_newconnectedline(self, ev: dict[str, str], ts: float) -> None:
        chan = self.book.chan(ev, ts)
        if chan is not None:
            chan.cl_num = _clean(ev.get("ConnectedLineNum"))
            chan.cl_name = _clean(ev.get("ConnectedLineName"))

    def _on_newaccountcode(self, ev: dict[str, str], ts: float) -> None:
        chan = self.book.chan(ev, ts)
        if chan is not None:
            chan.account = ev.get("AccountCode", "")

    def _on_newstate(self, ev: dict[str, str], ts: float) -> None:
        if ev.get("ChannelStateDesc") != "Up":
            return
        chan = self.book.chan(ev, ts)
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
        chan = self.book.chan(ev, ts)
        if chan is None:
            return
        value = ev.get("Value", "")
        if var == "VMSTATUS":
            chan.call.vm_status = value
            if var not in self._wanted_vars:
                return
        if chan.vars is None:
            chan.vars = {}
        chan.vars[var] = value

    def _on_newexten(self, ev: dict[str, str], ts: float) -> None:
        app = ev.get("Application")
        if app == "VoiceMail":
            chan = self.book.chan(ev, ts)
            if chan is not None:
                chan.ran_vm = True
                chan.call.vm_ran = True
                chan.call.vm_box = chan.call.vm_box or voicemail_box(ev.get("AppData", ""))
        elif app == "Queue":
            chan = self.book.chan(ev, ts)
            if chan is not None and not chan.call.queue:
                chan.call.queue = ev.get("AppData", "").split(",", 1)[0].strip()
        else:
            # The number a call leg started with may only show up once it runs dialplan
            # (an Originate'd phone channel starts in exten "s" or none).
            uid = ev.get("Uniqueid")
            chan = self.book.chans.get(uid) if uid else None
            if chan is not None and chan.exten in ("", "s"):
                exten = ev.get("Exten", "")
                if exten and exten != "s":
                    chan.exten = exten

    def _dial_legs(self, ev: dict[str, str], ts: float) -> tuple[Chan, str] | None:
        """The calling channel and the dialled one's uniqueid of a DialBegin/DialEnd."""
        # Originate's own dial has only Dest* fields: no caller channel, not the PBX's Dial.
        if not ev.get("Uniqueid"):
            return None
        chan = self.book.chan(ev, ts)
        dest = ev.get("DestUniqueid")
        if chan is None or not dest:
            return None
        return chan, dest

    def _on_dialbegin(self, ev: dict[str, str], ts: float) -> None:
        if legs := self._dial_legs(ev, ts):
            chan, dest = legs
            chan.call.dials.append(Dial(chan.uid, dest, ev.get("DialString", "")))

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
        chan = self.book.chan(ev, ts)
        bid = ev.get("BridgeUniqueid")
        if chan is not None and bid:
            chan.call.bridge_enter(chan.uid, bid, ts)

    def _on_bridgeleave(self, ev: dict[str, str], ts: float) -> None:
        chan = self.book.chan(ev, ts)
        bid = ev.get("BridgeUniqueid")
        if chan is not None and bid:
            chan.call.bridge_leave(chan.uid, bid, ts)

    def _on_messagewaiting(self, ev: dict[str, str], ts: float) -> None:
        chan = self.book.chan(ev, ts)
        box = ev.get("Mailbox", "")
        if chan is not None and box:
            chan.call.vm_box = box
            chan.call.vm_waiting = True

    def _on_queue(self, ev: dict[str, str], ts: float) -> None:
        chan = self.book.chan(ev, ts)
        queue = ev.get("Queue", "")
        if chan is not None and queue and not chan.call.queue:
            chan.call.queue = queue

    def _on_agent(self, ev: dict[str, str], ts: float) -> None:
        """AgentCalled/AgentConnect: the queue, and the member's name for its channel."""
        self._on_queue(ev, ts)
        chan = self.book.chans.get(ev.get("Uniqueid", ""))
        member, name = ev.get("DestUniqueid"), _clean(ev.get("MemberName"))
        if chan is not None and member and name:
            call = chan.call
            if call.member_names is None:
                call.member_names = {}
            call.member_names[member] = name

    def _on_softhanguprequest(self, ev: dict[str, str], ts: float) -> None:
        if ev.get("Cause") == _SOFTHANGUP_SHUTDOWN:
            chan = self.book.chan(ev, ts)
            if chan is not None:
                chan.call.shutdown = True

    def _on_hangup(self, ev: dict[str, str], ts: float) -> list[CallRecord] | None:
        uid = ev.get("Uniqueid")
        chan = self.book.chans.get(uid) if uid else None
        if chan is None:
            chan = self.book.chan(ev, ts)
            if chan is None:
                return None
        elif ev.get("Linkedid") and ev["Linkedid"] != chan.call.linkedid:
            chan = self.book.migrate(chan, ev["Linkedid"], ts)
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
        call.leave_all_bridges(chan.uid, ts)  # a hangup ends its bridges even if BridgeLeave was lost
        if call.live > 0:
            return None
        if call.partial:
            self.book.drop_unclassified(call)
            return None
        return self.finish(call, ts)

    def finish(self, call: Call, end: float, cause: str = "") -> list[CallRecord]:
        """The call's record (forgetting the call); ``cause`` replaces the hangup cause when
        its end was not seen, and every channel still up counts as hung up at ``end``."""
        if cause:
            call.cut(end)
        try:
            facts = call.facts(self.pbx.name, self.settings.is_extension, self._dept_var,
                               self._wanted_vars, self._account_var)
            if cause:
                facts.hangup_cause = cause
            record = build_record(facts, self.settings, self.tz)
        except Exception:
            self.stats["errors"] += 1
            log.warning("AMI call %s could not be turned into a record", call.linkedid,
                        exc_info=True, extra=fields(call_id=call.linkedid, pbx=self.pbx.name))
            return []
        finally:
            self.book.forget(call)
        self.stats["calls"] += 1
        return [record]

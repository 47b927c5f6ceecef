"""The SMPP Transport: an account's sessions, failover between SMSC hosts, the window and
rate limits, and the mapping of submit_sm results, receipts and replies onto the core's
types.

Each session slot has a supervisor task that connects to the first host that answers,
binds, and on any loss rebinds with capped, jittered backoff (starting again from the
primary host). `send()` takes a window slot on any bound session for each part in turn,
so the dispatcher's `max_in_flight` (sessions × window) keeps every window full.
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import random
import ssl
from typing import Any

from ..logutil import fields, redact
from ..model import DeliveryReport, InboundMessage, OutboundMessage, SubmitOutcome
from ..transport import Transport, TransportEvents
from . import pdu
from .config import SmppSettings
from .parts import build_submits, parse_tlv_map
from .receipts import parse_receipt, receipt_id_as_submitted
from .session import BindError, LinkLost, NotSent, ResponseTimeout, Session
from .status import ESME_RINVBNDSTS, ESME_ROK, ESME_RX_T_APPN, Verdict, classify, describe, status_name
from .text import decode_short_message
from .throttle import TokenBucket

log = logging.getLogger(__name__)

# A submit that was written but never answered (its link dropped first) may have been taken
# by the SMSC. A part is sent again after such a submit at most this many times in all, so
# the recipient gets it at most twice; then the message fails rather than risk a third.
MAX_UNANSWERED = 2


# A bind that stayed up this long (or reconnect_max, if shorter) was healthy.
HEALTHY_BIND_SECONDS = 5.0


class _NoSession(Exception):
    pass


def _exact_id(message_id: str) -> str:
    return message_id.strip().lower().lstrip("0")


class _Slot:
    """One configured session (a bind that is kept up), whatever connection it is on now."""

    def __init__(self, index: int, mode: str, rate: float) -> None:
        self.index = index
        self.mode = mode
        self.session: Session | None = None
        self.bucket = TokenBucket(rate)
        self.task: asyncio.Task | None = None
        self.binds = 0

    @property
    def label(self) -> str:
        return f"session {self.index} {self.mode}"


class SmppTransport(Transport):
    def __init__(self, settings: SmppSettings, name: str = "smpp") -> None:
        super().__init__(name)
        self.settings = settings
        self.max_in_flight = settings.sessions * settings.window
        self._profile = settings.wire_profile
        self._account = TokenBucket(settings.account_rate)
        self._slots: list[_Slot] = []
        for i in range(1, settings.sessions + 1):
            if settings.bind_mode == "transceiver":
                self._slots.append(_Slot(i, "transceiver", settings.session_rate))
            else:
                self._slots.append(_Slot(i, "transmitter", settings.session_rate))
                if settings.bind_mode == "transmitter_receiver":
                    self._slots.append(_Slot(i, "receiver", 0))
        self._senders = [s for s in self._slots if s.mode != "receiver"]
        self._rr = 0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self._bind_watchers: list[asyncio.Future] = []
        self._events: TransportEvents | None = None
        self._closing = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._ref = itertools.count(random.randrange(0x10000))
        self._tls = self._tls_context() if settings.tls else None
        self.counters: collections.Counter[str] = collections.Counter()
        # submit_sm answers other than ESME_ROK, by command_status name: what a provider asks for.
        self.error_statuses: collections.Counter[str] = collections.Counter()
        # Parts submitted by a send() that has not returned yet: exact id → receipts held
        # back until the dispatcher has the outcome (see _hand_over_report).
        self._unreported: dict[str, list[DeliveryReport]] = {}

    # -- lifecycle -------------------------------------------------------------------------

    def _tls_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.settings.tls_ca_file or None)
        if not self.settings.tls_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    async def start(self, events: TransportEvents) -> None:
        """Binds in the background and returns at once: waiting here for an SMSC that is
        down held back the PBX connections, and calls ending meanwhile were never seen.
        Until a session is bound, send() waits up to response_timeout for one, then
        answers transient and the text waits in the outbox."""
        self._events = events
        for slot in self._slots:
            slot.task = asyncio.create_task(self._supervise(slot), name=f"{self.name}:{slot.label}")

    def is_up(self) -> bool:
        return not self._closing and any(slot.session is not None and slot.session.can_send for slot in self._senders)

    def all_bound(self) -> bool:
        return all(slot.session is not None and slot.session.bound for slot in self._slots)

    async def until_bound(self, timeout: float) -> bool:
        """Wait (up to `timeout`) until every configured session is bound; False if not
        (send-test, and tests that need the binds up before they start)."""
        try:
            async with asyncio.timeout(timeout):
                while not self.all_bound():
                    watcher = asyncio.get_running_loop().create_future()
                    self._bind_watchers.append(watcher)
                    await watcher
        except TimeoutError:
            return False
        return True

    async def probe(self) -> str | None:
        """One connect and bind to each configured SMSC in turn, for `send-test`: None as
        soon as one binds (it is unbound again at once), else why the last one failed. The
        transport's own sessions retry with backoff, which is right for the daemon and wrong
        for an engineer waiting at a prompt."""
        s = self.settings
        mode = self._slots[0].mode if self._slots else "transmitter"
        reason = "no SMSC configured"
        for host, port in s.hosts:
            session = Session(label=f"{self.name} probe", mode=mode, window=1, response_timeout=s.response_timeout,
                              enquire_link_interval=s.enquire_link_interval,
                              enquire_link_timeout=s.enquire_link_timeout, on_message=lambda *_: ESME_ROK)
            try:
                await session.open(host, port, system_id=s.system_id, password=s.password,
                                   system_type=s.system_type, addr_ton=s.addr_ton, addr_npi=s.addr_npi,
                                   address_range=s.address_range, connect_timeout=s.connect_timeout,
                                   tls=self._tls)
            except BindError as exc:
                reason = f"bind_{mode} refused by {host}:{port}: {exc} (system_id {s.system_id})"
            except (OSError, TimeoutError, ResponseTimeout, LinkLost, pdu.PduError) as exc:
                reason = f"cannot bind to {host}:{port}: {str(exc) or type(exc).__name__}"
            else:
                await session.unbind()
                return None
            session.abort("probe failed")
        return reason

    async def close(self) -> None:
        self._closing = True
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        if self._in_flight:
            try:
                async with asyncio.timeout(self.settings.drain_timeout):
                    await self._idle.wait()
            except TimeoutError:
                log.warning("%s: %d sends still in flight after %gs; closing anyway", self.name,
                            self._in_flight, self.settings.drain_timeout)
        for slot in self._slots:
            if slot.task is not None:
                slot.task.cancel()
        await asyncio.gather(*(s.task for s in self._slots if s.task), return_exceptions=True)
        await asyncio.gather(*(s.session.unbind() for s in self._slots if s.session),
                             return_exceptions=True)

    async def _supervise(self, slot: _Slot) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        failures = 0
        # A bind that ends within this is no success: an SMSC that takes the bind and then
        # sends garbage (or unbinds at once) must meet the growing delay, not a storm.
        healthy_after = min(s.reconnect_max, HEALTHY_BIND_SECONDS)
        # The trouble last logged per SMSC host: the same again on every retry stays at debug
        # (hosts tried in turn would otherwise each log on every round).
        problems: dict[str, str] = {}
        short_binds = 0  # in a row

        def report(where: str, level: int, text: str, *args: Any, **kw: Any) -> None:
            line = text % args
            if problems.get(where) == line:
                level = logging.DEBUG
            problems[where] = line
            log.log(level, "%s", line, **kw)

        try:
            while not self._closing:
                # Whether every host of this round was unreachable (no TCP connection came up):
                # then the next round comes after probe_interval, not after the growing backoff
                # that an SMSC refusing binds or dropping links must meet.
                unreachable = True
                for host, port in s.hosts:
                    session = Session(
                        label=f"{self.name} {slot.label}", mode=slot.mode, window=s.window,
                        response_timeout=s.response_timeout,
                        enquire_link_interval=s.enquire_link_interval,
                        enquire_link_timeout=s.enquire_link_timeout,
                        on_message=self._on_message)
                    where = f"{host}:{port}"
                    try:
                        smsc_id = await session.open(
                            host, port, system_id=s.system_id, password=s.password,
                            system_type=s.system_type, addr_ton=s.addr_ton, addr_npi=s.addr_npi,
                            address_range=s.address_range, connect_timeout=s.connect_timeout,
                            tls=self._tls)
                    except BindError as exc:
                        unreachable = False
                        report(where, logging.ERROR, "%s %s: bind_%s refused by %s: %s (system_id %s, password %s); "
                               "retrying with backoff (up to %gs)", self.name, slot.label, slot.mode, where, exc,
                               s.system_id, redact(s.password), s.reconnect_max,
                               extra=fields(transport=self.name, smsc=where))
                        continue
                    except (OSError, TimeoutError, ResponseTimeout, LinkLost, pdu.PduError) as exc:
                        # A TLS handshake that fails is no cheap probe: it backs off too.
                        probe = not session.connected and not isinstance(exc, ssl.SSLError)
                        unreachable = unreachable and probe
                        report(where, logging.WARNING, "%s %s: cannot bind to %s: %s; %s", self.name, slot.label,
                               where, str(exc) or type(exc).__name__,
                               f"trying to connect every {s.probe_interval:g}s" if probe
                               else f"retrying with backoff (up to {s.reconnect_max:g}s)",
                               extra=fields(transport=self.name, smsc=where))
                        session.abort("bind failed")
                        continue
                    except Exception:
                        unreachable = False
                        # A bug must not silently end this session's supervisor for good.
                        log.exception("%s %s: unexpected error binding to %s", self.name,
                                      slot.label, where)
                        session.abort("bind failed")
                        continue
                    slot.binds += 1
                    slot.session = session
                    bound_at = loop.time()
                    # While binds keep ending within seconds, a new one is no news.
                    log.log(logging.DEBUG if short_binds else logging.INFO, "%s %s: bound to %s (SMSC system_id %s)",
                            self.name, slot.label, where, smsc_id or "-", extra=fields(transport=self.name, smsc=where))
                    if not short_binds:
                        problems.clear()
                    if slot.mode != "receiver":
                        self._wake(all_=True)
                    watchers, self._bind_watchers = self._bind_watchers, []
                    for watcher in watchers:
                        if not watcher.done():
                            watcher.set_result(None)
                    reason = await session.closed
                    slot.session = None
                    if loop.time() - bound_at >= healthy_after:
                        failures = short_binds = 0
                    else:
                        short_binds += 1
                    unreachable = False
                    if not self._closing:
                        report(where, logging.WARNING, "%s %s: link to %s lost (%s); re-binding%s", self.name,
                               slot.label,
                               where, reason, " with backoff (binds end within seconds)" if short_binds else "",
                               extra=fields(transport=self.name, smsc=where))
                    break
                if self._closing:
                    return
                if unreachable:
                    # The backoff stays where it was: an SMSC that comes back refusing binds
                    # meets it where it left off.
                    await asyncio.sleep(s.probe_interval * random.uniform(0.8, 1.0))
                    continue
                delay = min(s.reconnect_max, s.reconnect_min * (2 ** min(failures, 20)))
                failures += 1
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
        except asyncio.CancelledError:
            pass

    # -- window slots ----------------------------------------------------------------------

    def _try_take(self) -> _Slot | None:
        """A sender slot whose bound session has a free window slot, now taken; round
        robin so sessions share the load."""
        senders = self._senders
        n = len(senders)
        for i in range(n):
            slot = senders[(self._rr + i) % n]
            session = slot.session
            if session is not None and session.bound and session.free > 0:
                session.free -= 1
                self._rr = (self._rr + i + 1) % n
                return slot
        return None

    async def _take(self, timeout: float) -> _Slot:
        """Wait (up to `timeout`) for a free window slot on any bound session."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if self._closing or remaining <= 0:
                raise _NoSession()
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout(remaining):
                    await waiter
            except BaseException as exc:
                # Handed a free slot just as the time ran out or we were cancelled: we
                # will not use it, so pass it on.
                if waiter.done() and not waiter.cancelled():
                    self._wake()
                if isinstance(exc, TimeoutError):
                    raise _NoSession() from None
                raise
            slot = self._try_take()
            if slot is not None:
                return slot

    def _release(self, session: Session) -> None:
        session.free += 1
        self._wake()

    def _wake(self, all_: bool = False) -> None:
        waiters = self._waiters
        while waiters:
            w = waiters.popleft()
            if not w.done():
                w.set_result(None)
                if not all_:
                    return

    # -- sending ---------------------------------------------------------------------------

    async def send(self, message: OutboundMessage) -> SubmitOutcome:
        if self._closing or self._events is None:
            return SubmitOutcome.transient("SMPP transport closing", retry_after=5.0)
        try:
            extra = message.options.get("tlvs") if message.options else None
            bodies = build_submits(message, self._profile, next(self._ref) & 0xFFFF,
                                   parse_tlv_map(extra) if extra else None)
        except ValueError as exc:
            return SubmitOutcome.permanent(f"cannot encode for SMPP: {exc}")
        self._in_flight += 1
        self._idle.clear()
        ids: list[str] = []
        registered: list[str] = []
        try:
            total = len(bodies)
            for index, body in enumerate(bodies, start=1):
                outcome = await self._submit_part(message, body, index, total)
                if isinstance(outcome, SubmitOutcome):
                    return outcome
                ids.append(outcome)
                if index < total:
                    key = _exact_id(outcome)
                    if key not in self._unreported:
                        self._unreported[key] = []
                        registered.append(key)
            self.counters["messages_submitted"] += 1
            return SubmitOutcome.submitted(*ids)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()
            held = [r for key in registered for r in self._unreported.pop(key, ())]
            if held:
                # After the caller has taken the outcome: it is recorded first.
                asyncio.get_running_loop().call_soon(self._emit_reports, held)

    async def _submit_part(self, message: OutboundMessage, body: bytes, index: int,
                           total: int) -> str | SubmitOutcome:
        """The part's message_id, or the outcome that ends this send."""
        s = self.settings
        part = f"part {index}/{total}" if total > 1 else ""
        reason = ""
        retry_after = None
        attempts = throttles = unanswered = 0
        while attempts < s.part_attempts and throttles < 10 * s.part_attempts:
            slot = self._try_take()
            try:
                if slot is None:
                    slot = await self._take(s.response_timeout)
            except _NoSession:
                reason = "no SMPP session bound" if not self._closing else "SMPP transport closing"
                retry_after = s.reconnect_min * 2
                break
            session = slot.session
            assert session is not None  # _take only hands out slots of bound sessions
            try:
                wait = max(slot.bucket.reserve(), self._account.reserve())
                if wait > 0:
                    await asyncio.sleep(wait)
                fut = session.send_request(pdu.SUBMIT_SM, body, hold=True)
                try:
                    command_id, status, resp = await fut
                except ResponseTimeout as exc:
                    # Still outstanding, still holding its window slot: wait for the answer
                    # (the session drops the link if it never comes).
                    self.counters["response_timeouts"] += 1
                    assert exc.late is not None
                    command_id, status, resp = await exc.late
                    self.counters["late_responses"] += 1
                    log.info("%s: %s%s answered after %gs+ by %s", self.name, message.key,
                             f" {part}" if part else "", s.response_timeout, session.peer,
                             extra=fields(call_id=message.call_id, recipient=message.destination))
            except NotSent as exc:
                attempts += 1
                reason = f"{exc} ({session.peer})"
                continue
            except LinkLost as exc:
                attempts += 1
                unanswered += 1
                reason = f"{exc} ({session.peer})"
                if unanswered >= MAX_UNANSWERED:
                    self.counters["unanswered_given_up"] += 1
                    log.warning("%s: %s %s to %s: %d submits never answered (%s); not sending it "
                                "again: the SMSC may have taken them", self.name, message.key, part,
                                message.destination, unanswered, reason,
                                extra=fields(call_id=message.call_id, recipient=message.destination))
                    of_part = f" of {part}" if part else ""
                    return SubmitOutcome.permanent(
                        f"{unanswered} submits{of_part} never answered ({exc}); not sent again: "
                        f"the SMSC may have taken them", partly_sent=True)
                self.counters["link_retries"] += 1
                continue
            finally:
                self._release(session)
            verdict = classify(status, s.transient_statuses)
            if verdict is Verdict.OK and command_id != pdu.GENERIC_NACK:
                message_id = pdu.parse_message_id(resp)
                self.counters["parts_submitted"] += 1
                if log.isEnabledFor(logging.DEBUG):  # the hot path: skip building fields
                    log.debug("%s: submitted %s %s to %s as %s", self.name, message.key, part,
                              message.destination, message_id,
                              extra=fields(call_id=message.call_id, msg_id=message_id,
                                           recipient=message.destination))
                return message_id
            name = status_name(status)
            if command_id == pdu.GENERIC_NACK:
                name = f"generic_nack {name}"
            self.error_statuses[name] += 1
            if verdict is Verdict.THROTTLED:
                # Slow this session down and retry the same part; a throttle is the SMSC
                # doing its job, so it uses up an attempt only one tenth as fast.
                slot.bucket.pause(s.throttle_pause)
                throttles += 1
                self.counters["throttled"] += 1
                reason, retry_after = name, s.throttle_pause
                continue
            if verdict is Verdict.TRANSIENT:
                attempts += 1
                reason = name
                self.counters["transient_errors"] += 1
                if status == ESME_RINVBNDSTS and session.bound:
                    # The SMSC no longer counts this session as bound: re-bind it.
                    log.warning("%s %s: %s answered ESME_RINVBNDSTS; re-binding", self.name,
                                slot.label, session.peer)
                    session.abort("SMSC says the session is not bound (ESME_RINVBNDSTS)")
                if attempts < s.part_attempts:
                    # A short, growing pause (no window slot held) rather than hammering
                    # an SMSC that just said it is in trouble.
                    await asyncio.sleep(min(s.reconnect_min * attempts, 5.0))
                continue
            self.counters["permanent_errors"] += 1
            log.warning("%s: %s %s to %s rejected: %s", self.name, message.key, part,
                        message.destination, describe(status),
                        extra=fields(call_id=message.call_id, recipient=message.destination))
            # A later part: the first ones are on their way, so no other route may send it all again.
            return SubmitOutcome.permanent(f"{name} {part}".strip(), partly_sent=index > 1)
        log.warning("%s: %s %s to %s not submitted: %s", self.name, message.key, part,
                    message.destination, reason,
                    extra=fields(call_id=message.call_id, recipient=message.destination))
        return SubmitOutcome.transient(f"{reason} {part}".strip(), retry_after)

    # -- from the SMSC ---------------------------------------------------------------------

    def _on_message(self, session: Session, message: pdu.ShortMessage) -> int:
        events = self._events
        if events is None:
            return ESME_RX_T_APPN
        try:
            if message.is_receipt:
                receipt = parse_receipt(message)
                if receipt is None:
                    # Receipt texts quote the start of the message ("text:…"): body at debug.
                    log.warning("%s: receipt without a message id from %s (esm_class 0x%02X, "
                                "TLVs %s); answered and skipped", self.name, session.peer,
                                message.esm_class,
                                ", ".join(f"0x{t:04X}" for t in message.tlvs) or "none")
                    log.debug("%s: that receipt was %r", self.name, message.content[:200])
                    return ESME_ROK
                self.counters["receipts"] += 1
                message_id = receipt_id_as_submitted(receipt.message_id, self.settings.msg_id_type)
                log.debug("%s: receipt %s %s %s", self.name, receipt.message_id, receipt.state,
                          receipt.error, extra=fields(msg_id=message_id))
                report = DeliveryReport(self.name, message_id, receipt.state, receipt.error,
                                        raw=receipt.raw)
                asyncio.get_running_loop().call_soon(self._hand_over_report, report)
            else:
                sender = message.source
                if message.source_ton == 1 and sender.isdigit():
                    sender = "+" + sender
                text = decode_short_message(message)
                self.counters["replies"] += 1
                log.info("%s: reply from %s", self.name, sender, extra=fields(recipient=sender))
                events.inbound_message(InboundMessage(self.name, sender, text))
        except Exception:
            # Answer "temporary application error" so the SMSC re-delivers it later
            # rather than us dropping a receipt or a STOP.
            log.exception("%s: could not hand over a %s from %s", self.name,
                          pdu.command_name(message.command_id), session.peer)
            return ESME_RX_T_APPN
        return ESME_ROK

    def _hand_over_report(self, report: DeliveryReport) -> None:
        """Receipts often arrive in the same read as their submit_sm_resp, or even before it.
        Handing them over one loop turn later lets the send() that is waiting for that
        response return first, so the dispatcher records the message id before it sees the
        receipt; receipts for earlier parts of a long message still being submitted are
        held until its send() returns. Either way the store never has to guess (its
        hex/decimal-tolerant matching can pick the wrong message for a receipt that beat
        its own submit response)."""
        held = self._unreported.get(_exact_id(report.message_id))
        if held is not None:
            held.append(report)
            return
        self._emit_reports([report])

    def _emit_reports(self, reports: list[DeliveryReport]) -> None:
        events = self._events
        if events is None:
            return
        for report in reports:
            try:
                events.delivery_report(report)
            except Exception:
                log.exception("%s: could not hand over the receipt for %s", self.name,
                              report.message_id)

    # -- status ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        sessions = []
        for slot in self._slots:
            sess = slot.session
            sessions.append({
                "session": slot.index,
                "mode": slot.mode,
                "bound": bool(sess and sess.bound),
                "smsc": sess.peer if sess else "",
                "outstanding": sess.outstanding if sess else 0,
                "binds": slot.binds,
            })
        senders_bound = sum(1 for slot in self._senders
                            if slot.session is not None and slot.session.bound)
        if self._closing:
            state = "closed"
        elif senders_bound:
            state = "bound"  # can send, perhaps on fewer sessions than configured
        else:
            state = "binding"
        return {
            "name": self.name,
            "type": "smpp",
            "state": state,
            "bound": sum(1 for x in sessions if x["bound"]),
            "configured": len(sessions),
            "sessions": sessions,
            "in_flight": self._in_flight,
            **dict(self.counters),
        }

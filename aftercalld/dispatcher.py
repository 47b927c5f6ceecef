"""Takes due messages from the outbox, hands them to the transport, records what happened.

The dispatcher keeps the transport's window full (`max_in_flight`; several transports sit
behind one `routing.RoutedTransport`, which picks each text's), checks the opt-out list
before every send, retries transient failures with backoff until the time-to-live, and
writes outcomes and delivery reports in batches: everything that completes within one
turn of the event loop goes into one SQLite transaction.
"""
from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast
from zoneinfo import ZoneInfo

import tenacity

from .clock import Clock, system_clock
from .config import DispatchConfig, OptOutConfig
from .logutil import fields
from .model import (
    DeliveryReport,
    InboundMessage,
    MessageState,
    OutboundMessage,
    OutcomeKind,
    SubmitOutcome,
)
from .policy import Policy, PolicyConfig
from .replies import ReplyHandler
from .store import InlineOutbox, Outbox, OutboxUnavailable, OutcomeRecord, Store, Transition, as_store, run_inline
from .transport import Transport

if TYPE_CHECKING:
    from .metrics import Metrics

log = logging.getLogger(__name__)

# How long a receipt that matched no part exactly waits for its submit response to be
# recorded before an id in another base (hex/decimal) or without leading zeros is accepted.
ORPHAN_GRACE_SECONDS = 2.0
# A shared (PostgreSQL) outbox changes under this instance's feet: another instance's lease
# runs out, or it dies with retries pending. The dispatcher looks at least this often.
SHARED_POLL_SECONDS = 1.0
# What the outbox refused to take is tried again after this long.
REFUSED_RETRY_SECONDS = 1.0
# A shared outbox's leases of messages being sent are renewed this many times per lease, so
# that a renewal late by most of a period (a busy loop, a slow round trip) still comes in time.
RENEWALS_PER_LEASE = 3


@dataclass
class _Attempt:
    """What tenacity's wait strategies read from a retry state."""

    attempt_number: int


class Dispatcher:
    def __init__(self, outbox: Outbox | Store, transport: Transport, config: DispatchConfig, *,
                 optout: OptOutConfig | None = None, default_region: str = "US",
                 clock: Clock = system_clock, policy: Policy | None = None,
                 on_transition: Callable[[Transition], None] | None = None,
                 metrics: Metrics | None = None, replies: ReplyHandler | None = None,
                 lease_seconds: float = 60.0, outcomes: Store | None = None) -> None:
        self.outbox = outbox = as_store(outbox)
        # PostgreSQL: outcomes and receipts on a connection of their own (`outcomes`), so that
        # a claim never waits behind their commit, which waits for the server's disk.
        self.outcomes = outcomes or outbox
        # An SQLite outbox is written inline (a local transaction is cheaper than a task);
        # a PostgreSQL one from tasks, so that no round trip holds the event loop.
        self._inline = isinstance(outbox, InlineOutbox)
        self.lease_seconds = lease_seconds
        self.transport = transport
        self.config = config
        self.optout = optout or OptOutConfig()
        self.default_region = default_region
        self.clock = clock
        self.on_transition = on_transition
        self.metrics = metrics
        self.policy = policy or Policy(PolicyConfig(), outbox, ZoneInfo("UTC"))
        # What customers' replies do (opt-out, HELP, forwarding, webhooks): replies.py.
        self.replies = replies or ReplyHandler(outbox, optout=self.optout, default_region=default_region,
                                               clock=clock, on_queued=self.wake)
        self._backoff = tenacity.wait_exponential_jitter(
            multiplier=config.retry_initial_seconds,
            max=config.retry_max_seconds,
            jitter=config.retry_initial_seconds / 2,
        )
        self._wake = asyncio.Event()
        self._in_flight: set[asyncio.Task] = set()
        self._pending_outcomes: list[OutcomeRecord] = []
        self._pending_reports: list[DeliveryReport] = []
        self._flush_scheduled = False
        self._flusher: asyncio.Task | None = None  # writes outcomes and reports (PostgreSQL)
        self._replies_in_flight: set[asyncio.Task] = set()  # replies being stored (PostgreSQL)
        self._timers: set[asyncio.TimerHandle] = set()  # flushes to come; cancelled by stop()
        # A shared outbox: the messages this instance claimed and has not recorded yet, whose
        # leases `_renew_leases` keeps from running out. Being sent (by id), then in
        # _pending_outcomes, then in the outcome write under way.
        self._sending: dict[int, OutboundMessage] = {}
        self._recording: list[OutcomeRecord] = []
        self._lease_lost: set[int] = set()  # warned about once; renewed no more
        self._renewer: asyncio.Task | None = None
        self._renewal_error = ""  # why renewing last failed; "" once it works
        self._closed = False  # stop() is done: the outbox may be closed from here on
        self._outbox_error = ""  # why the outbox last refused a write; "" once it takes them
        self._requeue_wanted = False  # the requeue at start met a full disk: try it again
        self._idle = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task | None = None
        self.sent_total = 0
        self.orphan_grace = ORPHAN_GRACE_SECONDS

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        await self._requeue_interrupted()
        await self.transport.start(self)
        self._task = asyncio.create_task(self._run(), name="dispatcher")
        if not self._inline:
            self._renewer = asyncio.create_task(self._renew_leases(), name="lease renewal")

    async def _requeue_interrupted(self) -> None:
        try:
            requeued = await self.outbox.requeue_interrupted(self.clock())
        except (sqlite3.Error, OutboxUnavailable) as exc:
            # A full disk at start: the daemon comes up anyway, and this is tried again
            # before each claim until it succeeds.
            self._outbox_refused(f"cannot requeue the messages the last run was sending ({exc})")
            self._requeue_wanted = True
            return
        self._requeue_wanted = False
        if requeued:
            log.warning("%d message(s) were being sent when the last run stopped; sending them again", requeued)

    def wake(self) -> None:
        self._wake.set()

    async def stop(self, timeout: float | None = None) -> None:
        """Stop claiming, let in-flight sends finish (up to `timeout`), record everything,
        close the transport. Queued messages stay in the outbox for the next start."""
        self._stopping = True
        self._wake.set()
        if self._task:
            await asyncio.gather(self._task, return_exceptions=True)
        timeout = self.config.drain_timeout_seconds if timeout is None else timeout
        if self._in_flight:
            done, pending = await asyncio.wait(self._in_flight, timeout=timeout)
            if pending:
                log.warning("%d send(s) still in flight after %.0fs; they will be retried on next start",
                            len(pending), timeout)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                # A send cancelled before it began never reached its own clean-up.
                self._in_flight.difference_update(pending)
        await self._flush_now()
        await self.transport.close()
        if self._replies_in_flight:
            await asyncio.gather(*self._replies_in_flight, return_exceptions=True)
        # What the transport handed over while closing is written now. Receipts that wait
        # for their grace stay in the outbox's orphan table for the next start; no timer
        # may fire later, on an outbox the daemon is about to close.
        await self._flush_now()
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self._renewer is not None:
            # Only now: sends and outcome writes to the last kept their leases. What is still
            # unrecorded is another instance's to send once its lease runs out.
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
            self._renewer = None
        self._closed = True
        if self._pending_outcomes or self._pending_reports:
            # The outbox still refuses writes. A message whose outcome is lost stays 'sending'
            # and is sent again at the next start (a possible duplicate rather than a loss).
            log.error("stopping with %d submit outcome(s) and %d delivery report(s) the outbox would not take "
                      "(%s): message(s) %s will be sent again at the next start",
                      len(self._pending_outcomes), len(self._pending_reports), self._outbox_error or "?",
                      ", ".join(str(o.message.id) for o in self._pending_outcomes) or "none")

    async def wait_idle(self) -> None:
        """Until nothing is due now and nothing is in flight (tests, benchmarks, drain)."""
        while True:
            self._idle.clear()
            self._wake.set()
            await self._idle.wait()
            due = await self.outbox.next_due()
            if not self._in_flight and not self._pending_outcomes and (due is None or due > self.clock()):
                return

    # -- TransportEvents ---------------------------------------------------------------

    def delivery_report(self, report: DeliveryReport) -> None:
        self._pending_reports.append(report)
        self._schedule_flush()

    def inbound_message(self, message: InboundMessage) -> None:
        if self._inline:
            run_inline(self._receive(message))
            return
        task = asyncio.create_task(self._receive(message), name="reply")
        self._replies_in_flight.add(task)
        task.add_done_callback(self._replies_in_flight.discard)

    async def _receive(self, message: InboundMessage) -> None:
        try:
            await self.replies.receive(message)
        except Exception:
            log.exception("cannot store the reply from %s", message.sender, extra=fields(recipient=message.sender))

    # -- the loop ----------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            free = self.transport.max_in_flight - len(self._in_flight)
            claimed: list[OutboundMessage] = []
            if self._requeue_wanted:
                await self._requeue_interrupted()
            if free > 0:
                try:
                    claimed = await self.outbox.claim_due(min(free, self.config.batch_size), self.clock(),
                                                          lease_seconds=self.lease_seconds)
                except (sqlite3.Error, OutboxUnavailable) as exc:
                    # A full disk: claiming is a write. Nothing new goes out, so what waits to
                    # be recorded stays bounded by the transport's window.
                    self._outbox_refused(f"cannot claim messages from the outbox ({exc})")
                    await asyncio.sleep(1)
                    continue
                except Exception:
                    log.exception("cannot read the outbox; retrying in 1s")
                    await asyncio.sleep(1)
                    continue
                self._outbox_takes_writes()
            if claimed:
                try:
                    await self._start_sends(claimed)
                except (sqlite3.Error, OutboxUnavailable) as exc:
                    # What was not sent stays claimed: this run's SQLite claims are sent at
                    # the next start, a PostgreSQL lease is taken again once it runs out.
                    self._outbox_refused(f"cannot check or hold claimed messages ({exc})")
                    await asyncio.sleep(REFUSED_RETRY_SECONDS)
                    continue
            if claimed and len(claimed) == min(free, self.config.batch_size):
                await asyncio.sleep(0)  # more may be due: let sends start, then claim again
                continue
            if not self._in_flight and not self._pending_outcomes:
                self._idle.set()
            self._wake.clear()
            timeout = None if self._inline else SHARED_POLL_SECONDS
            try:
                due = await self.outbox.next_due()
            except (sqlite3.Error, OutboxUnavailable) as exc:
                self._outbox_refused(f"cannot read the outbox ({exc})")
                due = self.clock() + REFUSED_RETRY_SECONDS
            if due is not None and free > len(claimed):
                timeout = max(0.0, min(due - self.clock(), timeout if timeout is not None else float("inf")))
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _start_sends(self, claimed: list[OutboundMessage]) -> None:
        if not self._inline:
            claimed = self._not_in_hand(claimed)
        now = self.clock()
        for message, verdict in zip(claimed, await self.policy.check(claimed, now), strict=True):
            if verdict.defer_until is not None:
                await self.outbox.defer(message, verdict.defer_until, verdict.reason, now)
                log.info("message %d to %s held: %s", message.id, message.destination, verdict.reason,
                         extra=fields(call_id=message.call_id, rule=message.rule,
                                      recipient=message.destination, state="queued"))
                continue
            if not verdict.send:
                self._emit([await self.outbox.suppress(message, verdict.reason, now)])
                continue
            task = asyncio.create_task(self._send(message))
            self._in_flight.add(task)

    async def _send(self, message: OutboundMessage) -> None:
        began = time.perf_counter()
        if not self._inline:
            self._sending[message.id] = message
        if self.metrics:
            self.metrics.in_flight.set(len(self._in_flight))
        try:
            try:
                outcome = await self.transport.send(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a transport bug must not lose the message
                log.exception("transport %s raised on message %d; will retry", self.transport.name, message.id)
                outcome = SubmitOutcome.transient(f"transport error: {type(exc).__name__}: {exc}")
            if self.metrics:
                self.metrics.submit_latency.observe(time.perf_counter() - began)
                self.metrics.in_flight.set(len(self._in_flight) - 1)
            self._pending_outcomes.append(self._outcome_record(message, outcome))
            if outcome.kind is OutcomeKind.SUBMITTED:
                self.sent_total += 1
            self._schedule_flush()
        finally:
            # Here rather than a done-callback: that is one more loop callback per message.
            self._in_flight.discard(asyncio.current_task())
            if not self._inline:
                self._sending.pop(message.id, None)  # its outcome is in _pending_outcomes now

    def _outcome_record(self, message: OutboundMessage, outcome: SubmitOutcome) -> OutcomeRecord:
        name = outcome.via or self.transport.name  # via: the one transport routing chose
        if outcome.kind is OutcomeKind.SUBMITTED:
            return OutcomeRecord(message, MessageState.SUBMITTED, "", outcome.message_ids, transport=name)
        if outcome.kind is OutcomeKind.PERMANENT:
            return OutcomeRecord(message, MessageState.FAILED, outcome.reason, transport=name)
        now = self.clock()
        if outcome.retry_after is not None:
            delay = outcome.retry_after
        else:  # tenacity's wait strategies read only attempt_number from the retry state
            delay = self._backoff(cast("tenacity.RetryCallState", _Attempt(message.attempts)))
        next_at = now + delay
        expires_at = message.created_at.timestamp() + self.config.ttl_seconds
        if next_at > expires_at:
            reason = (f"gave up after {message.attempts} attempt(s), time-to-live {self.config.ttl_seconds:g}s: "
                      f"{outcome.reason}")
            return OutcomeRecord(message, MessageState.FAILED, reason, transport=name)
        return OutcomeRecord(message, MessageState.RETRYING, outcome.reason, next_attempt_at=next_at, transport=name)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and not self._closed:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._start_flush)

    def _start_flush(self) -> None:
        if self._inline:
            run_inline(self._flush())
        elif self._flusher is None:  # else the running flusher flushes once more when done
            self._flusher = asyncio.create_task(self._flusher_run(), name="outcome writer")

    async def _flusher_run(self) -> None:
        try:
            while True:
                try:
                    await self._flush()
                except Exception:  # _flush keeps what it could not write; this is a bug
                    log.exception("writing outcomes to the outbox failed; trying again in %gs", REFUSED_RETRY_SECONDS)
                    self._flush_later(REFUSED_RETRY_SECONDS)
                if not self._flush_scheduled:
                    return
        finally:
            self._flusher = None

    async def _flush_now(self) -> None:
        """Everything handed over so far written (or kept for the next try), for stop()."""
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        await self._flush()

    def _flush_later(self, delay: float) -> None:
        def fire() -> None:
            self._timers.discard(handle)
            self._schedule_flush()

        handle = asyncio.get_running_loop().call_later(delay, fire)
        self._timers.add(handle)

    async def _flush(self) -> None:
        """One transaction for every outcome and report that arrived since the last flush."""
        self._flush_scheduled = False
        if self._closed:
            return
        outcomes, self._pending_outcomes = self._pending_outcomes, []
        reports, self._pending_reports = self._pending_reports, []
        self._recording = outcomes
        try:
            transitions: list[Transition] = []
            if outcomes:
                transitions += await self.outcomes.record_outcomes(outcomes, self.clock())
            if reports:
                transitions += await self.outcomes.apply_reports(reports, self.clock())
                # Receipts that matched nothing exactly get a looser match once their
                # submit responses have surely been recorded.
                self._flush_later(self.orphan_grace + 0.05)
            settle_before = self.clock() - self.orphan_grace
            if await self.outcomes.has_pending_orphans(settle_before):
                transitions += await self.outcomes.resolve_orphans(settle_before, self.clock())
        except Exception as exc:
            # Keep them for the next flush rather than lose them.
            if isinstance(exc, (sqlite3.Error, OutboxUnavailable)):
                self._outbox_refused(f"cannot write {len(outcomes)} outcome(s)/{len(reports)} report(s) "
                                     f"to the outbox ({exc}); they wait in memory and are retried every 1s")
            else:
                log.exception("cannot write %d outcome(s)/%d report(s) to the outbox; will retry",
                              len(outcomes), len(reports))
            self._pending_outcomes[:0] = outcomes
            self._pending_reports[:0] = reports
            self._flush_later(REFUSED_RETRY_SECONDS)
            return
        finally:
            self._recording = []
        self._outbox_takes_writes()
        self._emit(transitions)
        if outcomes:
            self._wake.set()

    # -- leases (a shared outbox) --------------------------------------------------------

    async def _renew_leases(self) -> None:
        """Every third of a lease, one statement for every message claimed and not recorded
        yet, however slow its send or its outcome's write: another instance claims a message
        only once its lease has run out, so without this a slow send could go out twice."""
        period = self.lease_seconds / RENEWALS_PER_LEASE
        while True:
            await asyncio.sleep(period)
            try:
                await self._renew_once()
            except Exception as exc:
                self._renewal_failed(exc)

    async def _renew_once(self) -> None:
        held = self._leased()
        self._lease_lost.intersection_update(held)
        wanted = [message_id for message_id in held if message_id not in self._lease_lost]
        if not wanted:
            return
        # On the claims' connection, not the outcome writer's, which may be the one waiting.
        lost = await self.outbox.renew_leases(wanted, self.clock(), lease_seconds=self.lease_seconds)
        if self._renewal_error:
            log.warning("the leases of the messages being sent are renewed again")
            self._renewal_error = ""
        unrecorded = self._sending.keys() | {o.message.id for o in self._pending_outcomes}
        for message_id in lost:
            # One whose outcome is being written (or just was) is no longer this instance's
            # to renew: not a loss.
            if message_id in unrecorded and message_id not in self._lease_lost:
                self._lease_lost.add(message_id)
                message = held[message_id]
                log.warning("message %d to %s: lease ran out while sending; another instance may send it too",
                            message.id, message.destination,
                            extra=fields(call_id=message.call_id, rule=message.rule,
                                         recipient=message.destination, state="sending"))

    def _not_in_hand(self, claimed: list[OutboundMessage]) -> list[OutboundMessage]:
        """Without the ones this instance is still sending or recording: their lease ran out
        (the outbox unreachable for a whole lease) and the claim loop took them back before
        a renewal could. The send under way, or the outcome waiting, settles them; sending
        again would be a duplicate."""
        if all(m.attempts == 1 for m in claimed):  # a first claim cannot be in hand already
            return claimed
        held = self._leased()
        kept = []
        for message in claimed:
            if message.id not in held:
                kept.append(message)
                continue
            self._lease_lost.discard(message.id)  # this instance's again: renew it
            log.warning("message %d to %s: lease ran out while sending; claimed back, not sent twice",
                        message.id, message.destination,
                        extra=fields(call_id=message.call_id, rule=message.rule,
                                     recipient=message.destination, state="sending"))
        return kept

    def _leased(self) -> dict[int, OutboundMessage]:
        held = dict(self._sending)
        for outcome in (*self._pending_outcomes, *self._recording):
            held[outcome.message.id] = outcome.message
        return held

    def _renewal_failed(self, exc: Exception) -> None:
        """Logged once until a renewal works again, not once per period."""
        first = not self._renewal_error
        self._renewal_error = str(exc) or type(exc).__name__
        if not first:
            return
        what = (f"cannot renew the leases of the messages being sent ({exc}); trying again every "
                f"{self.lease_seconds / RENEWALS_PER_LEASE:g}s. A send that outlasts its lease "
                f"(lease_seconds {self.lease_seconds:g}) may be sent by another instance too")
        if isinstance(exc, (sqlite3.Error, OutboxUnavailable)):
            log.error("%s", what)
        else:
            log.exception("%s", what)

    def _outbox_refused(self, what: str) -> None:
        """Logged once until the outbox takes writes again, not once per retry."""
        if not self._outbox_error:
            log.error("%s", what)
        self._outbox_error = what

    def _outbox_takes_writes(self) -> None:
        if self._outbox_error:
            log.warning("the outbox takes writes again; what waited in memory is written")
            self._outbox_error = ""

    def _emit(self, transitions: list[Transition]) -> None:
        log_info = log.isEnabledFor(logging.INFO)
        for t in transitions:
            # Count before logging: whoever reads the log line and then scrapes the metrics
            # (support staff, the tests) must find the change counted.
            if self.metrics:
                self.metrics.messages.labels(t.state.value).inc()
                self.metrics.outcomes.labels(t.rule, t.state.value).inc()
                if t.submitted_at and t.state.final and t.state is not MessageState.FAILED:
                    self.metrics.delivery_latency.observe(max(0.0, self.clock() - t.submitted_at))
            if log_info or t.state is not MessageState.SUBMITTED:
                _log_transition(t)
            if self.on_transition:
                self.on_transition(t)


def _log_transition(t: Transition) -> None:
    extra = fields(call_id=t.call_key, rule=t.rule, recipient=t.destination, state=t.state.value,
                   msg_id=" ".join(t.transport_ids))
    if t.state is MessageState.SUBMITTED:
        log.info("message %d to %s submitted (id %s)", t.message_id, t.destination,
                 ", ".join(t.transport_ids) or "-", extra=extra)
    elif t.state is MessageState.RETRYING:
        log.info("message %d to %s will be retried: %s", t.message_id, t.destination, t.reason, extra=extra)
    elif t.state is MessageState.DELIVERED:
        log.info("message %d to %s delivered", t.message_id, t.destination, extra=extra)
    else:
        log.warning("message %d to %s %s: %s", t.message_id, t.destination, t.state.value, t.reason, extra=extra)

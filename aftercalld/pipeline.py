"""From a finished call to messages in the outbox: rules, rendering, one transaction."""
from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from .backoff import Backoff
from .clock import Clock, system_clock
from .config import Config
from .diskreserve import DiskReserve
from .logutil import fields
from .model import CallRecord
from .rules.engine import Selection
from .rules.render import RenderedMessage, enrich, render
from .store import InlineOutbox, Outbox, OutboxUnavailable, Store, as_store, run_inline

log = logging.getLogger(__name__)


@dataclass(slots=True)  # built per call on the hot path: frozen costs a setattr per field
class Decision:
    record: CallRecord
    selection: Selection
    messages: tuple[RenderedMessage, ...]
    duplicate: bool = False  # the outbox already had this call: nothing was queued

    @property
    def summary(self) -> str:
        """The one line support staff read: what was decided and why."""
        r = self.record
        who = r.customer_number or "(no number)"
        # The call id leads: support staff copy it into `why` and `journalctl CALL_ID=`, and
        # a plain-text log (no journal fields) has nothing else to find the call by.
        head = (f"call {r.call_id} [{r.pbx}]: {r.status} {r.direction} call "
                f"{'from' if r.direction != 'outbound' else 'to'} {who}")
        if r.source == "cdr":
            head += " (backfilled from the CDR)"
        if self.duplicate:
            return f"{head}: already handled (replayed event), nothing queued"
        if self.selection.rule is None:
            return f"{head}: {self.selection.reason}"
        outs = "; ".join(
            f"{m.kind}: {'suppressed (' + m.suppressed + ')' if m.suppressed else 'queued'}"
            for m in self.messages
        )
        return f"{head} → rule {self.selection.rule.name!r} → {outs or 'no recipients'}"


# Finished calls the outbox cannot take yet (disk full, outbox unreadable) wait in memory,
# decided, up to `[general] unwritten_calls_max` (default 20,000: 400 s of calls at 50/s).
# Past it the oldest are dropped: the newest callers are the ones a text still helps, and
# old ones are what a PBX CDR backfill (which never texts calls past its max age) is for.
# Calls written per transaction when catching up: a partly freed disk still takes some, and
# the event loop is not held for one huge transaction.
CATCH_UP_CHUNK = 1_000
RETRY_MIN_SECONDS = 0.25  # a failed write costs one rolled-back transaction: retrying is cheap
RETRY_MAX_SECONDS = 2.0  # and the calls are written within this long after space is back
IDS_PER_LOG_LINE = 200


class CallHandler:
    def __init__(self, config: Config, outbox: Outbox | Store, on_queued=None, metrics=None,
                 clock: Clock = system_clock, *, unwritten_max: int | None = None,
                 reserve: DiskReserve | None = None) -> None:
        self.config = config
        self.clock = clock
        self.metrics = metrics
        self.outbox = as_store(outbox)
        # An SQLite outbox is written inline, before the event loop turns again, as it always
        # was; a PostgreSQL one by a writer task, so that no round trip holds the loop.
        self._inline = isinstance(self.outbox, InlineOutbox)
        self._writer: asyncio.Task | None = None
        self.on_queued = on_queued  # e.g. Dispatcher.wake
        self.unwritten_max = config.unwritten_calls_max if unwritten_max is None else unwritten_max
        self._pending: list[CallRecord] = []
        # Decided calls the outbox refused (sqlite3.Error, OutboxUnavailable), oldest first,
        # and the retry timer.
        self._unwritten: deque[Decision] = deque()
        self._retry = Backoff(RETRY_MIN_SECONDS, RETRY_MAX_SECONDS, jitter=lambda: 0.0)
        self._retry_timer: asyncio.TimerHandle | None = None
        self._write_error = ""  # the outbox's last error while calls wait; "" when writes succeed
        self.dropped = 0  # calls dropped past `unwritten_max` since start
        self._dropped_unlogged: list[CallRecord] = []  # named in the next summary line
        self.reserve = reserve  # released for the last write at shutdown, made again once space is back

    @property
    def unwritten(self) -> int:
        """Finished calls decided but not yet in the outbox."""
        return len(self._unwritten)

    def decide(self, record: CallRecord, *, explain: bool = False) -> Decision:
        record = enrich(record, self.config.render.agents)
        tz = self.config.timezone_for(record.pbx)
        selection = self.config.rules.select(record, tz, explain=explain)
        messages: tuple[RenderedMessage, ...] = ()
        if selection.rule is not None:
            messages = tuple(render(selection.rule, record, tz, self.config.render))
        return Decision(record, selection, messages)

    def handle(self, record: CallRecord) -> Decision:
        """`process` for one call, run to its end here: an SQLite outbox only (tests, tools)."""
        return run_inline(self.process([record]))[0]

    def handle_many(self, records: list[CallRecord], *, suppress: Mapping[str, str] | None = None) -> list[Decision]:
        """`process`, run to its end here: an SQLite outbox only (tests, tools)."""
        return run_inline(self.process(records, suppress=suppress))

    async def process(self, records: list[CallRecord], *,
                      suppress: Mapping[str, str] | None = None) -> list[Decision]:
        """Decide each call, then write them all in one transaction (group commit).
        `suppress`: call id → reason; those calls are recorded with every message
        suppressed for that reason (a call backfilled too late to text)."""
        decisions = [self.decide(r) for r in records]
        if suppress:
            for d in decisions:
                reason = suppress.get(d.record.call_id)
                if reason:
                    d.messages = tuple(m if m.suppressed else replace(m, suppressed=reason) for m in d.messages)
        return await self._write(decisions)

    async def _write(self, decisions: list[Decision]) -> list[Decision]:
        results = await self.outbox.record_calls(
            [(d.record, d.selection.rule.name if d.selection.rule else None, d.selection.reason, d.messages)
             for d in decisions],
            ttl_seconds=self.config.dispatch.ttl_seconds, now=self.clock(),
        )
        queued_any = False
        out = []
        log_info = log.isEnabledFor(logging.INFO)  # the summary line is built only if logged
        for decision, queued in zip(decisions, results, strict=True):
            if queued is None:
                decision = Decision(decision.record, decision.selection, decision.messages, duplicate=True)
            queued_any = queued_any or bool(queued)
            record = decision.record
            if log_info:
                rule = decision.selection.rule
                log.info("%s", decision.summary, extra=fields(call_id=record.call_id, pbx=record.pbx,
                                                        rule=rule.name if rule else "",
                                                        recipient=record.customer_number))
            out.append(decision)
            if self.metrics:
                self.metrics.calls.labels(record.pbx, record.status.value, record.direction.value).inc()
                if queued is not None:  # a replayed call changed nothing
                    self._count_messages(decision)
        if queued_any and self.on_queued:
            self.on_queued()
        return out

    def _count_messages(self, decision: Decision) -> None:
        """Messages are born queued, or suppressed when rendered (invalid number, landline,
        too long): both are state changes the dispatcher never sees."""
        assert self.metrics is not None
        rule = decision.selection.rule.name if decision.selection.rule else ""
        for m in decision.messages:
            state = "suppressed" if m.suppressed else "queued"
            self.metrics.messages.labels(state).inc()
            self.metrics.outcomes.labels(rule, state).inc()

    async def __call__(self, record: CallRecord) -> None:
        """The `CallSink` a source awaits. Returns at once: the call is written, with every
        other call that finished in this turn of the event loop, before the loop turns again
        and so before any transport can see its messages."""
        self._pending.append(record)
        if len(self._pending) == 1:
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Decide the calls that finished since the last flush and write them, after any
        that still wait for the outbox (in the order they finished)."""
        batch, self._pending = self._pending, []
        for record in batch:
            try:
                self._unwritten.append(self.decide(record))
            except Exception:
                # A bug on one call must neither block the others nor loop forever: the
                # call is logged whole so it can be replayed.
                log.exception("call %s from %s could not be handled; record for replay: %s",
                              record.call_id, record.pbx, _as_text(record),
                              extra=fields(call_id=record.call_id, pbx=record.pbx))
        self._drop_past_bound()
        if self._retry_timer is None:
            self._start_writing()
        # else the outbox refused the last try: its retry timer writes these too. Trying on
        # every new call would serialise a whole chunk per call only to roll it back.

    def _start_writing(self) -> None:
        if self._inline:
            run_inline(self._write_unwritten())
        elif self._writer is None:  # else the running writer takes these calls too
            self._writer = asyncio.create_task(self._writer_run(), name="call writer")
            self._writer.add_done_callback(self._writer_done)

    async def _writer_run(self) -> None:
        try:
            await self._write_unwritten()
        finally:
            # Here, not in the done callback: a flush between the two would find a writer
            # that takes no more calls.
            self._writer = None

    def _writer_done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("the call writer failed; %d call(s) wait in memory", len(self._unwritten),
                      exc_info=task.exception())
            self._wait_for_outbox(task.exception())  # type: ignore[arg-type]

    def _cancel_retry(self) -> None:
        if self._retry_timer is not None:
            self._retry_timer.cancel()
            self._retry_timer = None

    async def _write_unwritten(self) -> None:
        self._cancel_retry()
        while self._unwritten:
            # Taken off the queue while written, so that calls dropped past the bound in the
            # meantime (a PostgreSQL write lets the loop turn) are never these ones.
            chunk = [self._unwritten.popleft() for _ in range(min(CATCH_UP_CHUNK, len(self._unwritten)))]
            try:
                await self._write(chunk)
            except (sqlite3.Error, OutboxUnavailable) as exc:
                self._unwritten.extendleft(reversed(chunk))
                self._wait_for_outbox(exc)
                return
            except Exception:
                log.exception("could not write %d finished call(s); trying them one by one", len(chunk))
                if not await self._write_one_by_one(chunk):
                    return
                continue
        self._log_drops()
        if self._write_error:
            log.warning("the outbox takes calls again (after: %s); every waiting call is written",
                        self._write_error)
            self._write_error = ""
            if self.reserve is not None:
                self.reserve.ensure()
        self._retry.reset()

    async def _write_one_by_one(self, chunk: list[Decision]) -> bool:
        """After an unexpected error: each call alone, so one broken call is logged and
        skipped. False when the outbox itself refused (the rest keep waiting)."""
        for n, decision in enumerate(chunk):
            record = decision.record
            try:
                await self._write([decision])
            except (sqlite3.Error, OutboxUnavailable) as exc:
                self._unwritten.extendleft(reversed(chunk[n:]))
                self._wait_for_outbox(exc)
                return False
            except Exception:
                log.error("call %s from %s could not be handled; record for replay: %s",
                          record.call_id, record.pbx, _as_text(record),
                          extra=fields(call_id=record.call_id, pbx=record.pbx))
        return True

    def _wait_for_outbox(self, exc: BaseException) -> None:
        error = str(exc) or type(exc).__name__
        delay = self._retry.failed()
        if error != self._write_error:  # once per state change, not once per retry
            log.error("could not write finished calls to the outbox (%s); %d call(s) wait in memory "
                      "(at most %d, then the oldest are dropped) and are retried every %gs at most until "
                      "it takes them", error, len(self._unwritten), self.unwritten_max, RETRY_MAX_SECONDS)
            self._write_error = error
        self._log_drops()
        self._retry_timer = asyncio.get_running_loop().call_later(delay, self._retry_now)

    def _retry_now(self) -> None:
        self._retry_timer = None
        self._start_writing()

    def _drop_past_bound(self) -> None:
        excess = len(self._unwritten) - self.unwritten_max
        if excess <= 0:
            return
        self._dropped_unlogged.extend(self._unwritten.popleft().record for _ in range(excess))
        self.dropped += excess

    def _log_drops(self) -> None:
        """One summary per retry (every 2 s at most) rather than a line per call: each
        dropped call is named once."""
        if not self._dropped_unlogged:
            return
        dropped, self._dropped_unlogged = self._dropped_unlogged, []
        _log_ids(logging.ERROR,
                 f"the outbox still refuses calls ({self._write_error or '?'}) and {len(self._unwritten)} "
                 f"wait in memory, the most allowed (unwritten_calls_max): dropped the {len(dropped)} oldest, "
                 f"{self.dropped} since start; no text will be sent for them", dropped)

    def close(self) -> int:
        """`aclose` for an SQLite outbox, run to its end here (tests, tools)."""
        return run_inline(self.aclose())

    async def aclose(self) -> int:
        """At shutdown: one last write of the waiting calls; the ones it could not write are
        logged as lost, by call id. Returns how many were lost."""
        await self._last_write()
        if self._unwritten and self.reserve is not None and self.reserve.release(
                f"to write the {len(self._unwritten)} finished call(s) waiting at shutdown"):
            await self._last_write()
        self._cancel_retry()
        self._log_drops()
        lost = list(self._unwritten)
        self._unwritten.clear()
        if lost:
            _log_ids(logging.ERROR,
                     f"stopping with {len(lost)} finished call(s) the outbox would not take "
                     f"({self._write_error or '?'}): they are lost, no text will be sent for them",
                     (d.record for d in lost))
        return len(lost)

    async def _last_write(self) -> None:
        self._cancel_retry()
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
        self.flush()
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
        self._cancel_retry()


def call_ids(records: Iterable[CallRecord]) -> list[str]:
    """Call ids for log lines, escaped (they come from the PBX), as `pbx/call_id`, in lines
    of at most IDS_PER_LOG_LINE (journald splits longer lines)."""
    ids = [f"{r.pbx}/{r.call_id}".encode("unicode_escape").decode("ascii").replace(",", "\\x2c")
           for r in records]
    return [", ".join(ids[i:i + IDS_PER_LOG_LINE]) for i in range(0, len(ids), IDS_PER_LOG_LINE)]


def _log_ids(level: int, head: str, records: Iterable[CallRecord]) -> None:
    lines = call_ids(records)
    for n, line in enumerate(lines, 1):
        part = f" ({n}/{len(lines)})" if len(lines) > 1 else ""
        log.log(level, "%s%s: %s", head, part, line)


def _as_text(record: CallRecord) -> str:
    try:
        return record.to_json()
    except Exception:  # the record itself may be what is broken
        return repr(record)

"""From a finished call to messages in the outbox: rules, rendering, one transaction."""
from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, replace

from .clock import Clock, system_clock
from .config import Config
from .logutil import fields
from .model import CallRecord
from .rules.engine import Selection
from .rules.render import RenderedMessage, enrich, render
from .store import Outbox

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


class CallHandler:
    def __init__(self, config: Config, outbox: Outbox, on_queued=None, metrics=None,
                 clock: Clock = system_clock) -> None:
        self.config = config
        self.clock = clock
        self.metrics = metrics
        self.outbox = outbox
        self.on_queued = on_queued  # e.g. Dispatcher.wake
        self._pending: list[CallRecord] = []

    def decide(self, record: CallRecord, *, explain: bool = False) -> Decision:
        record = enrich(record, self.config.render.agents)
        tz = self.config.timezone_for(record.pbx)
        selection = self.config.rules.select(record, tz, explain=explain)
        messages: tuple[RenderedMessage, ...] = ()
        if selection.rule is not None:
            messages = tuple(render(selection.rule, record, tz, self.config.render))
        return Decision(record, selection, messages)

    def handle(self, record: CallRecord) -> Decision:
        return self.handle_many([record])[0]

    def handle_many(self, records: list[CallRecord], *, suppress: Mapping[str, str] | None = None) -> list[Decision]:
        """Decide each call, then write them all in one transaction (group commit).
        `suppress`: call id → reason; those calls are recorded with every message
        suppressed for that reason (a call backfilled too late to text)."""
        decisions = [self.decide(r) for r in records]
        if suppress:
            for d in decisions:
                reason = suppress.get(d.record.call_id)
                if reason:
                    d.messages = tuple(m if m.suppressed else replace(m, suppressed=reason) for m in d.messages)
        results = self.outbox.record_calls(
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
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            self.handle_many(batch)
            return
        except sqlite3.Error as exc:
            # The outbox could not take them (disk full, locked): keep them and try again,
            # rather than drop calls on the floor.
            log.error("could not write %d finished call(s) to the outbox (%s); retrying in 1s", len(batch), exc)
            self._pending[:0] = batch
            asyncio.get_running_loop().call_later(1.0, self.flush)
            return
        except Exception:
            log.exception("could not handle %d finished call(s); trying them one by one", len(batch))
        # A bug on one call must neither block the others nor loop forever: each call is
        # tried alone, and one that still fails is logged whole so it can be replayed.
        for record in batch:
            try:
                self.handle_many([record])
            except sqlite3.Error:
                self._pending.append(record)
            except Exception:
                log.error("call %s from %s could not be handled; record for replay: %s",
                          record.call_id, record.pbx, _as_text(record),
                          extra=fields(call_id=record.call_id, pbx=record.pbx))
        if self._pending:
            asyncio.get_running_loop().call_later(1.0, self.flush)


def _as_text(record: CallRecord) -> str:
    try:
        return record.to_json()
    except Exception:  # the record itself may be what is broken
        return repr(record)

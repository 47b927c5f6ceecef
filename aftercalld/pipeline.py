"""From a finished call to messages in the outbox: rules, rendering, one transaction."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from .config import Config
from .logutil import fields
from .model import CallRecord
from .rules.engine import Selection
from .rules.render import RenderedMessage, enrich, render
from .store import Outbox

log = logging.getLogger(__name__)


@dataclass(frozen=True)
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
        head = f"{r.status} {r.direction} call {'from' if r.direction != 'outbound' else 'to'} {who}"
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
    def __init__(self, config: Config, outbox: Outbox, on_queued=None) -> None:
        self.config = config
        self.outbox = outbox
        self.on_queued = on_queued  # e.g. Dispatcher.wake

    def decide(self, record: CallRecord, *, explain: bool = False) -> Decision:
        record = enrich(record, self.config.render.agents)
        tz = self.config.timezone_for(record.pbx)
        selection = self.config.rules.select(record, tz, explain=explain)
        messages: tuple[RenderedMessage, ...] = ()
        if selection.rule is not None:
            messages = tuple(render(selection.rule, record, tz, self.config.render))
        return Decision(record, selection, messages)

    def handle(self, record: CallRecord) -> Decision:
        decision = self.decide(record)
        rule = decision.selection.rule
        queued = self.outbox.record_call(
            decision.record, rule.name if rule else None, decision.selection.reason, decision.messages,
            ttl_seconds=self.config.dispatch.ttl_seconds,
        )
        if queued is None:
            decision = Decision(decision.record, decision.selection, decision.messages, duplicate=True)
        log.info(decision.summary, extra=fields(call_id=record.call_id, pbx=record.pbx,
                                                rule=rule.name if rule else "", recipient=record.customer_number))
        if queued and self.on_queued:
            self.on_queued()
        return decision

    async def __call__(self, record: CallRecord) -> None:
        """The `CallSink` a source awaits. Never raises: a bad record is logged, not fatal."""
        try:
            self.handle(record)
        except Exception:
            log.exception("could not handle call %s from %s", record.call_id, record.pbx,
                          extra=fields(call_id=record.call_id, pbx=record.pbx))

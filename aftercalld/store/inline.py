"""The SQLite outbox behind the same coroutine methods as `store.postgres.PgOutbox`, so that
one set of tests (and, later, one daemon) drives either.

Each call runs inline on the event loop's thread: a local SQLite transaction costs tens of
microseconds, less than handing it to a thread would, and it keeps today's speed.
"""
from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from ..model import CallRecord, DeliveryReport, OutboundMessage
from ..rules.render import RenderedMessage
from .sqlite import Outbox
from .types import (
    Answered,
    EventSink,
    OutcomeRecord,
    PolicyFacts,
    Pruned,
    ReplyEffects,
    SendCounts,
    Transition,
    WebhookDelivery,
    WebhookResult,
    WebhookRow,
)

if TYPE_CHECKING:
    from .postgres import PgOutbox

T = TypeVar("T")


class InlineOutbox:
    def __init__(self, outbox: Outbox) -> None:
        self.sync = outbox
        self.path = outbox.path

    @property
    def events(self) -> EventSink | None:
        return self.sync.events

    @events.setter
    def events(self, sink: EventSink | None) -> None:
        self.sync.events = sink

    async def close(self) -> None:
        self.sync.close()

    async def save_handover(self, pbx: str, state: str, now: float) -> None:
        return self.sync.save_handover(pbx, state, now)

    async def take_handover(self, pbx: str) -> tuple[str, float] | None:
        return self.sync.take_handover(pbx)

    async def record_calls(self, batch: Sequence[tuple[CallRecord, str | None, str, Sequence[RenderedMessage]]],
                           *, ttl_seconds: float, now: float) -> list[list[str] | None]:
        return self.sync.record_calls(batch, ttl_seconds=ttl_seconds, now=now)

    async def queue_messages(self, batch: Sequence[tuple[str, RenderedMessage]], *, ttl_seconds: float,
                             now: float) -> list[tuple[int, bool]]:
        return self.sync.queue_messages(batch, ttl_seconds=ttl_seconds, now=now)

    async def meta_get(self, key: str) -> str | None:
        return self.sync.meta_get(key)

    async def meta_set(self, key: str, value: str) -> None:
        return self.sync.meta_set(key, value)

    async def backfilled_among(self, call_keys: Iterable[str]) -> set[str]:
        return self.sync.backfilled_among(call_keys)

    async def callers_since(self, pbx: str, since: float, *, disorder: float = 3600.0) -> list[tuple[str, float]]:
        return self.sync.callers_since(pbx, since, disorder=disorder)

    async def requeue_interrupted(self, now: float) -> int:
        return self.sync.requeue_interrupted(now)

    async def claim_due(self, limit: int, now: float, *, lease_seconds: float = 60.0) -> list[OutboundMessage]:
        # One process owns a SQLite outbox: a claim is never taken over, so it needs no lease.
        return self.sync.claim_due(limit, now)

    async def renew_leases(self, message_ids: Sequence[int], now: float, *, lease_seconds: float) -> list[int]:
        # No lease to renew (see claim_due): every claim stays this process's until recorded.
        return []

    async def opted_out_among(self, numbers: Iterable[str]) -> set[str]:
        return self.sync.opted_out_among(numbers)

    async def next_due(self) -> float | None:
        return self.sync.next_due()

    async def expires_at(self, message_id: int) -> float:
        return self.sync.expires_at(message_id)

    async def record_outcomes(self, outcomes: Sequence[OutcomeRecord], now: float) -> list[Transition]:
        return self.sync.record_outcomes(outcomes, now)

    async def suppress(self, message: OutboundMessage, reason: str, now: float) -> Transition:
        return self.sync.suppress(message, reason, now)

    async def defer(self, message: OutboundMessage, until: float, reason: str, now: float) -> None:
        return self.sync.defer(message, until, reason, now)

    async def apply_reports(self, reports: Sequence[DeliveryReport], now: float) -> list[Transition]:
        return self.sync.apply_reports(reports, now)

    async def resolve_orphans(self, received_before: float, now: float) -> list[Transition]:
        return self.sync.resolve_orphans(received_before, now)

    async def has_pending_orphans(self, received_before: float) -> bool:
        return self.sync.has_pending_orphans(received_before)

    async def optout_add(self, numbers: Iterable[str], source: str, now: float) -> int:
        return self.sync.optout_add(numbers, source, now)

    async def optout_remove(self, numbers: Iterable[str]) -> list[str]:
        return self.sync.optout_remove(numbers)

    async def is_opted_out(self, number: str) -> bool:
        return self.sync.is_opted_out(number)

    async def optout_list(self) -> list[tuple[str, str, float]]:
        return self.sync.optout_list()

    async def dnd_add(self, entries: Iterable[str], source: str, now: float) -> int:
        return self.sync.dnd_add(entries, source, now)

    async def dnd_remove(self, entries: Iterable[str]) -> list[str]:
        return self.sync.dnd_remove(entries)

    async def dnd_list(self) -> list[tuple[str, str, float]]:
        return self.sync.dnd_list()

    async def dnd_matches(self, destinations: Iterable[str]) -> set[str]:
        return self.sync.dnd_matches(destinations)

    async def submitted_counts_since(self, since: float) -> tuple[int, dict[str, int]]:
        return self.sync.submitted_counts_since(since)

    async def policy_facts(self, destinations: Sequence[str], *, submitted_since: float | None) -> PolicyFacts:
        sync = self.sync
        return PolicyFacts(sync.opted_out_among(destinations), sync.dnd_matches(destinations),
                           {} if submitted_since is None else sync.last_submitted_to(destinations, submitted_since))

    async def allow_sends(self, ids: Sequence[int], destinations: Sequence[str], now: float, *,
                          day: str | None, midnight: float, cooldown_since: float | None,
                          decide: Callable[[SendCounts], Sequence[int]]) -> list[int]:
        """As `PgOutbox.allow_sends`, for one daemon: what it submitted is all there is to
        count (the daemon's `Policy` counts in memory and does not call this)."""
        total, by_rule = self.sync.submitted_counts_since(midnight) if day is not None else (0, {})
        facts = await self.policy_facts(destinations, submitted_since=cooldown_since)
        return list(decide(SendCounts(total, by_rule, facts.last_submitted, opted_out=facts.opted_out,
                                      dnd=facts.dnd)))

    async def last_submitted_to(self, destinations: Iterable[str], since: float) -> dict[str, float]:
        return self.sync.last_submitted_to(destinations, since)

    async def record_reply(self, number: str, text: str, transport: str, keyword: str, now: float,
                           window_seconds: float, *, optout: str = "",
                           effects: Callable[[int, Answered | None], ReplyEffects] | None = None
                           ) -> tuple[int, str | None]:
        return self.sync.record_reply(number, text, transport, keyword, now, window_seconds, optout=optout,
                                      effects=effects)

    async def call_record(self, call_key: str) -> str | None:
        return self.sync.call_record(call_key)

    async def last_created(self, destination: str, rule: str, since: float) -> float | None:
        return self.sync.last_created(destination, rule, since)

    async def queue_webhooks(self, rows: Sequence[WebhookRow], now: float) -> None:
        return self.sync.queue_webhooks(rows, now)

    async def requeue_webhooks(self, now: float) -> int:
        return self.sync.requeue_webhooks(now)

    async def claim_webhooks(self, free: dict[str, int], now: float, *,
                             lease_seconds: float = 120.0) -> list[WebhookDelivery]:
        return self.sync.claim_webhooks(free, now)  # one process owns a SQLite outbox: no lease

    async def record_webhook_results(self, results: Sequence[WebhookResult], now: float) -> None:
        return self.sync.record_webhook_results(results, now)

    async def next_webhook_due(self, endpoints: Iterable[str]) -> float | None:
        return self.sync.next_webhook_due(endpoints)

    async def webhook_deliveries(self, *, event_type: str | None = None, endpoint: str | None = None,
                                 state: str | None = None) -> list[dict[str, Any]]:
        return self.sync.webhook_deliveries(event_type=event_type, endpoint=endpoint, state=state)

    async def webhook_counts(self) -> dict[str, dict[str, int]]:
        return self.sync.webhook_counts()

    async def replies(self, *, numbers: Iterable[str] = (), since: float | None = None,
                      until: float | None = None) -> list[dict[str, Any]]:
        return self.sync.replies(numbers=numbers, since=since, until=until)

    async def prune(self, before: float, *, after_rowid: int = 0, limit: int = 500) -> tuple[Pruned, int | None]:
        return self.sync.prune(before, after_rowid=after_rowid, limit=limit)

    async def counts_by_state(self) -> dict[str, int]:
        return self.sync.counts_by_state()

    async def last_call_time(self) -> float | None:
        return self.sync.last_call_time()

    async def queue_depth(self) -> int:
        return self.sync.queue_depth()

    async def messages(self, *, call_key: str | None = None, destination: str | None = None,
                       since: float | None = None, until: float | None = None, rule: str | None = None,
                       state: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        return self.sync.messages(call_key=call_key, destination=destination, since=since, until=until,
                                  rule=rule, state=state, limit=limit)

    async def calls(self, *, call_key: str | None = None, callers: Sequence[str] = (), texted: str | None = None,
                    limit: int = 50) -> list[dict[str, Any]]:
        return self.sync.calls(call_key=call_key, callers=callers, texted=texted, limit=limit)

    async def parts(self, message_ids: Iterable[int]) -> dict[int, list[dict[str, Any]]]:
        return self.sync.parts(message_ids)

    async def messages_by_id(self, message_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        return self.sync.messages_by_id(message_ids)

    async def orphan_reports(self) -> list[dict[str, Any]]:
        return self.sync.orphan_reports()


# What the daemon's components await: either outbox behind the coroutine contract.
Store: TypeAlias = "InlineOutbox | PgOutbox"


def as_store(outbox: Outbox | Store) -> Store:
    """The coroutine contract for `outbox`: a synchronous SQLite `Outbox` is wrapped (once)
    in an `InlineOutbox`; a store already speaking it is returned as is."""
    if isinstance(outbox, Outbox):
        return InlineOutbox(outbox)
    return outbox


def run_inline(coro: Coroutine[Any, Any, T]) -> T:
    """Runs a coroutine that never suspends (one that awaits only an `InlineOutbox`) to its
    end, here and now, without an event loop: what lets tests and tools drive an SQLite
    outbox through the daemon's components synchronously. A coroutine that does suspend (a
    PostgreSQL round trip) is an error: it must be awaited."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("run_inline: the coroutine suspended; a PostgreSQL outbox must be awaited")

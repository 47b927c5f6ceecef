"""What every outbox implementation shares: its errors, the records it hands back, and the
rules that do not depend on the database (how receipts settle a message, how a row becomes
an OutboundMessage)."""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from .. import msgid
from ..model import Encoding, MessageState, OutboundMessage, RecipientKind, ReportState

if TYPE_CHECKING:
    from ..rules.render import RenderedMessage


class StoreError(Exception):
    pass


class OutboxUnavailable(StoreError):
    """The database could not open or read the outbox (disk full, I/O error, permissions): a state
    that can pass, unlike a schema from a newer aftercalld."""


class NoOutboxError(StoreError):
    """A read-only command found no outbox: the daemon has not run yet."""


@dataclass(slots=True)  # built per message on the hot path: frozen costs a setattr per field
class Transition:
    """One message's state change, for logging and metrics."""

    message_id: int
    call_key: str
    rule: str
    destination: str
    state: MessageState
    reason: str = ""
    transport_ids: tuple[str, ...] = ()
    submitted_at: float | None = None  # set on delivery-report transitions


@dataclass(slots=True)
class Pruned:
    """What `Outbox.prune` deleted (summed over its batches by `retention.prune`)."""

    calls: int = 0
    messages: int = 0
    receipts: int = 0  # unmatched delivery reports
    kept: int = 0  # old calls with a message still to send

    def add(self, other: Pruned) -> None:
        self.calls += other.calls
        self.messages += other.messages
        self.receipts += other.receipts
        self.kept += other.kept

    def __str__(self) -> str:
        return f"{self.calls} call(s), {self.messages} message(s) and {self.receipts} unmatched receipt(s)"


# A webhook delivery to write: (event id, event type, endpoint, JSON payload).
WebhookRow = tuple[str, str, str, str]


class EventSink(Protocol):
    """Turns message state changes into webhook rows, written in the transaction that made
    the changes: a crash cannot keep the one without the other."""

    wanted: frozenset[MessageState]  # states some endpoint listens to; empty: none

    def message_rows(self, transitions: Sequence[Transition], now: float) -> list[WebhookRow]: ...

    def written(self) -> None:
        """Rows were committed: time to post them."""


@dataclass(slots=True)
class Answered:
    """The text a reply most likely answers."""

    message_id: int
    call_key: str
    rule: str
    sender: str
    # The call's record (JSON) as written: read with the reply, so that what the reply
    # causes needs no other round trip inside its transaction.
    record: str | None = None


@dataclass(slots=True)
class ReplyEffects:
    """What a reply causes, written with it: texts to queue and webhook rows."""

    messages: list[tuple[str, RenderedMessage]] = field(default_factory=list)
    webhooks: list[WebhookRow] = field(default_factory=list)
    ttl_seconds: float = 3600.0


@dataclass(slots=True)
class PolicyFacts:
    """What the sending policy reads about a claimed batch's destinations, read together:
    one round trip to a shared outbox between a claim and its sends."""

    opted_out: set[str]
    dnd: set[str]
    last_submitted: dict[str, float]  # destination → its last submit since the cooldown began


@dataclass(slots=True)
class SendCounts:
    """What the policy decides a claimed batch from: the texts allowed (being sent, sent, or
    to be retried) on the outbox by every instance, outside the batch at hand; and the
    opt-out and DND lists' entries for the batch's destinations."""

    today: int  # since the policy's midnight, all rules together
    today_by_rule: dict[str, int]
    last_sent: dict[str, float]  # destination → its last text within the cooldown
    # Messages of the batch allowed before (retries): they have their place in the counts.
    counted: set[int] = field(default_factory=set)
    # The lists, read with the counts where a store reads them together (PostgreSQL).
    opted_out: set[str] = field(default_factory=set)
    dnd: set[str] = field(default_factory=set)


@dataclass(slots=True)
class WebhookDelivery:
    id: int
    event_id: str
    event_type: str
    endpoint: str
    payload: str
    attempts: int
    created_at: float


@dataclass(slots=True)
class WebhookResult:
    delivery_id: int
    state: str  # delivered, retrying or failed
    error: str = ""
    next_attempt_at: float | None = None


@dataclass(slots=True)  # built per message on the hot path: frozen costs a setattr per field
class OutcomeRecord:
    message: OutboundMessage
    state: MessageState  # SUBMITTED, RETRYING or FAILED
    reason: str = ""
    transport_ids: tuple[str, ...] = ()
    next_attempt_at: float | None = None
    transport: str = ""


# Keyed by ReportState, a StrEnum: the parts table's plain strings look it up too.
REPORT_TO_STATE: dict[str, MessageState] = {
    ReportState.DELIVERED: MessageState.DELIVERED,
    ReportState.UNDELIVERABLE: MessageState.UNDELIVERABLE,
    ReportState.EXPIRED: MessageState.EXPIRED,
    ReportState.REJECTED: MessageState.REJECTED,
    ReportState.DELETED: MessageState.EXPIRED,
    ReportState.UNKNOWN: MessageState.UNDELIVERABLE,
}
# When parts disagree, the message takes the worst final state.
SEVERITY = [MessageState.REJECTED, MessageState.UNDELIVERABLE, MessageState.EXPIRED, MessageState.DELIVERED]


@dataclass(slots=True)
class OutcomeRows:
    """A batch of submit outcomes as the rows each store writes, in the same shapes for both."""

    transitions: list[Transition] = field(default_factory=list)
    new_keys: list[str] = field(default_factory=list)  # match keys of the new parts: orphans may wait for them
    submitted: list[tuple] = field(default_factory=list)  # (updated_at, submitted_at, transport, id)
    parts: list[tuple] = field(default_factory=list)  # (message_id, part, transport_id, match_key, updated_at)
    retrying: list[tuple] = field(default_factory=list)  # (reason, updated_at, next_attempt_at, transport, id)
    final: list[tuple] = field(default_factory=list)  # (state, reason, updated_at, final_at, transport, id)


def outcome_rows(outcomes: Sequence[OutcomeRecord], now: float) -> OutcomeRows:
    rows = OutcomeRows()
    for o in outcomes:
        m = o.message
        if o.state is MessageState.SUBMITTED:
            rows.submitted.append((now, now, o.transport, m.id))
            for part, transport_id in enumerate(o.transport_ids, start=1):
                key = msgid.match_key(transport_id)
                rows.parts.append((m.id, part, transport_id, key, now))
                rows.new_keys.append(key)
        elif o.state is MessageState.RETRYING:
            rows.retrying.append((o.reason, now, o.next_attempt_at, o.transport, m.id))
        else:
            rows.final.append((o.state.value, o.reason, now, now, o.transport, m.id))
        rows.transitions.append(Transition(m.id, m.call_id, m.rule, m.destination, o.state, o.reason,
                                           o.transport_ids))
    return rows


def message_row(call_key: str, m: RenderedMessage, ttl_seconds: float, now: float, *,
                raw_number: str | None = None, text: str | None = None) -> tuple:
    """A new message as the 18 values of the messages table's insert, in this order: key,
    call_key, rule, recipient_kind, raw_number, destination, sender, text, encoding,
    segments, options, state, reason, next_attempt_at, expires_at, created_at, updated_at,
    final_at. `raw_number` and `text` replace the message's own when a store must clean
    them (PostgreSQL refuses NUL)."""
    state = MessageState.SUPPRESSED if m.suppressed else MessageState.QUEUED
    return (m.key, call_key, m.rule, m.kind.value, m.raw_number if raw_number is None else raw_number,
            m.destination, m.sender, m.text if text is None else text, m.encoding.value, m.segments,
            json.dumps(dict(m.options)) if m.options else "{}", state.value, m.suppressed,
            None if m.suppressed else now, now + ttl_seconds, now, now, now if m.suppressed else None)


def settle(parts: list[tuple[str, str]]) -> tuple[MessageState, str] | None:
    """A message's final state from its parts' (receipt state, error), or None while a part
    has no final receipt yet. Settling on the first failure would make the result depend on
    the order receipts arrive in: the worst one wins."""
    finals = [(REPORT_TO_STATE[s], s, e) for s, e in parts if s in REPORT_TO_STATE]
    if not parts or len(finals) < len(parts):
        return None
    settled, worst_state, worst_error = min(finals, key=lambda f: SEVERITY.index(f[0]))
    return settled, "" if settled is MessageState.DELIVERED else (worst_error or worst_state)


# Columns of `outbound_from_row`, in order.
MESSAGE_COLUMNS = (
    "id, key, call_key, rule, recipient_kind, destination, sender, text, encoding, segments, "
    "attempts, options, created_at"
)

_KINDS = {k.value: k for k in RecipientKind}  # dict lookups: Enum(value) is slow in a hot loop
_ENCODINGS = {e.value: e for e in Encoding}


def outbound_from_row(row: tuple) -> OutboundMessage:
    (id_, key, call_key, rule, kind, destination, sender, text, encoding, segments,
     attempts, options, created_at) = row
    return OutboundMessage(
        id=id_,
        key=key,
        call_id=call_key,
        rule=rule,
        recipient_kind=_KINDS[kind],
        destination=destination or "",
        sender=sender,
        text=text,
        encoding=_ENCODINGS[encoding],
        segments=segments,
        attempts=attempts,
        options=json.loads(options) if options and options != "{}" else {},
        created_at=datetime.fromtimestamp(created_at, UTC),
    )

"""The durable outbox: every message is written here, under its idempotency key, before any
transport sees it. `sqlite` is the embedded default; `types` holds what every implementation
shares."""
from .inline import InlineOutbox, Store, as_store, run_inline
from .sqlite import SCHEMA_VERSION, Outbox
from .types import (
    Answered,
    EventSink,
    NoOutboxError,
    OutboxUnavailable,
    OutcomeRecord,
    PolicyFacts,
    Pruned,
    ReplyEffects,
    SendCounts,
    StoreError,
    Transition,
    WebhookDelivery,
    WebhookResult,
    WebhookRow,
)

__all__ = [
    "SCHEMA_VERSION", "Answered", "InlineOutbox", "Store", "as_store", "run_inline",
    "EventSink", "NoOutboxError", "Outbox", "OutboxUnavailable", "OutcomeRecord",
    "PolicyFacts", "Pruned", "ReplyEffects", "SendCounts", "StoreError", "Transition", "WebhookDelivery",
    "WebhookResult", "WebhookRow",
]

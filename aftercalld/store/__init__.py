"""The durable outbox: every message is written here, under its idempotency key, before any
transport sees it. `sqlite` is the embedded default; `types` holds what every implementation
shares."""
from .sqlite import SCHEMA_VERSION, Outbox
from .types import NoOutboxError, OutboxUnavailable, OutcomeRecord, Pruned, StoreError, Transition

__all__ = [
    "SCHEMA_VERSION", "NoOutboxError", "Outbox", "OutboxUnavailable", "OutcomeRecord", "Pruned", "StoreError",
    "Transition",
]

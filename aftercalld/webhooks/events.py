"""What happened, as webhook rows: one per event and endpoint that listens to it.

Rows are made here and written by the store in the transaction of the change they report
(a message's new state, a reply): nothing the outbox recorded can miss its webhook.
"""
from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from ..model import MessageState

if TYPE_CHECKING:
    from ..store import Transition, WebhookRow
    from .config import WebhookEndpoint

MESSAGE_EVENTS = tuple(f"message.{state.value}" for state in MessageState if state is not MessageState.SENDING)
REPLY_RECEIVED = "reply.received"
OPTOUT_ADDED = "optout.added"
OPTOUT_REMOVED = "optout.removed"
EVENT_TYPES = (*MESSAGE_EVENTS, REPLY_RECEIVED, OPTOUT_ADDED, OPTOUT_REMOVED)


def event_matches(pattern: str, event_type: str) -> bool:
    """"*" is every event, "message.*" every event of a group, else the exact type."""
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return event_type.startswith(pattern[:-1])
    return pattern == event_type


def new_event_id() -> str:
    return "evt_" + uuid.uuid4().hex


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def payload(event_id: str, event_type: str, created: float, data: dict[str, Any]) -> str:
    return orjson.dumps({"id": event_id, "type": event_type, "created": _iso(created), "data": data}).decode()


class WebhookEvents:
    """The store's EventSink, and the maker of reply and opt-out rows."""

    def __init__(self, endpoints: Sequence[WebhookEndpoint], on_written: Callable[[], None] | None = None) -> None:
        self.on_written = on_written
        self.configure(endpoints)

    def configure(self, endpoints: Sequence[WebhookEndpoint]) -> None:
        self.endpoints = {e.name: e for e in endpoints}
        self._listeners = {t: tuple(e.name for e in endpoints if e.wants(t)) for t in EVENT_TYPES}
        self.wanted = frozenset(state for state in MessageState if self._listeners.get(f"message.{state.value}"))

    def listeners(self, event_type: str) -> tuple[str, ...]:
        return self._listeners.get(event_type, ())

    def written(self) -> None:
        if self.on_written is not None:
            self.on_written()

    def message_rows(self, transitions: Sequence[Transition], now: float) -> list[WebhookRow]:
        rows: list[WebhookRow] = []
        created = _iso(now)
        for t in transitions:
            event_type = f"message.{t.state.value}"
            endpoints = self._listeners.get(event_type)
            if not endpoints:
                continue
            event_id = new_event_id()
            body = orjson.dumps({"id": event_id, "type": event_type, "created": created, "data": {
                "message_id": t.message_id, "call_id": t.call_key, "rule": t.rule, "to": t.destination,
                "state": t.state.value, "reason": t.reason, "transport_ids": list(t.transport_ids),
            }}).decode()
            rows.extend((event_id, event_type, name, body) for name in endpoints)
        return rows

    def rows(self, event_type: str, data: dict[str, Any], now: float,
             also: Iterable[str] = ()) -> list[WebhookRow]:
        """One event for its listeners and the endpoints in `also` (a reply routed to
        "webhook:NAME"), each endpoint once."""
        endpoints = list(dict.fromkeys([*self.listeners(event_type), *(a for a in also if a in self.endpoints)]))
        if not endpoints:
            return []
        event_id = new_event_id()
        body = payload(event_id, event_type, now, data)
        return [(event_id, event_type, name, body) for name in endpoints]

"""Shared helpers for the SMPP tests: settings for a simulator port, a recording
TransportEvents, and OutboundMessage builders."""
from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from datetime import UTC, datetime

from aftercalld.model import DeliveryReport, Encoding, InboundMessage, OutboundMessage, RecipientKind
from aftercalld.rules.encoding import choose_encoding, split_segments
from aftercalld.smpp.config import SmppSettings

# Transports never read when a message was queued (only the dispatcher's time-to-live does).
QUEUED_AT = datetime(2026, 1, 1, tzinfo=UTC)

_ids = itertools.count(1)


def settings(port: int | list[int], **overrides) -> SmppSettings:
    ports = port if isinstance(port, list) else [port]
    base = dict(
        hosts=tuple(("127.0.0.1", p) for p in ports),
        system_id="esme",
        password="secret",
        response_timeout=2.0,
        connect_timeout=2.0,
        reconnect_min=0.02,
        reconnect_max=0.2,
        throttle_pause=0.01,
        drain_timeout=2.0,
    )
    base.update(overrides)
    return SmppSettings(**base)


def message(text: str = "Thanks for calling ACME", destination: str = "+447700900123",
            sender: str = "ACME", **kw) -> OutboundMessage:
    n = next(_ids)
    encoding = choose_encoding(text)
    return OutboundMessage(
        id=n, key=f"call{n}:rule:caller", call_id=f"call{n}", rule="rule",
        recipient_kind=RecipientKind.CALLER, destination=destination, sender=sender,
        text=text, encoding=encoding, segments=len(split_segments(text, encoding)), created_at=QUEUED_AT, **kw)


async def start_bound(transport, events=None, timeout: float = 10.0) -> None:
    """Start the transport (it binds in the background) and wait until every session is up."""
    await transport.start(events if events is not None else Events())
    assert await transport.until_bound(timeout), transport.status()


class Events:
    """A TransportEvents that records what arrives and lets a test await a condition."""

    def __init__(self) -> None:
        self.reports: list[DeliveryReport] = []
        self.inbound: list[InboundMessage] = []
        self._watchers: list[tuple[Callable[[], bool], asyncio.Future]] = []

    def delivery_report(self, report: DeliveryReport) -> None:
        self.reports.append(report)
        self._changed()

    def inbound_message(self, message: InboundMessage) -> None:
        self.inbound.append(message)
        self._changed()

    def _changed(self) -> None:
        for pred, fut in self._watchers:
            if not fut.done() and pred():
                fut.set_result(None)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        if predicate():
            return
        fut = asyncio.get_running_loop().create_future()
        self._watchers.append((predicate, fut))
        await asyncio.wait_for(fut, timeout)


__all__ = ["Encoding", "Events", "message", "settings"]


class LogWaiter:
    """Await a log line containing `needle` (instead of sleeping and hoping)."""

    def __init__(self, needle: str, logger: str = "aftercalld") -> None:
        import logging

        self.needle = needle
        self.future = asyncio.get_running_loop().create_future()
        waiter = self

        class _Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if waiter.needle in record.getMessage() and not waiter.future.done():
                    waiter.future.set_result(record.getMessage())

        self._logger = logging.getLogger(logger)
        self._handler = _Handler(logging.DEBUG)
        self._logger.addHandler(self._handler)
        self._old_level = self._logger.level
        if self._logger.getEffectiveLevel() > logging.WARNING:
            self._logger.setLevel(logging.WARNING)

    async def wait(self, timeout: float = 5.0) -> str:
        try:
            return await asyncio.wait_for(self.future, timeout)
        finally:
            self._logger.removeHandler(self._handler)
            self._logger.setLevel(self._old_level)


def enqueue(outbox, texts: list[str], destination: str = "+447700900{:03d}", sender: str = "ACME",
            options: dict | None = None) -> None:
    """Queue one message per text in the real outbox, as the pipeline would (one call each,
    all in one transaction)."""
    from datetime import datetime

    from aftercalld.model import CallRecord
    from aftercalld.rules.render import RenderedMessage

    now = datetime.now(UTC)
    batch = []
    for i, text in enumerate(texts):
        call_id = f"bench-{next(_ids)}"
        record = CallRecord(call_id=call_id, pbx="pbx", direction="inbound", status="missed",
                            caller_number="+447700900123", start_time=now, end_time=now)
        encoding = choose_encoding(text)
        dest = destination.format(i % 1000) if "{" in destination else destination
        rendered = RenderedMessage(
            key=f"pbx/{call_id}:missed:caller", rule="missed", kind=RecipientKind.CALLER,
            raw_number=dest, destination=dest, sender=sender, text=text, encoding=encoding,
            segments=len(split_segments(text, encoding)), options=options or {})
        batch.append((record, "missed", "rule missed matched", [rendered]))
    outbox.record_calls(batch, ttl_seconds=3600, now=now.timestamp())

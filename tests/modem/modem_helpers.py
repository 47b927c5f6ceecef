"""Shared pieces for the modem tests: a recording TransportEvents, settings tuned for
fast tests, and messages as the dispatcher would hand them over."""
from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

from modem_sim import ModemSim

from aftercalld.model import DeliveryReport, InboundMessage, OutboundMessage, RecipientKind
from aftercalld.modem import ModemSettings, ModemTransport, make_transport
from aftercalld.rules.encoding import analyse

_ids = itertools.count(1)


class RecordingEvents:
    def __init__(self) -> None:
        self.reports: asyncio.Queue[DeliveryReport] = asyncio.Queue()
        self.inbound: asyncio.Queue[InboundMessage] = asyncio.Queue()

    def delivery_report(self, report: DeliveryReport) -> None:
        self.reports.put_nowait(report)

    def inbound_message(self, message: InboundMessage) -> None:
        self.inbound.put_nowait(message)


def fast_settings(device: Path | str, **overrides) -> ModemSettings:
    values = dict(device=str(device), command_timeout=0.5, send_timeout=2.0, poll_interval=0.2,
                  reopen_max_seconds=0.2, rate_per_minute=60000.0, registration_timeout=0.5)
    values.update(overrides)
    return ModemSettings(**values)


def message(text: str, destination: str = "+447700900123") -> OutboundMessage:
    info = analyse(text)
    n = next(_ids)
    return OutboundMessage(id=n, key=f"call{n}:rule:caller", call_id=f"call{n}", rule="missed",
                           recipient_kind=RecipientKind.CALLER, destination=destination,
                           sender="ACME", text=text, encoding=info.encoding, segments=info.segments,
                           created_at=datetime(2026, 1, 1, tzinfo=UTC))


@contextlib.asynccontextmanager
async def running(sim: ModemSim, *, wait_ready: bool = True,
                  **overrides) -> AsyncIterator[tuple[ModemTransport, RecordingEvents]]:
    transport = make_transport(fast_settings(sim.link, **overrides), name="gsm1")
    assert isinstance(transport, ModemTransport)
    events = RecordingEvents()
    await transport.start(events)
    try:
        if wait_ready:
            assert await transport.wait_ready(5), transport.status()
        yield transport, events
    finally:
        await transport.close()


def enqueue(outbox, texts: list[str], destination: str = "+447700900123") -> None:
    """Queue one message per text in the real outbox, as the pipeline does."""
    from datetime import datetime

    from aftercalld.model import CallRecord
    from aftercalld.rules.render import RenderedMessage

    now = datetime.now(UTC)
    batch = []
    for text in texts:
        call_id = f"modem-{next(_ids)}"
        record = CallRecord(call_id=call_id, pbx="pbx", direction="inbound", status="missed",
                            caller_number=destination, start_time=now, end_time=now)
        info = analyse(text)
        rendered = RenderedMessage(
            key=f"pbx/{call_id}:missed:caller", rule="missed", kind=RecipientKind.CALLER,
            raw_number=destination, destination=destination, sender="ACME", text=text,
            encoding=info.encoding, segments=info.segments)
        batch.append((record, "missed", "rule missed matched", [rendered]))
    outbox.record_calls(batch, ttl_seconds=3600, now=now.timestamp())

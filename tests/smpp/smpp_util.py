"""Shared helpers for the SMPP tests: settings for a simulator port, a recording
TransportEvents, and OutboundMessage builders."""
from __future__ import annotations

import asyncio
import itertools
from typing import Callable

from aftercalld.model import DeliveryReport, Encoding, InboundMessage, OutboundMessage, RecipientKind
from aftercalld.rules.encoding import choose_encoding, split_segments
from aftercalld.smpp.config import SmppSettings

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
        text=text, encoding=encoding, segments=len(split_segments(text, encoding)), **kw)


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

"""The contract between the dispatcher and the ways a text leaves the building.

A transport turns one `OutboundMessage` into parts on the wire and answers with a
`SubmitOutcome`. It never touches the outbox itself: the dispatcher records outcomes, and
delivery reports and replies flow back through `TransportEvents`, so the store can write
them in batches.
"""
from __future__ import annotations

import abc
from typing import Any, Protocol

from .model import DeliveryReport, InboundMessage, OutboundMessage, SubmitOutcome


class TransportEvents(Protocol):
    """Where a transport reports what arrives later. Both calls must not block."""

    def delivery_report(self, report: DeliveryReport) -> None: ...

    def inbound_message(self, message: InboundMessage) -> None: ...


class Transport(abc.ABC):
    #: how many `send()` calls the dispatcher may have outstanding at once
    #: (SMPP: sessions x window; a modem: 1).
    max_in_flight: int = 1

    def __init__(self, name: str) -> None:
        self.name = name

    @abc.abstractmethod
    async def start(self, events: TransportEvents) -> None:
        """Connect/bind. Return once the transport can take sends (or keeps trying in the
        background: `send` then answers transient until it is up)."""

    @abc.abstractmethod
    async def send(self, message: OutboundMessage) -> SubmitOutcome:
        """Submit one message (all its parts). Must not raise for transport errors:
        report them as a transient or permanent outcome with a reason."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop taking sends, let in-flight ones finish or fail, unbind, disconnect."""

    def is_up(self) -> bool:
        """Whether a send now can go out (an SMPP bind, a registered modem). Routes fail
        over from a transport that has not been up for its `failover_after` seconds; it
        is asked often, so it must be cheap."""
        return True

    def status(self) -> dict[str, Any]:
        """A small JSON-able summary for `aftercalld status` and STATUS=."""
        return {"name": self.name}

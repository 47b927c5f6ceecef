"""The dry-run transport: logs what would be sent and pretends it was submitted."""
from __future__ import annotations

import logging

from .logutil import fields
from .model import OutboundMessage, SubmitOutcome
from .rules.encoding import split_segments
from .transport import Transport, TransportEvents

log = logging.getLogger(__name__)


class LogTransport(Transport):
    max_in_flight = 1000  # nothing on a wire to protect

    def __init__(self, name: str = "log") -> None:
        super().__init__(name)
        self.sent: list[OutboundMessage] = []  # for `demo` and tests; bounded by `keep`
        self.keep = 0

    async def start(self, events: TransportEvents) -> None:
        log.info("dry run: messages are logged, not sent")

    async def send(self, message: OutboundMessage) -> SubmitOutcome:
        parts = split_segments(message.text, message.encoding) if message.segments > 1 else [message.text]
        if log.isEnabledFor(logging.INFO):
            log.info("dry run: would send %d part(s) %s from %s to %s", len(parts), message.encoding.value,
                     message.sender, message.destination,
                     extra=fields(call_id=message.call_id, rule=message.rule, recipient=message.destination))
        log.debug("dry run text for %s: %r", message.destination, message.text)
        if self.keep:
            self.sent.append(message)
            del self.sent[:-self.keep]
        return SubmitOutcome.submitted(*(f"dry-{message.id}-{i}" for i in range(1, len(parts) + 1)))

    async def close(self) -> None:
        pass

    def status(self) -> dict:
        return {"name": self.name, "type": "log", "state": "dry run"}

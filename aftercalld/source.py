"""The contract between a PBX connection (or a recorded trace) and the rest of the daemon.

A source owns its connection and its protocol-specific tracker; what it hands on is only
finished `CallRecord`s.
"""
from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from .model import CallRecord

CallSink = Callable[[CallRecord], Awaitable[None]]


def status_time(epoch: float | None) -> str | None:
    """Times in `status()` dicts: ISO 8601 UTC, or None for never."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


class CallSource(abc.ABC):
    def __init__(self, name: str) -> None:
        self.name = name  # the PBX name, put on every CallRecord

    @abc.abstractmethod
    async def run(self, on_call: CallSink) -> None:
        """Connect, track calls and await `on_call` for each finished one; reconnect after
        any loss. Runs until cancelled; never raises for protocol or network trouble."""

    def status(self) -> dict[str, Any]:
        return {"name": self.name}

"""Capped exponential backoff with jitter, for reconnect loops and task restarts.

A failure grows the delay. A connection that came up counts as a success only once it has
stayed up for `healthy_after` seconds (by default the backoff ceiling): a peer that accepts
a login or bind and then sends junk or hangs up must meet the same growing delay as one
that refuses the connection, or it gets a reconnect storm. After a healthy session the
first reconnect is immediate: a link blip should cost as little as possible.
"""
from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    def __init__(self, minimum: float, maximum: float, *, healthy_after: float | None = None,
                 jitter: Callable[[], float] = random.random) -> None:
        self.minimum = minimum
        self.maximum = max(minimum, maximum)
        self.healthy_after = self.maximum if healthy_after is None else healthy_after
        self.failures = 0  # in a row
        self._jitter = jitter

    def failed(self) -> float:
        """One more failure in a row; returns how long to wait before the next try."""
        delay = min(self.maximum, self.minimum * (2 ** min(self.failures, 30)))
        self.failures += 1
        # Up to half the delay off, so that many clients of one peer do not retry in step.
        return delay * (1.0 - 0.5 * self._jitter())

    def ended(self, lasted: float) -> float:
        """A session that came up has ended after `lasted` seconds: the wait before the next
        connect (0 after a healthy one)."""
        if lasted >= self.healthy_after:
            self.failures = 0
            return 0.0
        return self.failed()

    def reset(self) -> None:
        self.failures = 0


__all__ = ["Backoff"]

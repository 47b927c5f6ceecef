"""Token buckets for submits per second, per session and per account.

A GCRA ("virtual scheduling") bucket: each caller reserves the next free slot and sleeps
until it, so waiters are served in arrival order without a thundering herd, and the cost is
O(1) whatever the number of waiters. Sleeping here *is* the rate limit, not synchronisation.
"""
from __future__ import annotations

import asyncio
import time


class TokenBucket:
    def __init__(self, rate: float, burst: int | None = None,
                 clock=time.monotonic) -> None:
        """`rate` tokens per second (0 = unlimited); up to `burst` may go back to back."""
        self.rate = float(rate)
        self._interval = 1.0 / self.rate if self.rate > 0 else 0.0
        burst = max(1, burst if burst is not None else max(1, int(self.rate // 10)))
        self._tolerance = self._interval * (burst - 1)
        self._clock = clock
        self._tat = 0.0  # theoretical arrival time of the next token

    @property
    def unlimited(self) -> bool:
        return self._interval == 0.0

    def reserve(self) -> float:
        """Take the next slot; return how long to wait before using it (0 = now)."""
        now = self._clock()
        if self._interval == 0.0:
            return max(0.0, self._tat - now)
        tat = self._tat if self._tat > now else now
        self._tat = tat + self._interval
        wait = tat - self._tolerance - now
        return wait if wait > 0 else 0.0

    async def acquire(self) -> None:
        wait = self.reserve()
        if wait > 0:
            await asyncio.sleep(wait)

    def pause(self, seconds: float) -> None:
        """The SMSC said slow down: no slot is handed out for `seconds`."""
        until = self._clock() + seconds
        if until > self._tat:
            self._tat = until

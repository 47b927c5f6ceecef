"""The one clock every component reads the date and time from.

A clock is a callable that returns Unix time in seconds. The daemon and the CLI build one
(`system_clock`) and hand it down; tests hand down a fixed or stepping one, so no test
depends on today's date. Nothing else reads `time.time()` or `datetime.now()`.

Durations (timeouts, backoff, token buckets, the event loop) use the monotonic clock,
which tells how long something took and nothing about the date, so it is not injected.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], float]


def system_clock() -> float:
    return time.time()


def utc_now(clock: Clock) -> datetime:
    """The clock's time as an aware UTC datetime."""
    return datetime.fromtimestamp(clock(), UTC)

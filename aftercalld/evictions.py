"""Calls a tracker drops because too many are open at once, logged as a summary.

A PBX (or something pretending to be one) that opens calls and never ends them must not
grow memory without end, and must not flood the journal either: the trackers cap their open
calls and report the drops here, which logs the first at once and then at most one line
per interval with the count since the last line.
"""
from __future__ import annotations

import logging

from .logutil import fields

SUMMARY_INTERVAL_SECONDS = 10.0


class OverflowLog:
    def __init__(self, logger: logging.Logger, pbx: str, limit: int,
                 interval: float = SUMMARY_INTERVAL_SECONDS) -> None:
        self.log = logger
        self.pbx = pbx
        self.limit = limit
        self.interval = interval
        self.total = 0  # every drop since start (also in the tracker's stats)
        self.pending = 0  # drops not logged yet
        self._next = float("-inf")

    def dropped(self, now: float) -> None:
        self.total += 1
        self.pending += 1
        if now >= self._next:
            self.flush(now)

    def flush(self, now: float) -> None:
        """Log the drops not yet logged, if the interval allows (call it now and then)."""
        if not self.pending or now < self._next:
            return
        self.log.warning("%d call(s) in progress dropped without a record: more than %d calls open at once "
                         "(oldest dropped first; %d dropped since start, next summary in %.0f s at the earliest)",
                         self.pending, self.limit, self.total, self.interval, extra=fields(pbx=self.pbx))
        self.pending = 0
        self._next = now + self.interval

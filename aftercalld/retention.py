"""How long the outbox keeps finished calls: `[general] keep_days`, `aftercalld prune`."""
from __future__ import annotations

import asyncio
import logging

from .clock import Clock
from .store import Outbox, Pruned, Store, as_store

log = logging.getLogger(__name__)

# Delivery receipts arrive within the SMSC's validity period, at most a few days: a call
# pruned sooner could lose its receipt, and `why` would have nothing to show for it.
MIN_KEEP_DAYS = 7
PRUNE_EVERY_SECONDS = 3600.0


async def prune(outbox: Outbox | Store, keep_days: float, now: float) -> Pruned:
    """Delete what is older than `keep_days`, in short transactions with the event loop
    free between them (the daemon keeps taking calls)."""
    before = now - keep_days * 86400
    store = as_store(outbox)
    total, after_rowid = await store.prune(before)
    while after_rowid is not None:
        await asyncio.sleep(0)
        batch, after_rowid = await store.prune(before, after_rowid=after_rowid)
        total.add(batch)
    return total


async def prune_periodically(outbox: Outbox | Store, keep_days: float, clock: Clock,
                             every: float = PRUNE_EVERY_SECONDS) -> None:
    """The daemon's housekeeping: at start, then every hour. A failure is logged and
    tried again at the next round."""
    while True:
        try:
            pruned = await prune(outbox, keep_days, clock())
            if pruned.calls or pruned.receipts:
                log.info("outbox: removed %s older than %g days", pruned, keep_days)
            if pruned.kept:
                log.info("outbox: kept %d call(s) older than %g days with a message still to send",
                         pruned.kept, keep_days)
        except Exception:
            log.exception("outbox: removing calls older than %g days failed; trying again in %.0fs", keep_days, every)
        await asyncio.sleep(every)

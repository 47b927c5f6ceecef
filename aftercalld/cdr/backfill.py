"""When to read the CDRs, and what becomes of the calls found there.

The daemon owns one `Backfill`. It reads each PBX's CDRs when that PBX's connection comes
up, at start and after every reconnect (`watch` sees a source go up; a source may also call
`request`), from where the last read stopped (kept in the outbox's meta table, so a restart
reads only what is new and the first start after install reads nothing old).

Every call found goes through the live path (`CallHandler.handle_many`) with
``source = "cdr"``: the same rules, and the same idempotency key, so a call the tracker
already recorded is skipped. A call that ended more than ``backfill_max_age`` ago is
recorded with its messages suppressed ("backfilled call older than backfill_max_age"), so
`why` explains it and nobody is texted about yesterday's call.
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

from ..classify import DirectionSettings, build_record
from ..clock import Clock, system_clock
from ..logutil import fields
from ..model import CallRecord
from ..pbxconfig import PbxConfig
from . import asterisk, freeswitch
from .sources import CdrStore, make_store

log = logging.getLogger(__name__)

TOO_OLD_REASON = "backfilled call older than backfill_max_age"
# A CDR row without the call's id is the same call as a live one from the same number
# recorded this close to the row's end (PBX clock against ours).
SAME_CALL_WINDOW_SECONDS = 120.0
# After a reconnect, events already on the wire are handled first (the live record, with
# its bridged talk time, is the better one when both exist).
RECONNECT_SETTLE_SECONDS = 2.0
# The first read after start waits for the PBX's first connection: the calls handed over at
# the last stop are settled by it first (a PBX restarted meanwhile makes them interrupted,
# which an Asterisk CDR cannot say: read first, they were texted as missed). A PBX that does
# not come up has its CDRs read anyway this long after start.
START_WAIT_SECONDS = 10.0
WATCH_EVERY_SECONDS = 1.0
# A failed run (file unreadable, database down, outbox full) is tried again after this,
# doubling up to the cap, until one succeeds.
RETRY_MIN_SECONDS = 30.0
RETRY_MAX_SECONDS = 600.0
_BATCH = 200  # calls per outbox transaction; the event loop turns between two


@dataclass
class BackfillResult:
    recovered: int = 0  # calls recorded from the CDR (new to the outbox)
    too_old: int = 0  # of those, recorded without texting
    known: int = 0  # calls the outbox already had (seen live, or read before)
    uncertain: int = 0  # recorded, not texted: the CDR cannot say who answered


def position_key(pbx: str) -> str:
    return f"cdr_position/{pbx}"


class Backfill:
    def __init__(self, pbxs: Iterable[PbxConfig], handler, *, metrics=None, clock: Clock = system_clock) -> None:
        self.handler = handler  # a CallHandler: rules, rendering, the outbox
        self.clock = clock
        self.pbxs = {p.name: p for p in pbxs if p.cdr is not None}
        self.stores: dict[str, CdrStore] = {name: make_store(p.cdr, p.timezone) for name, p in self.pbxs.items()}
        self._locks = {name: asyncio.Lock() for name in self.pbxs}
        self._tasks: set[asyncio.Task] = set()
        self._warned_no_ids: set[str] = set()
        self._failures: dict[str, int] = {}
        self._retry_pending: set[str] = set()
        self._read: set[str] = set()  # PBXs read at least once since start
        self.totals = BackfillResult()
        self._counter = None
        if metrics is not None and self.pbxs:
            from prometheus_client import Counter

            self._counter = Counter("aftercalld_cdr_backfilled_calls_total",
                                    "Calls recovered from the PBX's CDRs (too_old: recorded, not texted)",
                                    ["pbx", "age"], registry=metrics.registry)

    def __bool__(self) -> bool:
        return bool(self.pbxs)

    @property
    def outbox(self):
        return self.handler.outbox

    # ------------------------------------------------------------------ triggers

    def request(self, pbx: str, delay: float = 0.0) -> None:
        """Schedule a backfill of `pbx` (a source calls this when it reconnects)."""
        if pbx in self.pbxs:
            self._schedule(pbx, delay)

    def _schedule(self, pbx: str, delay: float, retry: bool = False, if_unread: bool = False) -> None:
        self._track(self._run_logged(pbx, delay, retry, if_unread), pbx)

    def _track(self, work: Coroutine[Any, Any, None], pbx: str) -> None:
        task = asyncio.create_task(work, name=f"cdr backfill {pbx}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def start(self) -> None:
        """The read at start: at the first connection (`watch`), or START_WAIT_SECONDS
        after start for a PBX that did not come up by then."""
        for name in self.pbxs:
            self._track(self._read_at_start(name), name)

    async def _read_at_start(self, pbx: str) -> None:
        try:
            first_start = await self.outbox.meta_get(position_key(pbx)) is None
        except Exception as exc:  # the outbox is not there yet (PostgreSQL down, disk): read later
            log.warning("pbx %s: cannot read the CDR position (%s); reading the CDR in %gs", pbx, exc,
                        START_WAIT_SECONDS)
            first_start = False
        if first_start:
            # The first start after install only marks where "now" is in the CDRs (it
            # records nothing): at once, or a crash before the first connection would move
            # "now" past calls that end meanwhile.
            await self._run_logged(pbx, 0.0)
        else:
            await self._run_logged(pbx, START_WAIT_SECONDS, if_unread=True)

    async def watch(self, sources: list) -> None:
        """Backfill a PBX each time its source (re)connects. A connection is told from the
        last one by its start time and count in `status()`, so a blip shorter than one look
        is not missed."""
        seen: dict[str, tuple] = {}
        while True:
            for source in sources:
                try:
                    status = source.status()
                except Exception:  # a status bug must not stop the backfills of every PBX
                    log.exception("pbx %s: cannot read the connection state for CDR backfill", source.name)
                    continue
                if str(status.get("state", "")).lower() not in ("connected", "up", "ready"):
                    continue
                session = (status.get("connected_since"), status.get("sessions"), status.get("connects"))
                if seen.get(source.name) != session:
                    seen[source.name] = session
                    self.request(source.name, RECONNECT_SETTLE_SECONDS)
            await asyncio.sleep(WATCH_EVERY_SECONDS)

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run_logged(self, pbx: str, delay: float, retry: bool = False, if_unread: bool = False) -> None:
        if delay:
            await asyncio.sleep(delay)
        if if_unread and pbx in self._read:
            return
        if retry:
            self._retry_pending.discard(pbx)
        try:
            await self.run(pbx)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bad file or a database down must not take anything else down
            failures = self._failures[pbx] = self._failures.get(pbx, 0) + 1
            wait = min(RETRY_MAX_SECONDS, RETRY_MIN_SECONDS * 2 ** (failures - 1))
            log.error("pbx %s: CDR backfill from %s failed: %s: %s; trying again in %gs", pbx,
                      self.stores[pbx].describe(), type(exc).__name__, exc, wait, extra=fields(pbx=pbx))
            if pbx not in self._retry_pending:  # one retry waiting per PBX, however many runs failed
                self._retry_pending.add(pbx)
                self._schedule(pbx, wait, retry=True)
        else:
            self._failures.pop(pbx, None)

    # ------------------------------------------------------------------ one run

    async def run(self, pbx: str) -> BackfillResult:
        """Read what is new in `pbx`'s CDRs and record the calls found; returns the counts."""
        result = BackfillResult()
        async with self._locks[pbx]:
            self._read.add(pbx)
            store = self.stores[pbx]
            config = self.pbxs[pbx]
            while True:
                raw = await self.outbox.meta_get(position_key(pbx))
                position: dict[str, Any] | None = json.loads(raw) if raw else None
                rows, new_position = await asyncio.to_thread(store.read, position, self.clock())
                if position is None:
                    log.info("pbx %s: CDR backfill starts from now at %s (earlier calls are not read)",
                             pbx, store.describe(), extra=fields(pbx=pbx))
                if rows:
                    # Grouping and classifying a read are pure work: off the event loop too.
                    found = await asyncio.to_thread(_classify, config, store, rows)
                    await self._record(config, found, result)
                await self.outbox.meta_set(position_key(pbx), json.dumps(new_position))
                if position is None or new_position == position:  # first run: only where to start
                    break
        log.info("pbx %s: backfilled %d call(s) from CDR, %d too old to text%s", pbx, result.recovered,
                 result.too_old, f", {result.uncertain} not texted (the CDR does not say who answered)"
                 if result.uncertain else "", extra=fields(pbx=pbx))
        self.totals.recovered += result.recovered
        self.totals.too_old += result.too_old
        self.totals.known += result.known
        self.totals.uncertain += result.uncertain
        if self._counter is not None:
            self._counter.labels(pbx, "recent").inc(result.recovered - result.too_old)
            self._counter.labels(pbx, "too_old").inc(result.too_old)
        return result

    async def _record(self, pbx: PbxConfig, found: list[tuple[Any, CallRecord]], result: BackfillResult) -> None:
        now = self.clock()
        records: list[CallRecord] = []
        suppress: dict[str, str] = {}
        recent: list[tuple[str, float]] | None = None
        for call, record in found:
            if not call.by_id and pbx.name not in self._warned_no_ids:
                self._warned_no_ids.add(pbx.name)
                log.warning("pbx %s: %s has no uniqueid/linkedid columns: calls are grouped by caller id and time, "
                            "and told from live ones by number and time only (set loguniqueid = yes and "
                            "newcdrcolumns = yes in cdr.conf)", pbx.name, self.stores[pbx.name].describe(),
                            extra=fields(pbx=pbx.name))
            if not call.by_id:
                if recent is None:
                    since = min(c.end for c, _ in found) - SAME_CALL_WINDOW_SECONDS
                    recent = await self.outbox.callers_since(pbx.name, since)
                if any(caller == record.customer_number and abs(created - call.end) <= SAME_CALL_WINDOW_SECONDS
                       for caller, created in recent):
                    result.known += 1  # recorded live already, under the tracker's id
                    continue
            records.append(record)
            if record.end_time is not None and now - record.end_time.timestamp() > pbx.backfill_max_age:
                suppress[record.call_id] = TOO_OLD_REASON
            elif pbx.type != "asterisk" and (why := freeswitch.uncertain(call)):
                suppress[record.call_id] = why
        for i in range(0, len(records), _BATCH):
            if i:
                await asyncio.sleep(0)  # a long backlog must not hold the live calls back
            for decision in await self.handler.process(records[i:i + _BATCH], suppress=suppress):
                if decision.duplicate:
                    result.known += 1
                    continue
                result.recovered += 1
                reason = suppress.get(decision.record.call_id)
                if reason == TOO_OLD_REASON:
                    result.too_old += 1
                elif reason:
                    result.uncertain += 1


def _classify(pbx: PbxConfig, store: CdrStore, rows: list) -> list[tuple[Any, CallRecord]]:
    """(call, its record marked source "cdr") for each call in the rows."""
    settings = pbx.settings if isinstance(pbx.settings, DirectionSettings) else DirectionSettings()
    module = asterisk if pbx.type == "asterisk" else freeswitch
    out = []
    for call in store.group(rows):
        record = build_record(module.facts(call, pbx.name, settings.is_extension), settings, pbx.timezone)
        out.append((call, record.with_text(source="cdr")))
    return out

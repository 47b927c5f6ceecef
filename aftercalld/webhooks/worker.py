"""Posts the webhook_deliveries rows: signed, a bounded number in flight per endpoint,
retried with backoff until the endpoint's time-to-live, then recorded as failed.

A 2xx answer is delivered; a 4xx other than 408 and 429 is refused for good (retrying
cannot change it); anything else (5xx, 408, 429, a timeout, a refused connection) is
retried. A row is marked 'sending' while posted; a run that dies with rows in that state
leaves them for the next run, which posts them again: at-least-once, with the event id
for the receiver to drop duplicates.
"""
from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import aiohttp

from .. import __version__
from ..clock import Clock, system_clock
from ..store import Outbox, OutboxUnavailable, Store, WebhookDelivery, WebhookResult, as_store
from .config import WebhookEndpoint
from .signing import HEADER, header_value

if TYPE_CHECKING:
    from ..metrics import Metrics

log = logging.getLogger(__name__)

# How much of a receiver's answer is read (only for a log line at debug level).
ANSWER_READ_BYTES = 512


class WebhookWorker:
    def __init__(self, outbox: Outbox | Store, endpoints: Sequence[WebhookEndpoint], *, clock: Clock = system_clock,
                 metrics: Metrics | None = None) -> None:
        self.outbox = as_store(outbox)
        self.clock = clock
        self.metrics = metrics
        self.endpoints: dict[str, WebhookEndpoint] = {}
        self._in_flight: dict[str, set[asyncio.Task]] = {}
        self.configure(endpoints)
        self._wake = asyncio.Event()
        self._results: list[WebhookResult] = []
        self._flush_handle: asyncio.Handle | None = None
        self._flusher: asyncio.Task | None = None
        self._failing: dict[str, str] = {}  # endpoint -> why it last failed, until it answers 2xx
        self._idle = asyncio.Event()
        self.latencies: list[float] = []  # seconds per successful post, for the bench (bounded)

    def configure(self, endpoints: Sequence[WebhookEndpoint]) -> None:
        """At start and on reload: URLs, secrets, filters and limits apply to the next post."""
        self.endpoints = {e.name: e for e in endpoints}
        for name in self.endpoints:
            self._in_flight.setdefault(name, set())

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """The supervised task: until cancelled."""
        try:
            requeued = await self.outbox.requeue_webhooks(self.clock())
        except (sqlite3.Error, OutboxUnavailable) as exc:
            log.error("cannot requeue the webhook deliveries the last run was posting (%s); they wait", exc)
            requeued = 0
        if requeued:
            log.warning("%d webhook delivery(ies) were being posted when the last run stopped; posting them again "
                        "(receivers drop duplicates by event id)", requeued)
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=60)
        async with aiohttp.ClientSession(connector=connector, headers={"User-Agent": f"aftercalld/{__version__}"},
                                         auto_decompress=False) as session:
            try:
                await self._loop(session)
            finally:
                await self._abandon()

    async def _loop(self, session: aiohttp.ClientSession) -> None:
        while True:
            self._wake.clear()
            free = {name: e.concurrency - len(self._in_flight[name]) for name, e in self.endpoints.items()}
            try:
                claimed = (await self.outbox.claim_webhooks(free, self.clock())
                           if any(v > 0 for v in free.values()) else [])
            except (sqlite3.Error, OutboxUnavailable) as exc:
                log.error("cannot claim webhook deliveries from the outbox (%s); retrying in 1s", exc)
                await asyncio.sleep(1)
                continue
            for delivery in claimed:
                endpoint = self.endpoints[delivery.endpoint]
                task = asyncio.create_task(self._post(session, endpoint, delivery),
                                           name=f"webhook {delivery.endpoint} {delivery.event_id}")
                self._in_flight[delivery.endpoint].add(task)
            if claimed:
                continue  # claimed all that was free? more may be due: look again at once
            if not any(self._in_flight.values()) and not self._results:
                self._idle.set()
            open_endpoints = [name for name, n in free.items() if n > 0]
            try:
                due = await self.outbox.next_webhook_due(open_endpoints)
            except (sqlite3.Error, OutboxUnavailable) as exc:
                log.error("cannot read webhook deliveries from the outbox (%s); retrying in 1s", exc)
                due = self.clock() + 1.0
            timeout = None if due is None else max(0.0, due - self.clock())
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def wait_idle(self) -> None:
        """Until nothing is due now and nothing is in flight (tests, bench)."""
        while True:
            self._idle.clear()
            self._wake.set()
            await self._idle.wait()
            due = await self.outbox.next_webhook_due(self.endpoints)
            if not any(self._in_flight.values()) and (due is None or due > self.clock()):
                return

    async def _abandon(self) -> None:
        """Cancelled (stop, or a restart after a crash): posts in flight are cut off and
        their rows go back to the queue; what completed is written."""
        tasks = [t for tasks in self._in_flight.values() for t in tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        await self._flush()
        try:
            await self.outbox.requeue_webhooks(self.clock())
        except (sqlite3.Error, OutboxUnavailable) as exc:
            log.error("cannot put the interrupted webhook deliveries back (%s); the next start does", exc)

    async def _post(self, session: aiohttp.ClientSession, endpoint: WebhookEndpoint,
                    delivery: WebhookDelivery) -> None:
        body = delivery.payload.encode()
        headers = {
            "Content-Type": "application/json",
            "X-Aftercalld-Event": delivery.event_type,
            "X-Aftercalld-Event-Id": delivery.event_id,
            "X-Aftercalld-Attempt": str(delivery.attempts),
            HEADER: header_value(endpoint.secret, int(self.clock()), body),
        }
        began = time.perf_counter()
        status = 0
        retry_after = None
        error = ""
        try:
            async with session.post(endpoint.url, data=body, headers=headers, allow_redirects=False,
                                    timeout=aiohttp.ClientTimeout(total=endpoint.timeout_seconds)) as answer:
                status = answer.status
                retry_after = answer.headers.get("Retry-After")
                if log.isEnabledFor(logging.DEBUG):
                    text = await answer.content.read(ANSWER_READ_BYTES)
                    log.debug("webhook %s answered %d to %s: %r", endpoint.name, status, delivery.event_id, text)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            error = f"no answer within {endpoint.timeout_seconds:g}s"
        except (aiohttp.ClientError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        except Exception as exc:  # an aiohttp bug must not lose the delivery: retried
            log.exception("posting webhook %s to %s failed unexpectedly", delivery.event_id, endpoint.name)
            error = f"{type(exc).__name__}: {exc}"[:300]
        finally:
            self._in_flight[delivery.endpoint].discard(asyncio.current_task())
        if not error and 200 <= status < 300:
            if len(self.latencies) < 100_000:
                self.latencies.append(time.perf_counter() - began)
            self._settled(endpoint, delivery, WebhookResult(delivery.id, "delivered"), "delivered")
            return
        if not error:
            error = f"HTTP {status}"
            if 400 <= status < 500 and status not in (408, 429):
                log.warning("webhook %s refused event %s (%s) for good: %s; not retried", endpoint.name,
                            delivery.event_id, delivery.event_type, error)
                self._settled(endpoint, delivery, WebhookResult(delivery.id, "failed", f"refused: {error}"),
                              "failed")
                return
        self._settled(endpoint, delivery, self._retry(endpoint, delivery, error, retry_after), "")

    def _retry(self, endpoint: WebhookEndpoint, delivery: WebhookDelivery, error: str,
               retry_after: str | None) -> WebhookResult:
        now = self.clock()
        delay = min(endpoint.retry_max_seconds, endpoint.retry_initial_seconds * 2 ** min(delivery.attempts - 1, 30))
        delay *= random.uniform(0.8, 1.0)  # endpoints that failed together do not all come back at once
        if retry_after and retry_after.strip().isdigit():
            delay = max(delay, min(float(retry_after), endpoint.retry_max_seconds))
        if now + delay > delivery.created_at + endpoint.ttl_seconds:
            reason = (f"gave up after {delivery.attempts} attempt(s), time-to-live {endpoint.ttl_seconds:g}s: "
                      f"{error}")
            log.warning("webhook %s: event %s (%s) %s", endpoint.name, delivery.event_id, delivery.event_type, reason)
            return WebhookResult(delivery.id, "failed", reason)
        if endpoint.name not in self._failing:
            log.warning("webhook %s is failing (%s); deliveries are retried with backoff for up to %gs",
                        endpoint.name, error, endpoint.ttl_seconds)
        self._failing[endpoint.name] = error
        return WebhookResult(delivery.id, "retrying", error, now + delay)

    def _settled(self, endpoint: WebhookEndpoint, delivery: WebhookDelivery, result: WebhookResult,
                 outcome: str) -> None:
        if outcome == "delivered" and self._failing.pop(endpoint.name, None) is not None:
            log.info("webhook %s answers again", endpoint.name)
        if self.metrics is not None:
            self.metrics.webhook_deliveries.labels(endpoint.name, outcome or "retry").inc()
        self._results.append(result)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._start_flush)

    def _start_flush(self) -> None:
        self._flush_handle = None
        if self._flusher is None:  # else the running one writes these too
            self._flusher = asyncio.create_task(self._flush_run(), name="webhook results")

    async def _flush_run(self) -> None:
        try:
            while self._results and await self._flush():
                pass
        finally:
            self._flusher = None

    async def _flush(self) -> bool:
        """Every result since the last flush in one transaction. False when the outbox
        refused them (they wait in memory and are tried again in 1s)."""
        results, self._results = self._results, []
        if not results:
            return True
        try:
            await self.outbox.record_webhook_results(results, self.clock())
        except (sqlite3.Error, OutboxUnavailable) as exc:
            # Kept in memory and tried again; a crash meanwhile posts them once more.
            log.error("cannot record %d webhook result(s) (%s); retrying in 1s", len(results), exc)
            self._results[:0] = results
            if self._flush_handle is None:
                self._flush_handle = asyncio.get_running_loop().call_later(1.0, self._start_flush)
            return False
        self._wake.set()
        return True

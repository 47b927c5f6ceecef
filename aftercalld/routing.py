"""Several transports behind the one the dispatcher sees: each text leaves by its route.

A route (routeconfig.py) lists transports in failover order. A text goes to the first of
them that is not *passed over*; a transport is passed over once it has not been up (no
SMPP bind, no registered modem) for its `failover_after` seconds, and used again as soon
as it is up. A transport that rejects a destination for good (ESME_RINVDSTADR) hands the
text to the next one; a transient failure is retried by the dispatcher as usual, unless
the transport was passed over meanwhile. A text of which some part may already be out
(`SubmitOutcome.partly_sent`) never goes to another transport: the recipient would get it
twice.

Texts for a transport that is down but not yet passed over wait here, not inside it, so
they move on the moment it is passed over. Each transport keeps its own window
(`max_in_flight`); the dispatcher's window is the sum over those not passed over.

With one transport and no routes the daemon hands that transport to the dispatcher
directly: this layer costs nothing on the single-transport hot path.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .logutil import fields
from .model import OutboundMessage, OutcomeKind, SubmitOutcome
from .routeconfig import Route
from .transport import Transport, TransportEvents

log = logging.getLogger(__name__)

# How often every transport is looked at: a tenth of the shortest failover_after, within these.
WATCH_MIN_SECONDS = 0.05
WATCH_MAX_SECONDS = 1.0


class Member:
    """One named transport and what routing knows of it."""

    def __init__(self, transport: Transport, failover_after: float) -> None:
        self.transport = transport
        self.name = transport.name
        self.failover_after = failover_after
        self.capacity = max(1, transport.max_in_flight)
        self.in_flight = 0  # sends routed to it and not finished, waits for it included
        self.submitted = 0
        self.failed_over = 0  # texts it passed on to the next transport of their route
        self.down_since: float | None = None  # loop time it was first seen not up
        self.passed_over = False
        self._slot_waiters: collections.deque[asyncio.Future] = collections.deque()
        self._state_waiters: list[asyncio.Future] = []

    def observe(self, now: float) -> None:
        """Bring up/down and passed-over up to date; log and wake waiters on a change."""
        if self.transport.is_up():
            if self.down_since is not None:
                if self.passed_over:
                    log.warning("transport %s is up again after %.0fs: its routes use it again", self.name,
                                now - self.down_since, extra=fields(transport=self.name))
                self.down_since = None
                self.passed_over = False
                self._wake_state()
            return
        if self.down_since is None:
            self.down_since = now
            self._wake_state()
        elif not self.passed_over and now - self.down_since >= self.failover_after:
            self.passed_over = True
            log.warning("transport %s has not been up for %gs (failover_after): its texts go to the next "
                        "transport of their route", self.name, self.failover_after,
                        extra=fields(transport=self.name))
            self._wake_state()

    def _wake_state(self) -> None:
        waiters, self._state_waiters = self._state_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def until_up_or_passed_over(self, closing: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not closing.is_set():
            now = loop.time()
            self.observe(now)
            if self.down_since is None or self.passed_over:
                return
            waiter = loop.create_future()
            self._state_waiters.append(waiter)
            try:
                # The watch task wakes us when it comes up; the timeout is the moment it is passed over.
                async with asyncio.timeout(max(0.0, self.down_since + self.failover_after - now)):
                    await waiter
            except TimeoutError:
                pass

    async def take(self, closing: asyncio.Event) -> None:
        """A place in its window (its `max_in_flight`)."""
        loop = asyncio.get_running_loop()
        while self.in_flight >= self.capacity and not closing.is_set():
            waiter = loop.create_future()
            self._slot_waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self.release_wake()  # handed a place we will not use: pass it on
                raise
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
        self.release_wake()

    def release_wake(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def wake_all(self) -> None:
        self._wake_state()
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def status(self, now: float) -> dict[str, Any]:
        status = dict(self.transport.status())
        status.update({
            "name": self.name,
            "up": self.down_since is None,
            "in_flight": self.in_flight,
            "submitted": self.submitted,
            "failed_over": self.failed_over,
            "failover_after": self.failover_after,
        })
        if self.down_since is not None:
            status["down_seconds"] = round(now - self.down_since, 1)
            status["passed_over"] = self.passed_over
        return status


class RoutedTransport(Transport):
    def __init__(self, members: Sequence[tuple[Transport, float]], routes: Sequence[Route] = (),
                 name: str = "routes") -> None:
        super().__init__(name)
        if not members:
            raise ValueError("routing needs at least one transport")
        self.members = [Member(transport, failover_after) for transport, failover_after in members]
        by_name = {m.name: m for m in self.members}
        self.routes = [(route, tuple(by_name[n] for n in route.transports)) for route in routes]
        self._default = tuple(self.members)
        shortest = min(m.failover_after for m in self.members)
        self._watch_every = min(WATCH_MAX_SECONDS, max(WATCH_MIN_SECONDS, shortest / 10))
        self._closing = asyncio.Event()
        self.task: asyncio.Task | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, events: TransportEvents) -> None:
        """Every transport, each reporting receipts and replies under its own name."""
        await asyncio.gather(*(m.transport.start(events) for m in self.members))
        self._observe()
        self.task = asyncio.create_task(self._watch(), name=f"{self.name}: failover watch")

    async def close(self) -> None:
        self._closing.set()
        for member in self.members:
            member.wake_all()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        results = await asyncio.gather(*(m.transport.close() for m in self.members), return_exceptions=True)
        for member, result in zip(self.members, results, strict=True):
            if isinstance(result, Exception):
                log.error("transport %s did not close cleanly: %s: %s", member.name, type(result).__name__, result)

    def is_up(self) -> bool:
        return any(m.transport.is_up() for m in self.members)

    @property
    def max_in_flight(self) -> int:  # the dispatcher reads it before each claim
        """The windows of the transports texts can go to now. Sends still held by one that
        was passed over (waiting out its response_timeout) are added back: they must not
        shrink the window of the one that took over."""
        usable = held = 0
        for member in self.members:
            if member.passed_over:
                held += member.in_flight
            else:
                usable += member.capacity
        return (usable or sum(m.capacity for m in self.members)) + held

    @max_in_flight.setter
    def max_in_flight(self, value: int) -> None:
        raise AttributeError("a routed transport's window is its transports'")

    async def _watch(self) -> None:
        while not self._closing.is_set():
            try:
                self._observe()
            except Exception:  # a bug here must not end failover for the daemon's life
                log.exception("%s: cannot look at the transports' state", self.name)
            await asyncio.sleep(self._watch_every)

    def _observe(self) -> None:
        now = asyncio.get_running_loop().time()
        for member in self.members:
            member.observe(now)

    # -- sending ---------------------------------------------------------------------------

    def route_for(self, message: OutboundMessage) -> tuple[Member, ...]:
        for route, members in self.routes:
            if route.matches(message.destination, message.rule):
                return members
        return self._default

    async def send(self, message: OutboundMessage) -> SubmitOutcome:
        order = self.route_for(message)
        loop = asyncio.get_running_loop()
        reasons: list[str] = []
        index = self._usable(order, 0, loop.time())
        for skipped in order[:index]:
            skipped.failed_over += 1
        while True:
            if self._closing.is_set():
                return SubmitOutcome.transient("transports closing", retry_after=5.0)
            member = order[index]
            later = index + 1 < len(order)
            if later:
                await member.until_up_or_passed_over(self._closing)
                if member.passed_over:
                    member.failed_over += 1
                    index = self._usable(order, index + 1, loop.time())
                    continue
            await member.take(self._closing)
            if later and not self._closing.is_set():
                member.observe(loop.time())
                if member.down_since is not None:  # it went down while the text waited for its window
                    member.release()
                    continue
            try:
                outcome = await self._send_on(member, message)
            finally:
                member.release()
            if outcome.kind is OutcomeKind.SUBMITTED:
                member.submitted += 1
                return dataclasses.replace(outcome, via=member.name)
            if later and await self._passes_on(member, outcome):
                member.failed_over += 1
                reasons.append(f"{member.name}: {outcome.reason}")
                index = self._usable(order, index + 1, loop.time())
                if outcome.kind is OutcomeKind.PERMANENT:
                    log.warning("message %d to %s rejected by transport %s (%s); trying %s", message.id,
                                message.destination, member.name, outcome.reason, order[index].name,
                                extra=fields(call_id=message.call_id, rule=message.rule,
                                             recipient=message.destination, transport=member.name))
                continue
            if reasons:
                outcome = dataclasses.replace(outcome, reason="; ".join([*reasons, f"{member.name}: {outcome.reason}"]))
            return dataclasses.replace(outcome, via=member.name)

    async def _send_on(self, member: Member, message: OutboundMessage) -> SubmitOutcome:
        try:
            return await member.transport.send(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a transport bug must not lose the message
            log.exception("transport %s raised on message %d; will retry", member.name, message.id)
            return SubmitOutcome.transient(f"transport error: {type(exc).__name__}: {exc}")

    async def _passes_on(self, member: Member, outcome: SubmitOutcome) -> bool:
        """Whether the next transport of the route gets the text now."""
        if outcome.partly_sent:
            return False
        if outcome.kind is OutcomeKind.PERMANENT:
            return True  # rejected here (a destination it cannot reach): another may take it
        # Transient. A transport that went down under the text (its link lost while the
        # submit was out): wait here until it is back or passed over, rather than retry
        # later on a transport the text would leave anyway.
        await member.until_up_or_passed_over(self._closing)
        return member.passed_over

    @staticmethod
    def _usable(order: tuple[Member, ...], start: int, now: float) -> int:
        """The first transport from `start` on that is not passed over; `start` when all are
        (it answers transient, and the dispatcher retries)."""
        for index in range(start, len(order)):
            member = order[index]
            member.observe(now)
            if not member.passed_over:
                return index
        return start

    # -- status ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = asyncio.get_running_loop().time()
        states = []
        for member in self.members:
            state = "up" if member.down_since is None else "passed over" if member.passed_over else "down"
            states.append(f"{member.name} {state}")
        return {"name": self.name, "type": "routes", "state": ", ".join(states), "routes": len(self.routes),
                "transports": [m.status(now) for m in self.members]}


class RoutesCollector:
    """Per transport, read at scrape time: what routing sent where and what it passed on."""

    def __init__(self, routed: RoutedTransport) -> None:
        self.routed = routed

    def collect(self) -> Iterator[Metric]:
        in_flight = GaugeMetricFamily("aftercalld_transport_in_flight", "Texts routed to the transport and not "
                                      "finished (waits for its window included)", labels=["transport"])
        passed_over = GaugeMetricFamily("aftercalld_transport_passed_over", "1 while the transport has not been "
                                        "up for failover_after: its texts go to the next of their route",
                                        labels=["transport"])
        submitted = CounterMetricFamily("aftercalld_transport_submitted", "Texts the transport submitted",
                                        labels=["transport"])
        failed_over = CounterMetricFamily("aftercalld_transport_failovers", "Texts the transport passed on to the "
                                          "next transport of their route (down, or it rejected the destination)",
                                          labels=["transport"])
        for member in self.routed.members:
            label = [member.name]
            in_flight.add_metric(label, member.in_flight)
            passed_over.add_metric(label, 1.0 if member.passed_over else 0.0)
            submitted.add_metric(label, member.submitted)
            failed_over.add_metric(label, member.failed_over)
        yield in_flight
        yield passed_over
        yield submitted
        yield failed_over


def register_metrics(registry: CollectorRegistry, routed: RoutedTransport) -> None:
    registry.register(RoutesCollector(routed))

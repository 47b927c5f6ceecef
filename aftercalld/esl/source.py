"""Live FreeSWITCH source: keeps one event-socket connection up and feeds the tracker.

Connection lifecycle only; framing is in protocol.py and call logic in tracker.py. The
tracker outlives connections, so a call that was up while we reconnected still ends with
one record (its CHANNEL_HANGUP_COMPLETE carries everything); calls of a FreeSWITCH that
restarted (new Core-UUID) are dropped with a warning since they can never end.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential, wait_random

from ..clock import Clock, system_clock
from ..logutil import fields
from ..model import CallRecord
from ..pbxconfig import PbxConfig
from ..source import CallSink, CallSource, status_time
from .config import DEFAULT_PASSWORD, EslSettings
from .protocol import AccessDenied, AuthError, ConnectionLost, EslConnection, EslError, ProtocolError
from .tracker import SUBSCRIBE_EVENTS, EslTracker

log = logging.getLogger("aftercalld.esl.source")


class EslSource(CallSource):
    def __init__(self, pbx: PbxConfig, settings: EslSettings | None = None, clock: Clock = system_clock) -> None:
        super().__init__(pbx.name)
        self.clock = clock
        self.pbx = pbx
        self.settings = settings or (pbx.settings if isinstance(pbx.settings, EslSettings) else EslSettings())
        self.tracker = EslTracker(pbx, self.settings)
        self._records: asyncio.Queue[CallRecord] | None = None
        self._state = "stopped"
        self._problem = ""  # last reported trouble, so repeats are not logged again
        self._core_uuid = ""
        self._last_rx = 0.0
        self._connected_since: float | None = None
        self.connects = 0
        self.events = 0
        self.delivered = 0

    # ------------------------------------------------------------------ CallSource

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": "freeswitch",
            "endpoint": f"{self.settings.host}:{self.settings.port}",
            "state": self._state,
            "last_error": self._problem,
            "connected_since": self._connected_since,
            "connects": self.connects,
            "events": self.events,
            "last_event": self._last_event_wall_time(),
            "calls_reported": self.delivered,
            "calls_in_progress": self.tracker.active_calls(),
            "calls_dropped": self.tracker.stats["evicted"],
        }

    def _last_event_wall_time(self) -> str | None:
        if not self.events:
            return None
        try:
            age = asyncio.get_running_loop().time() - self._last_rx
        except RuntimeError:
            return None
        return status_time(self.clock() - age)

    async def run(self, on_call: CallSink) -> None:
        s = self.settings
        if s.password == DEFAULT_PASSWORD:
            log.warning("ESL %s: using FreeSWITCH's default password; set one in event_socket.conf.xml "
                        "and in this [[pbx]] table", self.name, extra=fields(pbx=self.name))
        self._records = asyncio.Queue()
        deliver = asyncio.create_task(self._deliver(on_call), name=f"esl-deliver-{self.name}")
        try:
            first = True
            while True:
                if not first:
                    # Even after a healthy session, pause a little so a server that accepts
                    # and drops at once cannot spin us.
                    await asyncio.sleep(s.reconnect_min)
                first = False
                retrying = AsyncRetrying(
                    wait=wait_exponential(multiplier=s.reconnect_min, max=s.reconnect_max)
                    + wait_random(0, s.reconnect_min),
                    # Anything but cancellation means "try again": run() must never raise.
                    retry=retry_if_exception_type(Exception),
                    before_sleep=self._before_sleep,
                    reraise=True,
                )
                async for attempt in retrying:
                    with attempt:
                        await self._session()
        finally:
            self._state = "stopped"
            # Calls already finished are handed on before we stop.
            await self._drain(on_call)
            deliver.cancel()
            try:
                await deliver
            except (asyncio.CancelledError, Exception):
                pass

    # ------------------------------------------------------------------ one connection

    async def _session(self) -> None:
        """One connection. Returns normally after a healthy session ended (reconnect at
        once, backoff reset); raises EslError when it never got going (backoff grows)."""
        s = self.settings
        self._state = "connecting"
        conn = await EslConnection.open(s.host, s.port, self._on_event, timeout=s.connect_timeout)
        try:
            await conn.auth(s.password, timeout=s.connect_timeout)
            for header, value in s.filters:
                reply = await conn.command(f"filter {header} {value}", s.connect_timeout)
                if not reply.ok:
                    raise ProtocolError(f"filter {header} rejected: {reply.reply_text}")
            reply = await conn.command(f"event {s.events_format} {SUBSCRIBE_EVENTS}", s.connect_timeout)
            if not reply.ok:
                raise ProtocolError(f"subscription rejected: {reply.reply_text}")
            self.connects += 1
            self.tracker.connection_gap()
            self._state = "connected"
            self._connected_since = self.clock()
            self._last_rx = asyncio.get_running_loop().time()
            log.info("ESL %s: connected to %s%s", self.name, s.describe(),
                     f" (was: {self._problem})" if self._problem else "", extra=fields(pbx=self.name))
            self._problem = ""
            reason = await self._watch(conn)
        finally:
            self._connected_since = None
            await conn.close()
        self._state = "reconnecting"
        self._report(f"connection lost: {reason}", logging.WARNING)

    async def _watch(self, conn: EslConnection) -> EslError:
        """Wait for the connection to end, or declare it dead when even HEARTBEATs stop."""
        limit = self.settings.heartbeat_timeout
        loop = asyncio.get_running_loop()
        while True:
            # Wake at least every second: the tracker's housekeeping runs on events, and a
            # quiet PBX must still settle calls that wait for legs lost in a gap.
            timeout = 1.0 if not limit else max(0.05, min(1.0, limit - (loop.time() - self._last_rx)))
            try:
                async with asyncio.timeout(timeout):
                    return await conn.wait_closed()
            except TimeoutError:
                now = loop.time()
                for record in self.tracker.tick(now):
                    assert self._records is not None
                    self._records.put_nowait(record)
                if limit and now - self._last_rx >= limit:
                    return ConnectionLost(f"nothing received for {limit:g}s (not even HEARTBEAT)")

    def _on_event(self, event: dict[str, str]) -> None:
        # Runs in the reader task for every event: keep it cheap and never raise.
        self.events += 1
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._last_rx = now
        core = event.get("Core-UUID")
        if core and core != self._core_uuid:
            if self._core_uuid:
                log.warning("ESL %s: FreeSWITCH restarted (Core-UUID %s -> %s)", self.name, self._core_uuid, core,
                            extra=fields(pbx=self.name))
                self.tracker.drop_core(core, now)
            self._core_uuid = core
        for record in self.tracker.feed(event, now):
            assert self._records is not None
            self._records.put_nowait(record)

    # ------------------------------------------------------------------ hand-over

    async def _deliver(self, on_call: CallSink) -> None:
        assert self._records is not None
        while True:
            record = await self._records.get()
            await self._hand_over(on_call, record)

    async def _drain(self, on_call: CallSink) -> None:
        if self._records is None:
            return
        while not self._records.empty():
            await self._hand_over(on_call, self._records.get_nowait())

    async def _hand_over(self, on_call: CallSink, record: CallRecord) -> None:
        try:
            await on_call(record)
            self.delivered += 1
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("ESL %s: handing over call %s failed", self.name, record.call_id,
                          extra=fields(pbx=self.name, call_id=record.call_id))

    # ------------------------------------------------------------------ logging

    def _before_sleep(self, state: RetryCallState) -> None:
        self._state = "reconnecting"
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, AuthError):
            self._report(f"{exc}: check the password in this [[pbx]] table and event_socket.conf.xml",
                         logging.ERROR)
        elif isinstance(exc, AccessDenied):
            self._report(str(exc), logging.ERROR)
        elif exc is not None and not isinstance(exc, EslError):
            if f"unexpected error: {exc!r}" != self._problem:
                log.error("ESL %s: unexpected error, reconnecting", self.name, exc_info=exc,
                          extra=fields(pbx=self.name))
            self._problem = f"unexpected error: {exc!r}"
        else:
            self._report(str(exc), logging.WARNING)
        delay = state.next_action.sleep if state.next_action else 0.0
        log.debug("ESL %s: attempt %d failed, retrying in %.2fs", self.name, state.attempt_number, delay)

    def _report(self, problem: str, level: int) -> None:
        """Log a state change once: a server that stays down is not a log line per retry."""
        if problem != self._problem:
            log.log(level, "ESL %s: %s", self.name, problem, extra=fields(pbx=self.name))
            self._problem = problem

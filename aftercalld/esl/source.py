"""Live FreeSWITCH source: keeps one event-socket connection up and feeds the tracker.

Connection lifecycle only; framing is in protocol.py and call logic in tracker.py. The
tracker outlives connections, so a call that was up while we reconnected still ends with
one record (its CHANNEL_HANGUP_COMPLETE carries everything). On every connect the
Core-UUID (`api global_getvar core_uuid`) tells a reconnect from a FreeSWITCH restart, whose
calls were cut and are recorded as interrupted; then the live channel list is reconciled
(`reconcile.py`). At a clean stop the calls in progress are handed over to the next start
through the outbox (`handover.py`).

Reconnects (`backoff.py`): at once after a session that was healthy for a while (a link
blip should lose as few events as possible), with a growing delay after failed connects
and after sessions that ended within seconds (a peer that takes our auth and then sends
junk must not get a reconnect storm). Each change of trouble is logged once.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, cast

from ..backoff import Backoff
from ..clock import Clock, system_clock
from ..logutil import fields
from ..model import CallRecord
from ..pbxconfig import PbxConfig
from ..source import CallSink, CallSource, status_time
from . import handover, reconcile
from .config import DEFAULT_PASSWORD, EslSettings
from .protocol import AccessDenied, AuthError, ConnectionLost, EslConnection, EslError, Event, ProtocolError
from .tracker import SUBSCRIBE_EVENTS, EslTracker

log = logging.getLogger("aftercalld.esl.source")

# A session that lasted this long (or reconnect_max, if shorter) was healthy: the next
# connect after it is immediate. Shorter ones count as failures for the backoff.
HEALTHY_SESSION_SECONDS = 5.0


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
        self._backoff = Backoff(self.settings.reconnect_min, self.settings.reconnect_max,
                                healthy_after=min(self.settings.reconnect_max, HEALTHY_SESSION_SECONDS))
        self._short_sessions = 0  # in a row: sessions that ended before they were healthy
        self.events = 0
        self.delivered = 0
        self._reconcile_refused = False  # the missing channel list is logged once

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
            # Issue 12: calls the daemon did not see whole, each also logged with its id.
            **{f"calls_{key}": self.tracker.stats[key] for key in ("adopted", "ended_unseen", "interrupted")},
        }

    def handover_state(self) -> str | None:
        """The calls in progress, as JSON for the outbox at a clean stop (None: no call)."""
        if not self.tracker.active_calls():
            return None
        return json.dumps(handover.dump(self.tracker, self._core_uuid), separators=(",", ":"))

    def take_over(self, state: str) -> int:
        """Calls in progress that the last clean stop handed over; the first connect
        reconciles them with FreeSWITCH's live channels."""
        try:
            count, core = handover.load(self.tracker, json.loads(state), asyncio.get_running_loop().time())
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ESL %s: the calls handed over at the last stop cannot be read (%s: %s); "
                        "the channel list on connect adopts those still up", self.name, type(exc).__name__, exc,
                        extra=fields(pbx=self.name))
            return 0
        if not self._core_uuid:
            self._core_uuid = core
        log.info("ESL %s: %d call(s) in progress handed over from the last stop", self.name, count,
                 extra=fields(pbx=self.name))
        return count

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
        backoff = self._backoff
        delay = 0.0
        try:
            while True:
                if delay:
                    await asyncio.sleep(delay)
                try:
                    lasted = await self._session()
                except Exception as exc:  # anything but cancellation means "try again"
                    delay = backoff.failed()
                    self._before_sleep(exc, delay)
                    continue
                delay = backoff.ended(lasted)
                self._short_sessions = self._short_sessions + 1 if delay else 0
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

    async def _session(self) -> float:
        """One connection. Returns how long it was up after it ended; raises EslError
        when it never got going."""
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
            loop = asyncio.get_running_loop()
            self._last_rx = started = loop.time()
            stable = None
            if self._short_sessions:
                # Sessions keep ending within seconds: "connected" is no news, the loss that
                # follows is logged once for the whole streak, and its end once.
                log.debug("ESL %s: connected to %s", self.name, s.describe())
                stable = loop.call_later(self._backoff.healthy_after, self._stable)
            else:
                self._connected_log()
            try:
                await self._reconcile(conn)
                reason = await self._watch(conn)
            finally:
                if stable is not None:
                    stable.cancel()
        finally:
            self._connected_since = None
            await conn.close()
        self._state = "reconnecting"
        lasted = loop.time() - started
        short = lasted < self._backoff.healthy_after
        self._report(f"connection lost{' within seconds, again and again' if short and self._short_sessions else ''}: "
                     f"{reason}{'; reconnecting with backoff' if short else ''}", logging.WARNING)
        return lasted

    def _check_core(self, core: str, now: float) -> None:
        """Which FreeSWITCH run this is: a new Core-UUID means it restarted, and the calls
        of the old one were cut by its shutdown (recorded as interrupted, not texted)."""
        if core == self._core_uuid:
            return
        if self._core_uuid:
            log.warning("ESL %s: FreeSWITCH restarted (Core-UUID %s -> %s)", self.name, self._core_uuid, core,
                        extra=fields(pbx=self.name))
            for record in self.tracker.drop_core(core, now, int(self.clock() * 1e6)):
                assert self._records is not None
                self._records.put_nowait(record)
        self._core_uuid = core

    async def _reconcile(self, conn: EslConnection) -> None:
        """FreeSWITCH's live channels, once subscribed: adopt calls that began while nobody
        listened, finish those that ended meanwhile (`reconcile.py`). Its Core-UUID first:
        a restart must find the old calls cut (interrupted), not ended unseen, and no event
        may come for seconds after a restart to tell it."""
        try:
            core = (await conn.api(reconcile.CORE_UUID, self.settings.connect_timeout)).strip()
        except EslError:
            core = ""
        if reconcile.looks_like_uuid(core):
            self._check_core(core, asyncio.get_running_loop().time())
        asked_after = self.tracker._seq
        try:
            body = await conn.api(reconcile.SHOW_CHANNELS, self.settings.connect_timeout)
            rows = reconcile.parse_channels(body)
        except (EslError, ValueError) as exc:
            if not self._reconcile_refused:
                self._reconcile_refused = True
                log.warning("ESL %s: `api %s` gave no channel list (%s); calls in progress at a connect are not "
                            "reconciled", self.name, reconcile.SHOW_CHANNELS, exc, extra=fields(pbx=self.name))
            return
        now = asyncio.get_running_loop().time()
        before = dict(self.tracker.stats)
        for record in reconcile.apply(self.tracker, rows, asked_after, now, int(self.clock() * 1e6), self._core_uuid):
            assert self._records is not None
            self._records.put_nowait(record)
        stats = self.tracker.stats
        log.info("ESL %s: reconciled with FreeSWITCH's %d live channel(s): %d adopted, %d call(s) ended while "
                 "aftercalld was not connected", self.name, len(rows), stats["adopted"] - before["adopted"],
                 stats["ended_unseen"] - before["ended_unseen"], extra=fields(pbx=self.name))

    def _connected_log(self) -> None:
        log.info("ESL %s: connected to %s%s", self.name, self.settings.describe(),
                 f" (was: {self._problem})" if self._problem else "", extra=fields(pbx=self.name))
        self._problem = ""

    def _stable(self) -> None:
        self._short_sessions = 0
        self._connected_log()

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

    def _on_event(self, event: Event) -> None:
        # Runs in the reader task for every event: keep it cheap and never raise.
        self.events += 1
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._last_rx = now
        core = event.get("Core-UUID")
        if core and core != self._core_uuid:
            self._check_core(core, now)
        # A plain event is a read-only mapping, not a dict; the tracker only reads it.
        for record in self.tracker.feed(cast(dict[str, str], event), now):
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

    def _before_sleep(self, exc: Exception, delay: float) -> None:
        self._state = "reconnecting"
        if isinstance(exc, AuthError):
            self._report(f"{exc}: check the password in this [[pbx]] table and event_socket.conf.xml",
                         logging.ERROR)
        elif isinstance(exc, AccessDenied):
            self._report(str(exc), logging.ERROR)
        elif not isinstance(exc, EslError):
            if f"unexpected error: {exc!r}" != self._problem:
                log.error("ESL %s: unexpected error, reconnecting", self.name, exc_info=exc,
                          extra=fields(pbx=self.name))
            self._problem = f"unexpected error: {exc!r}"
        else:
            self._report(str(exc), logging.WARNING)
        log.debug("ESL %s: attempt %d failed, retrying in %.2fs", self.name, self._backoff.failures, delay)

    def _report(self, problem: str, level: int) -> None:
        """Log a state change once: a server that stays down is not a log line per retry."""
        if problem != self._problem:
            log.log(level, "ESL %s: %s", self.name, problem, extra=fields(pbx=self.name))
            self._problem = problem

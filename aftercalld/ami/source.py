"""Live AMI source: one TCP connection to one Asterisk, events through the tracker, finished
calls out to the core.

Lifecycle, on asyncio streams with our own framing (`protocol.py` says why not panoramisk):

* connect, read the banner, ``Login`` (ActionID-matched response); a refused login is an
  error naming the user and host -- never the secret -- and is retried like any other
  failure, because Asterisk refuses logins for a moment while it boots;
* reconnect after any loss with capped exponential backoff and jitter (`backoff.py`): at
  once after a session that was healthy for a while, but with a growing delay after one
  that ended within seconds (a peer that accepts the login and then sends junk or hangs
  up must not get a reconnect storm); each state change is logged once, not every retry;
* ``Ping`` every ``ping_interval``; no ``Pong`` within ``ping_timeout`` while nothing else
  arrives either = dead link (a half-open TCP connection after a PBX crash or a NAT timeout
  never says so by itself; a burst only delays the Pong);
* the reader never awaits the core: parsing and tracking are synchronous, finished calls go
  through a queue to a separate task. Asterisk drops managers that read slower than its
  ``writetimeout`` (100 ms by default), so the reader must not block on SQLite or SMPP;
* on every connect, ``CoreStatus`` tells a link loss from an Asterisk restart (its
  ``CoreStartupDate``/``CoreStartupTime`` change only when Asterisk restarts): on a plain
  reconnect every call is kept; after a restart the calls in progress were cut by the
  shutdown and are recorded as interrupted. Then ``CoreShowChannels`` lists the live
  channels and the tracker reconciles with it (`reconcile.py`). Both need ``write =
  reporting`` in manager.conf; without it the refusal is logged once as an error, and
  ``FullyBooted``'s uptime still tells a restart (less precisely);
* the reader handles the channel list in stream order (synchronously, like events), so the
  list and the events around it describe one consistent state.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from ..backoff import Backoff
from ..clock import Clock, system_clock
from ..logutil import fields
from ..model import CallRecord
from ..pbxconfig import PbxConfig
from ..source import CallSink, CallSource, status_time
from . import handover, reconcile
from .config import AmiSettings
from .protocol import MAX_MESSAGE_BYTES, AmiParser, encode_action, next_action_id
from .tracker import CallTracker

# The answer to CoreShowChannels: one event per channel, then the end of the list.
_LIST_EVENTS = frozenset({"CoreShowChannel", "CoreShowChannelsComplete"})

log = logging.getLogger("aftercalld.ami.source")

READ_SIZE = 256 * 1024
# A boot time estimate that moved by more than this means Asterisk restarted.
RESTART_SLACK_SECONDS = 10.0
# A session that lasted this long (or reconnect_max, if shorter) was healthy: the next
# connect after it is immediate. Shorter ones count as failures for the backoff.
HEALTHY_SESSION_SECONDS = 5.0


class AmiError(Exception):
    """A protocol-level failure of one connection attempt or session."""


class LoginRefused(AmiError):
    pass


class _Conn:
    __slots__ = ("reader", "writer", "parser", "pending", "backlog", "read_at")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 parser: AmiParser) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = parser
        self.pending: dict[str, asyncio.Future[dict[str, str]]] = {}
        self.backlog: list[dict[str, str]] = []  # messages read together with the login reply
        self.read_at = asyncio.get_running_loop().time()  # when bytes last arrived (loop clock)

    def send(self, action: dict[str, str]) -> asyncio.Future[dict[str, str]]:
        action_id = action.setdefault("ActionID", next_action_id())
        fut: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
        self.pending[action_id] = fut
        self.writer.write(encode_action(action))
        return fut

    def close(self) -> None:
        for fut in self.pending.values():
            if not fut.done():
                fut.cancel()
        self.pending.clear()
        transport = self.writer.transport
        if not transport.is_closing():
            transport.abort()


class AmiSource(CallSource):
    def __init__(self, pbx: PbxConfig, settings: AmiSettings | None = None, clock: Clock = system_clock) -> None:
        super().__init__(pbx.name)
        self.clock = clock
        if settings is None:
            settings = pbx.settings
        if not isinstance(settings, AmiSettings):
            raise TypeError(f"pbx {pbx.name!r}: AMI settings missing (parse_settings not applied)")
        self.pbx = pbx
        self.settings = settings
        self.tracker = CallTracker(pbx, settings)
        self.state = "idle"
        self.last_error = ""
        self.connected_since: float | None = None
        self.last_data_at: float | None = None  # for `aftercalld status`: is anything arriving?
        self.events = 0  # events parsed and handed to the tracker
        self._skipped_closed = 0  # events dropped unparsed on earlier connections
        self._conn: _Conn | None = None
        self.calls_emitted = 0
        self.sessions = 0
        self._boot_epoch: float | None = None
        self.startup: str | None = None  # CoreStatus's startup date and time: which Asterisk run
        self._lists: dict[str, list[dict[str, str]]] = {}  # ActionID -> CoreShowChannel events so far
        self._queue: asyncio.Queue[CallRecord] | None = None
        self._refused: set[str] = set()  # actions refused for permission, logged once each
        self._login_boot = False  # the next FullyBooted is the one that greets this login
        self._logged: tuple[str, str] | None = None
        self._where = f"{settings.host}:{settings.port}"
        self._backoff = Backoff(settings.reconnect_min, settings.reconnect_max,
                                healthy_after=min(settings.reconnect_max, HEALTHY_SESSION_SECONDS))
        self._dropped_logged = 0
        self._short_sessions = 0  # in a row: sessions that ended before they were healthy

    # ------------------------------------------------------------------ CallSource

    async def run(self, on_call: CallSink) -> None:
        queue: asyncio.Queue[CallRecord] = asyncio.Queue()
        self._queue = queue
        deliver = asyncio.create_task(self._deliver(queue, on_call), name=f"ami-deliver-{self.name}")
        loop = asyncio.get_running_loop()
        backoff = self._backoff
        delay = 0.0
        try:
            while True:
                if delay:
                    await asyncio.sleep(delay)
                try:
                    conn = await self._open()
                except (OSError, TimeoutError, AmiError, EOFError) as exc:
                    delay = backoff.failed()
                    self._connect_failed(exc, delay)
                    continue
                started = loop.time()
                reason = "session ended"
                try:
                    await self._session(conn, queue)
                except (TimeoutError, OSError, AmiError, EOFError) as exc:
                    reason = _describe(exc)
                finally:
                    conn.close()
                    self._skipped_closed += conn.parser.skipped
                    self._conn = None
                    self.connected_since = None
                lasted = loop.time() - started
                delay = backoff.ended(lasted)
                self._short_sessions = self._short_sessions + 1 if delay else 0
                if delay:
                    # Once per streak of short sessions, whatever each one's reason (a peer that
                    # hangs up on us resets some connections and closes others).
                    streak = self._short_sessions > 1
                    self._change("disconnected", reason, logging.DEBUG if streak else logging.WARNING,
                                 "AMI %s: connection to %s lost after %.1f s: %s; sessions this short count as "
                                 "failures, reconnecting with backoff", self.name, self._where, lasted, reason)
                else:
                    self._change("disconnected", reason, logging.WARNING,
                                 "AMI %s: connection to %s lost: %s; reconnecting", self.name, self._where, reason)
        finally:
            # Calls already finished must still reach the outbox: drain before leaving.
            deliver.cancel()
            try:
                await deliver
            except asyncio.CancelledError:
                pass
            while not queue.empty():
                record = queue.get_nowait()
                try:
                    await asyncio.shield(on_call(record))
                except Exception:
                    log.exception("AMI %s: call %s could not be handed on", self.name, record.call_id)

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": "asterisk",
            "address": self._where,
            "state": self.state,
            "connected_since": self.connected_since,
            "last_error": self.last_error,
            "events": self.events_received,
            "last_event": status_time(self.last_data_at),
            "calls_emitted": self.calls_emitted,
            "active_calls": self.tracker.active_calls,
            "sessions": self.sessions,
            # Issue 12: calls the daemon did not see whole, each also logged with its id.
            **{f"calls_{key}": self.tracker.stats[key] for key in ("adopted", "ended_unseen", "interrupted",
                                                                  "unclassified")},
        }

    def handover_state(self) -> str | None:
        """The calls in progress, as JSON for the outbox at a clean stop (None: no call)."""
        if not self.tracker.active_calls:
            return None
        return json.dumps(handover.dump(self.tracker.book, self.startup), separators=(",", ":"))

    def take_over(self, state: str) -> int:
        """Calls in progress that the last clean stop handed over; the first connect
        reconciles them with Asterisk's live channels."""
        try:
            count, startup = handover.load(self.tracker.book, json.loads(state))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("AMI %s: the calls handed over at the last stop cannot be read (%s: %s); "
                        "the channel list on connect adopts those still up", self.name, type(exc).__name__, exc,
                        extra=fields(pbx=self.name))
            return 0
        if self.startup is None:
            self.startup = startup
        log.info("AMI %s: %d call(s) in progress handed over from the last stop", self.name, count,
                 extra=fields(pbx=self.name))
        return count

    @property
    def events_received(self) -> int:
        """Every event received, including those the parser dropped unparsed."""
        live = self._conn.parser.skipped if self._conn is not None else 0
        return self.events + self._skipped_closed + live

    # ------------------------------------------------------------------ internals

    def _change(self, state: str, detail: str, level: int, msg: str, *args: Any) -> None:
        """Log a state change once; the same failure on every retry stays at debug."""
        self.state = state
        if state != "connected":
            self.last_error = detail
        key = (state, detail)
        if key == self._logged or level <= logging.DEBUG:
            log.debug(msg, *args)
            return
        self._logged = key
        log.log(level, msg, *args, extra=fields(pbx=self.name))

    async def _deliver(self, queue: asyncio.Queue[CallRecord], on_call: CallSink) -> None:
        while True:
            record = await queue.get()
            try:
                await on_call(record)
            except asyncio.CancelledError:
                queue.put_nowait(record)  # not handed on yet: run()'s drain retries it
                raise
            except Exception:
                log.exception("AMI %s: call %s could not be handed on", self.name, record.call_id,
                              extra=fields(call_id=record.call_id, pbx=self.name))

    def _connect_failed(self, exc: BaseException, delay: float) -> None:
        if isinstance(exc, LoginRefused):
            self._change("login refused", str(exc), logging.ERROR,
                         "AMI %s: login refused by %s for user %r: %s (check username and secret "
                         "in [[pbx]] and manager.conf); retrying with backoff",
                         self.name, self._where, self.settings.username, exc)
        else:
            self._change("unreachable", _describe(exc), logging.WARNING,
                         "AMI %s: cannot connect to %s: %s; retrying with backoff",
                         self.name, self._where, _describe(exc))
        log.debug("AMI %s: attempt %d failed, next in %.2f s", self.name, self._backoff.failures, delay)

    async def _open(self) -> _Conn:
        s = self.settings
        if self.state in ("idle", "disconnected"):
            self.state = "connecting"  # failure states stay visible while retrying
        # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation that
        # lands as the inner await completes, and the source would then never stop.
        async with asyncio.timeout(s.connect_timeout):
            reader, writer = await asyncio.open_connection(s.host, s.port, limit=READ_SIZE)
        tracker = self.tracker
        parser = AmiParser(events=tracker.wanted_events | {"FullyBooted"} | _LIST_EVENTS,
                           variables=tracker.wanted_variables)
        conn = _Conn(reader, writer, parser)
        try:
            async with asyncio.timeout(s.connect_timeout):
                banner = await _read_banner(reader)
                if not banner.startswith(b"Asterisk Call Manager"):
                    raise AmiError(f"not an AMI server (banner {banner[:40]!r})")
                login_id = next_action_id("login")
                conn.writer.write(encode_action({
                    "Action": "Login", "ActionID": login_id, "Username": s.username,
                    "Secret": s.secret, "Events": "on",
                }))
                reply = await self._await_response(conn, login_id)
            if reply.get("Response") != "Success":
                raise LoginRefused(reply.get("Message") or reply.get("Response") or "refused")
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    async def _await_response(conn: _Conn, action_id: str) -> dict[str, str]:
        while True:
            data = await conn.reader.read(READ_SIZE)
            if not data:
                raise EOFError("closed during login")
            messages = conn.parser.feed(data)
            for i, msg in enumerate(messages):
                if msg.get("ActionID") == action_id and "Response" in msg:
                    # Keep what came with it (FullyBooted, first events) for the session.
                    conn.backlog.extend(messages[i + 1:])
                    return msg
                conn.backlog.append(msg)

    async def _session(self, conn: _Conn, queue: asyncio.Queue[CallRecord]) -> None:
        self.sessions += 1
        self._conn = conn
        self._dropped_logged = 0
        self.connected_since = self.clock()
        # While sessions keep ending within seconds, "connected" is no news: the loss that
        # follows is logged once for the whole streak, and the end of the streak once.
        flapping = self._short_sessions > 0
        self._change("connected", "", logging.DEBUG if flapping else logging.INFO, "AMI %s: connected to %s as %r",
                     self.name, self._where, self.settings.username)
        stable = (asyncio.get_running_loop().call_later(self._backoff.healthy_after, self._stable)
                  if flapping else None)
        pinger = asyncio.create_task(self._pinger(conn), name=f"ami-ping-{self.name}")
        self._lists.clear()
        self._login_boot = True
        reconciler = asyncio.create_task(self._reconcile(conn), name=f"ami-reconcile-{self.name}")
        try:
            if conn.backlog:
                self._handle(conn, conn.backlog, queue, self.clock())
                conn.backlog = []
            reader = conn.reader
            while True:
                data = await reader.read(READ_SIZE)
                if not data:
                    if pinger.done() and not pinger.cancelled() and pinger.exception():
                        raise pinger.exception()  # type: ignore[misc]
                    raise EOFError("closed by Asterisk")
                self.last_data_at = self.clock()
                conn.read_at = asyncio.get_running_loop().time()
                self._handle(conn, conn.parser.feed(data), queue, self.last_data_at)
                dropped = conn.parser.dropped_bytes
                if dropped and dropped >= 2 * self._dropped_logged:  # first time, then as it doubles
                    self._dropped_logged = dropped
                    log.warning("AMI %s: %s sends messages without an end (over %d KiB); dropped %d bytes "
                                "so far on this connection (not an AMI stream?)", self.name, self._where,
                                MAX_MESSAGE_BYTES // 1024, dropped, extra=fields(pbx=self.name))
        finally:
            pinger.cancel()
            reconciler.cancel()
            if stable is not None:
                stable.cancel()

    def _stable(self) -> None:
        self._short_sessions = 0
        self._change("connected", "", logging.INFO, "AMI %s: connected to %s as %r, and staying up this time",
                     self.name, self._where, self.settings.username)

    def _handle(self, conn: _Conn, messages: list[dict[str, str]],
                queue: asyncio.Queue[CallRecord], now: float) -> None:
        tracker = self.tracker
        lists = self._lists
        for msg in messages:
            if "Event" in msg:
                if lists and msg.get("ActionID") in lists:
                    self._list_item(msg, queue, now)
                    continue
                self.events += 1
                if msg["Event"] == "FullyBooted" and self._login_boot:
                    # Only the one that greets a login: its uptime is this Asterisk's now.
                    self._login_boot = False
                    self._check_restart(msg, now)
                for record in tracker.feed(msg, now):
                    self.calls_emitted += 1
                    queue.put_nowait(record)
            elif "Response" in msg:
                fut = conn.pending.pop(msg.get("ActionID", ""), None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)

    def _check_restart(self, msg: dict[str, str], now: float) -> None:
        try:
            uptime = float(msg.get("Uptime", ""))
        except ValueError:
            return
        boot = now - uptime
        previous, self._boot_epoch = self._boot_epoch, boot
        # CoreStatus's startup time, once known, is the word on restarts; an uptime is only
        # an estimate, for when CoreStatus is refused or did not answer before the link went.
        if self.startup is None and previous is not None and abs(boot - previous) > RESTART_SLACK_SECONDS:
            self._restarted(now)

    def _restarted(self, now: float) -> None:
        since = self.connected_since if self.connected_since is not None else now
        records = reconcile.interrupt_all(self.tracker, now, since)
        for record in records:
            self.calls_emitted += 1
            assert self._queue is not None
            self._queue.put_nowait(record)
        log.warning("AMI %s: Asterisk at %s restarted; %d call(s) in progress recorded as interrupted",
                    self.name, self._where, len(records), extra=fields(pbx=self.name))

    async def _reconcile(self, conn: _Conn) -> None:
        """Which Asterisk this is (a restart?), then its live channels (`reconcile.py`)."""
        timeout = self.settings.connect_timeout
        try:
            async with asyncio.timeout(timeout):
                status = await conn.send({"Action": "CoreStatus"})
            if self._allowed("CoreStatus", status):
                startup = f"{status.get('CoreStartupDate', '')} {status.get('CoreStartupTime', '')}"
                previous, self.startup = self.startup, startup
                if previous is not None and previous != startup:
                    self._restarted(self.clock())
            action_id = next_action_id("channels")
            self._lists[action_id] = []
            async with asyncio.timeout(timeout):
                reply = await conn.send({"Action": "CoreShowChannels", "ActionID": action_id})
            if not self._allowed("CoreShowChannels", reply):
                self._lists.pop(action_id, None)
        except TimeoutError:
            log.warning("AMI %s: no answer from %s to CoreStatus/CoreShowChannels within %g s; calls in "
                        "progress are not reconciled on this connection", self.name, self._where, timeout,
                        extra=fields(pbx=self.name))

    def _allowed(self, action: str, reply: dict[str, str]) -> bool:
        if reply.get("Response") == "Success":
            return True
        if action not in self._refused:
            self._refused.add(action)
            message = reply.get("Message", "") or reply.get("Response", "no answer")
            log.error("AMI %s: Asterisk at %s refused %s for user %r (%s): give that manager.conf user "
                      "`write = reporting`; without it calls in progress at a connect are not reconciled "
                      "(calls that began while aftercalld was away are not recorded)", self.name, self._where,
                      action, self.settings.username, message, extra=fields(pbx=self.name))
        return False

    def _list_item(self, msg: dict[str, str], queue: asyncio.Queue[CallRecord], now: float) -> None:
        action_id = msg["ActionID"]
        if msg["Event"] == "CoreShowChannel":
            self._lists[action_id].append(msg)
            return
        if msg["Event"] != "CoreShowChannelsComplete":
            return
        rows = self._lists.pop(action_id)
        before = dict(self.tracker.stats)
        for record in self.tracker.reconcile(rows, now):
            self.calls_emitted += 1
            queue.put_nowait(record)
        stats = self.tracker.stats
        log.info("AMI %s: reconciled with Asterisk's %d live channel(s): %d call(s) adopted, %d ended while "
                 "aftercalld was not connected", self.name, len(rows), stats["adopted"] - before["adopted"],
                 stats["ended_unseen"] - before["ended_unseen"], extra=fields(pbx=self.name))

    async def _pinger(self, conn: _Conn) -> None:
        s = self.settings
        while True:
            await asyncio.sleep(s.ping_interval)
            self.tracker.expire(self.clock())  # evict stale calls even when the PBX is idle
            fut = conn.send({"Action": "Ping"})
            loop = asyncio.get_running_loop()
            while True:
                try:
                    async with asyncio.timeout(s.ping_timeout):
                        await asyncio.shield(fut)  # a timeout must not cancel the Pong we may still get
                    break
                except TimeoutError:
                    # A link busy with a burst delivers the Pong behind every event sent
                    # before it: data still arriving proves the link alive; silence does not.
                    if loop.time() - conn.read_at >= s.ping_timeout:
                        conn.close()
                        raise AmiError(f"no answer to Ping within {s.ping_timeout:g} s (dead link)") from None


async def _read_banner(reader: asyncio.StreamReader) -> bytes:
    """The greeting line. A peer that sends no line end within the read limit is not AMI
    (readline() would raise a ValueError there, which is no connection failure)."""
    try:
        return await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise EOFError("closed before the banner") from None
        raise AmiError(f"not an AMI server (closed after {len(exc.partial)} bytes without a line end: "
                       f"{exc.partial[:40]!r})") from None
    except asyncio.LimitOverrunError as exc:
        raise AmiError(f"not an AMI server (no banner: {exc.consumed} bytes without a line end)") from None


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

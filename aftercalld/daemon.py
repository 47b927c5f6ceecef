"""`aftercalld run`: wire sources, pipeline, outbox, dispatcher and transport together, and
live under systemd (READY, STATUS, WATCHDOG, SIGHUP reload, SIGTERM drain)."""
from __future__ import annotations

import asyncio
import functools
import importlib
import json
import logging
import os
import signal
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import Gauge

from . import gctune, retention, systemd
from .api.config import ApiConfig
from .backoff import Backoff
from .cdr.backfill import Backfill
from .clock import Clock, system_clock, utc_now
from .config import Config, TransportConfig, load, log_config_warnings
from .configreader import ConfigError
from .diskreserve import DiskReserve
from .dispatcher import Dispatcher
from .instance import InstanceLock
from .logtransport import LogTransport
from .metrics import Metrics
from .pipeline import CallHandler
from .policy import Policy
from .replies import ReplyHandler
from .routing import RoutedTransport
from .source import CallSource
from .store import InlineOutbox, Outbox, OutboxUnavailable, Store, StoreError
from .store.location import shown, with_password_file
from .supervisor import Supervisor
from .transport import Transport
from .webhooks.events import WebhookEvents

if TYPE_CHECKING:
    from .api.server import ApiServer
    from .webhooks.worker import WebhookWorker

log = logging.getLogger(__name__)

STATUS_EVERY_SECONDS = 5.0
HEARTBEAT_SECONDS = 5.0  # how often an instance on a shared outbox says it is alive
OUTBOX_RETRY_MIN_SECONDS = 0.5
OUTBOX_RETRY_MAX_SECONDS = 5.0


def make_transport(config: Config) -> Transport:
    """The one transport, as it is (the hot path), or several behind their routes."""
    transports = config.all_transports
    if len(transports) == 1 and not config.routes:
        return build_transport(transports[0])
    return RoutedTransport([(build_transport(t), t.failover_after) for t in transports], config.routes)


def build_transport(config: TransportConfig) -> Transport:
    """One transport of the config, by itself (no routing)."""
    if config.type == "log":
        return LogTransport(config.label)
    module = importlib.import_module(f"aftercalld.{config.type}")
    return module.make_transport(config.settings, config.label)


def make_sources(config: Config, clock: Clock) -> list[CallSource]:
    sources = []
    for pbx in config.pbxs:
        module = importlib.import_module("aftercalld.ami" if pbx.type == "asterisk" else "aftercalld.esl")
        sources.append(module.make_source(pbx, clock=clock))
    return sources


def status_path(config: Config) -> Path:
    """Where the running daemon leaves its live status for `aftercalld status`: next to an
    SQLite outbox, in the state directory with a PostgreSQL one."""
    if config.outbox_is_postgres:
        return Path(config.state_dir) / "status.json"
    return Path(config.outbox_path).with_name("status.json")


async def open_store(config: Config) -> Store:
    """The outbox `config` names, behind the coroutine contract. Raises OutboxUnavailable
    while it cannot be opened (disk full, PostgreSQL down)."""
    if config.outbox_is_postgres:
        from .store.postgres import PgOutbox  # psycopg is an optional extra
        try:
            dsn = with_password_file(config.outbox_path, config.outbox_password_file)
        except OSError as exc:
            raise OutboxUnavailable(f"cannot read [general] outbox_password_file: {exc.strerror}") from None
        return await PgOutbox.open(dsn, instance=config.instance)
    return InlineOutbox(Outbox.open(config.outbox_path, synchronous=config.sqlite_synchronous,
                                    cache_mib=config.sqlite_cache_mib))


class Daemon:
    def __init__(self, config: Config, config_path: str, clock: Clock = system_clock) -> None:
        self.config = config
        self.clock = clock
        self.config_path = config_path
        self.store: Store | None = None  # what every component awaits
        self.outbox: Outbox | None = None  # the SQLite outbox itself, None on PostgreSQL
        self._queue_depth = 0  # PostgreSQL: refreshed by the heartbeat, read by metrics and status
        # PostgreSQL: finished calls, and submit outcomes, are written on connections of their
        # own, so that a hangup never waits behind the dispatcher's claims, nor a claim behind
        # a commit that waits for the server's disk.
        self.calls_store: Store | None = None
        self.outcomes_store: Store | None = None
        self.dispatcher: Dispatcher | None = None
        self.handler: CallHandler | None = None
        self.transport: Transport | None = None
        self.metrics = Metrics(instance=config.instance)
        self.sources: list[CallSource] = []
        self.supervisor = Supervisor()
        self.backfill: Backfill | None = None
        self.webhook_events = WebhookEvents(())
        self.webhooks: WebhookWorker | None = None
        self.replies: ReplyHandler | None = None
        self.api: ApiServer | None = None
        self._stop = asyncio.Event()
        self.stop_signal = "SIGTERM"
        self._instance_lock: InstanceLock | None = None
        self.started_at = utc_now(clock)
        # The disk reserve, the one-instance lock and the checkpointer are an SQLite file's:
        # a PostgreSQL outbox is shared by design and its disk is the server's.
        self.shared = config.outbox_is_postgres
        self.reserve = (None if self.shared else
                        DiskReserve(config.outbox_path, int(config.disk_reserve_mb * 1048576)))

    async def start(self) -> None:
        if not self.shared:
            self._instance_lock = InstanceLock.acquire(self.config.outbox_path)
        log_config_warnings(self.config, log)
        store = await self._open_outbox()
        if store is None:  # stopped while waiting for it
            return
        self.store = store
        if isinstance(store, InlineOutbox):
            self.outbox = store.sync
            self.outbox.checkpoint_in_background()
        if self.shared:
            self.calls_store = await open_store(self.config)
            self.outcomes_store = await open_store(self.config)
        self.transport = make_transport(self.config)
        self.policy = Policy(self.config.policy, store, self.config.timezone)
        self.replies = ReplyHandler(store, optout=self.config.optout, replies=self.config.replies,
                                    render=self.config.render, default_region=self.config.phone.default_region,
                                    clock=self.clock, webhooks=self.webhook_events)
        self.dispatcher = Dispatcher(store, self.transport, self.config.dispatch, optout=self.config.optout,
                                     default_region=self.config.phone.default_region, policy=self.policy,
                                     metrics=self.metrics, clock=self.clock, replies=self.replies,
                                     lease_seconds=self.config.lease_seconds, outcomes=self.outcomes_store)
        self.replies.on_queued = self.dispatcher.wake
        self._configure_webhooks()
        self.handler = CallHandler(self.config, self.calls_store or store, on_queued=self.dispatcher.wake,
                                   metrics=self.metrics, clock=self.clock, reserve=self.reserve)
        # Scraped on the metrics thread, which must not wait on a PostgreSQL round trip.
        self.metrics.track_queue_depth(self.outbox.queue_depth if self.outbox is not None
                                       else lambda: self._queue_depth)
        self.metrics.track_sources(lambda: self.sources)
        _track_unwritten(self.metrics, self.handler)
        _register_transport_metrics(self.metrics, self.transport)
        if self.config.metrics_listen:
            self.metrics.serve(self.config.metrics_listen)
        if self.config.api is not None:
            await self._start_api()
        # Sources first: a transport that is slow to come up must not hold back the PBX
        # connections (calls ending meanwhile would be missed); texts wait in the outbox.
        self.sources = make_sources(self.config, self.clock)
        await self._take_handover()
        for source in self.sources:
            self.supervisor.start(f"source {source.name}", functools.partial(source.run, self.handler))
        self._start_backfill()
        await self.dispatcher.start()
        self._supervise_parts()
        self._start_pruning()
        self._queue_depth = await store.queue_depth()
        if self.shared:
            self.supervisor.start("heartbeat", self._heartbeat)
        log.info("aftercalld running as instance %s: %d PBX(s), transport %s, %d rule(s), outbox %s, "
                 "%d message(s) waiting", self.config.instance, len(self.sources),
                 ", ".join(t.name for t in _members(self.transport)),
                 len(self.config.rules.rules), shown(self.config.outbox_path), self._queue_depth)

    async def _heartbeat(self) -> None:
        """Shared outbox: this instance's row in `instances` (what `aftercalld status` lists),
        and the queue depth for metrics and status, every few seconds."""
        from .store.postgres import PgOutbox
        assert isinstance(self.store, PgOutbox)
        while True:
            try:
                self._queue_depth = await self.store.queue_depth()
                await self.store.heartbeat(self.status(), self.clock())
            except OutboxUnavailable as exc:
                log.warning("instance %s: no heartbeat written (%s)", self.config.instance, exc)
            await asyncio.sleep(HEARTBEAT_SECONDS)

    def _configure_webhooks(self) -> None:
        """At start and on reload: message events reach the outbox's transactions only when
        some endpoint listens (the hot path pays nothing otherwise)."""
        assert self.store is not None
        endpoints = self.config.webhooks
        self.webhook_events.configure(endpoints)
        self.store.events = self.webhook_events if endpoints else None
        for other in (self.calls_store, self.outcomes_store):
            if other is not None:
                other.events = self.store.events
        if self.webhooks is not None:
            self.webhooks.configure(endpoints)
        elif endpoints:
            # aiohttp (about 25 MiB) is imported only when an endpoint is configured, as for [api].
            from .webhooks.worker import WebhookWorker

            self.webhooks = WebhookWorker(self.store, endpoints, clock=self.clock, metrics=self.metrics)
            self.webhook_events.on_written = self.webhooks.wake
            self.supervisor.start("webhooks", self.webhooks.run)

    def _start_backfill(self) -> None:
        """Calls that ended while nobody listened, from the PBXs' CDRs: now, and after each
        reconnect (a source going up again)."""
        assert self.handler is not None
        self.backfill = Backfill(self.config.pbxs, self.handler, metrics=self.metrics, clock=self.clock)
        if self.backfill:
            self.backfill.start()
            self.supervisor.start("cdr backfill", functools.partial(self.backfill.watch, self.sources))

    async def _start_api(self) -> None:
        """The HTTP API, before the sources: an address it cannot have stops the start
        with nothing else begun."""
        from .api.server import ApiServer  # aiohttp is imported only when [api] is on

        self.api = ApiServer(self)
        await self.api.bind()
        self.supervisor.start("http api", self.api.serve)

    async def _open_outbox(self) -> Store | None:
        """Open the outbox, waiting for as long as it cannot be (a full disk, an I/O error):
        exiting would only have systemd start us again into the same wall, and the PBX's
        calls meanwhile are better caught up by a daemon that comes up the moment it can.
        systemd hears why in the status line, and its start timeout is extended."""
        backoff = Backoff(OUTBOX_RETRY_MIN_SECONDS, OUTBOX_RETRY_MAX_SECONDS, jitter=lambda: 0.0)
        notifier = systemd.Notifier()
        reported = ""
        while not self._stop.is_set():
            try:
                outbox = await open_store(self.config)
            except OutboxUnavailable as exc:
                if self.reserve is not None and self.reserve.release("to open the outbox"):
                    continue
                delay = backoff.failed()
                if str(exc) != reported:
                    log.error("%s%s; retrying every %gs at most until it opens", exc,
                              "" if self.shared else _free_space(self.config.outbox_path),
                              OUTBOX_RETRY_MAX_SECONDS)
                    reported = str(exc)
                notifier.notify(f"STATUS=waiting for the outbox: {exc}",
                                f"EXTEND_TIMEOUT_USEC={int((delay + 10) * 1_000_000)}")
                try:
                    async with asyncio.timeout(delay):
                        await self._stop.wait()
                except TimeoutError:
                    pass
                continue
            if reported:
                log.warning("the outbox opens again: %s", shown(self.config.outbox_path))
            if self.reserve is not None:
                self.reserve.ensure()
            return outbox
        return None

    def _handover_key(self, source: CallSource) -> str:
        """Instances sharing an outbox each hand over their own calls in progress."""
        return f"{self.config.instance}/{source.name}" if self.shared else source.name

    async def _take_handover(self) -> None:
        """Calls in progress that the last clean stop wrote to the outbox, back to their
        sources before they connect (issue 12)."""
        assert self.store is not None
        for source in self.sources:
            take_over = getattr(source, "take_over", None)
            if take_over is None:
                continue
            saved = await self.store.take_handover(self._handover_key(source))
            if saved is not None:
                take_over(saved[0])

    async def _hand_over(self) -> None:
        """SIGTERM, sources stopped: their calls in progress go to the outbox for the next
        start, which would otherwise see them only as far as the PBX's channel list tells."""
        assert self.store is not None
        for source in self.sources:
            state = getattr(source, "handover_state", lambda: None)()
            if state is not None:
                try:
                    await self.store.save_handover(self._handover_key(source), state, self.clock())
                except Exception as exc:  # the stop goes on: the channel list covers most of it
                    log.error("could not hand over %s's calls in progress: %s", source.name, exc)
                    continue
                log.info("%s: calls in progress handed over to the next start", source.name)

    def reload(self) -> None:
        """SIGHUP: new rules, templates and limits, all at once; a bad file changes nothing."""
        try:
            new = load(self.config_path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running rules: %s", exc)
            return
        except Exception as exc:  # a reload must never take the daemon down
            log.error("reload refused, keeping the running rules: %s: %s", type(exc).__name__, exc)
            return
        log_config_warnings(new, log)
        # Connections and the transport stay as they are: say so when they were changed,
        # rather than claim a reload that did not happen.
        changed = _needs_restart(self.config, new)
        if changed:
            log.warning("reload of %s: %s; a reload cannot apply that: it takes effect at the next restart "
                        "(systemctl restart aftercalld), the old settings stay until then",
                        self.config_path, "; ".join(changed))
        keep_days_changed = new.keep_days != self.config.keep_days
        # The transport's segmenting stays too: segments are counted as the running transport sends.
        render = replace(new.render, segmenting=self.config.render.segmenting)
        self.config = replace(self.config, rules=new.rules, render=render, phone=new.phone,
                              optout=new.optout, policy=new.policy, dispatch=new.dispatch,
                              keep_days=new.keep_days, replies=new.replies, webhooks=new.webhooks,
                              api=_reloaded_api(self.config.api, new.api))
        if keep_days_changed:
            self._start_pruning()
        if self.handler:
            self.handler.config = self.config
        if self.dispatcher:
            self.dispatcher.optout = new.optout
            self.dispatcher.policy.config = new.policy
        if self.replies:
            self.replies.configure(new.optout, new.replies, render)
        if self.store:
            self._configure_webhooks()
        log.info("reloaded %s: %d rule(s)", self.config_path, len(new.rules.rules))

    def _supervise_parts(self) -> None:
        """What other modules started for the daemon's life: adopted or watched, so that
        its death is logged and the watchdog learns of it."""
        dispatcher, transport, outbox = self.dispatcher, self.transport, self.outbox
        if dispatcher is not None and dispatcher._task is not None:
            def restart_dispatcher() -> asyncio.Task:
                assert dispatcher is not None
                dispatcher._task = asyncio.create_task(dispatcher._run(), name="dispatcher")
                return dispatcher._task

            self.supervisor.adopt("the dispatcher", dispatcher._task, restart_dispatcher)
        for name, task in _transport_tasks(transport):
            self.supervisor.adopt(name, task)
        checkpointer = getattr(outbox, "_checkpointer", None)
        if checkpointer is not None:
            thread = checkpointer[1]
            self.supervisor.watch("the outbox checkpointer thread", thread.is_alive)
        metrics_thread = self.metrics.server_thread
        if metrics_thread is not None:
            self.supervisor.watch("the metrics server thread", metrics_thread.is_alive)

    def _start_pruning(self) -> None:
        self.supervisor.cancel("outbox pruning")
        if self.config.keep_days and self.store:
            outbox, keep_days, clock = self.store, self.config.keep_days, self.clock
            self.supervisor.start("outbox pruning",
                                  lambda: retention.prune_periodically(outbox, keep_days, clock))

    def status(self) -> dict[str, Any]:
        sources = [s.status() for s in self.sources]
        transport = self.transport.status() if self.transport else {}
        # Several transports (routes): one entry each, beside routing's summary.
        transports: list[dict[str, Any]] = transport.pop("transports", None) or ([transport] if transport else [])
        for each in transports:  # routing says "up" itself: what it fails over on
            self.metrics.transport_up.labels(each.get("name", "?")).set(1 if each.get("up", _is_up(each)) else 0)
        restarts = self.supervisor.status()
        for task, count in restarts.items():
            self.metrics.task_restarts.labels(task).set(count)
        return {
            "instance": self.config.instance,
            "pid": os.getpid(),
            "started": self.started_at.isoformat(timespec="seconds"),
            "updated": utc_now(self.clock).isoformat(timespec="seconds"),
            "sources": sources,
            "transport": transport,
            **({"transports": transports} if len(transports) > 1 or "routes" in transport else {}),
            "queue_depth": self.outbox.queue_depth() if self.outbox else self._queue_depth,
            "submitted_since_start": self.dispatcher.sent_total if self.dispatcher else 0,
            "task_restarts": restarts,
            "calls_waiting_for_outbox": self.handler.unwritten if self.handler else 0,
        }

    def status_line(self) -> str:
        info = self.status()
        self._write_status(info)
        pbx = ", ".join(f"{s.get('name')}: {s.get('state', '?')}" for s in info["sources"]) or "no PBX"
        transport = info["transport"].get("state", "?")
        line = (f"{pbx}; {info['transport'].get('name', 'transport')}: {transport}; "
                f"queue {info['queue_depth']}; submitted {info['submitted_since_start']}")
        if info["calls_waiting_for_outbox"]:
            line += (f"; {info['calls_waiting_for_outbox']} call(s) wait for the outbox "
                     f"({'database down?' if self.shared else 'disk full?'})")
        return line

    def _write_status(self, info: dict[str, Any]) -> None:
        path = status_path(self.config)
        try:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(info, default=str))
            tmp.replace(path)
        except OSError as exc:
            log.debug("cannot write %s: %s", path, exc)

    def request_stop(self, signal_name: str = "SIGTERM") -> None:
        self.stop_signal = signal_name
        self._stop.set()

    async def wait(self) -> None:
        await self._stop.wait()

    async def stop(self) -> None:
        """SIGTERM: take no new calls, let in-flight submits finish, unbind, close."""
        await self.supervisor.stop()
        if self.api:
            await self.api.close()  # what requests in progress queued is written
        if self.backfill:
            await self.backfill.stop()
        if self.store:
            await self._hand_over()
        if self.handler:
            await self.handler.aclose()  # a last write; calls it cannot write are logged as lost
        if self.dispatcher:
            await self.dispatcher.stop()
        if self.store:
            try:
                log.info("stopped; %d message(s) stay queued for the next start", await self.store.queue_depth())
            except OutboxUnavailable as exc:
                log.warning("stopped; the outbox cannot say how many messages stay queued (%s)", exc)
            await self.store.close()
        for other in (self.calls_store, self.outcomes_store):
            if other is not None:
                await other.close()
        if self._instance_lock:
            self._instance_lock.release()
        try:
            status_path(self.config).unlink()
        except OSError:
            pass


def _free_space(path: str) -> str:
    """What support staff check first when SQLite says only `disk I/O error`."""
    try:
        stat = os.statvfs(Path(path).parent)
    except OSError:
        return ""
    return f" ({stat.f_bavail * stat.f_frsize} bytes free on its disk)"


def _track_unwritten(metrics: Metrics, handler: CallHandler) -> None:
    Gauge("aftercalld_calls_waiting_for_outbox", "Finished calls held in memory: the outbox refuses writes",
          registry=metrics.registry).set_function(lambda: handler.unwritten)
    Gauge("aftercalld_calls_dropped_for_outbox", "Finished calls dropped since start: the outbox refused "
          "writes for longer than unwritten_calls_max calls", registry=metrics.registry
          ).set_function(lambda: handler.dropped)


def _members(transport: Transport | None) -> list[Transport]:
    """The transports that send: routing's members, or the one transport."""
    if isinstance(transport, RoutedTransport):
        return [m.transport for m in transport.members]
    return [transport] if transport is not None else []


def _register_transport_metrics(metrics: Metrics, transport: Transport | None) -> None:
    """Each transport's own gauges (binds and window; modem signal and registration), one
    collector per type, and routing's per-transport counts."""
    by_type: dict[str, list[Transport]] = {}
    for member in _members(transport):
        kind = str(member.status().get("type", "log"))
        if kind in ("smpp", "modem"):
            by_type.setdefault(kind, []).append(member)
    for kind, members in by_type.items():
        importlib.import_module(f"aftercalld.{kind}.metrics").register_metrics(metrics.registry, *members)
    if isinstance(transport, RoutedTransport):
        from .routing import register_metrics

        register_metrics(metrics.registry, transport)


def _transport_tasks(transport: Transport | None) -> list[tuple[str, asyncio.Task]]:
    """The tasks a transport keeps running for its whole life (its links to the SMSC or
    the modem, routing's watch). They catch their own errors; one that ends anyway is a bug."""
    tasks: list[tuple[str, asyncio.Task]] = []
    if isinstance(transport, RoutedTransport) and transport.task is not None:
        tasks.append((f"transport {transport.name} (failover watch)", transport.task))
    for member in _members(transport):
        link = getattr(member, "link", None)
        if link is not None and getattr(link, "task", None) is not None:
            tasks.append((f"transport {member.name} (modem link)", link.task))
        for slot in getattr(member, "_slots", ()):
            if getattr(slot, "task", None) is not None:
                tasks.append((f"transport {member.name} {slot.label}", slot.task))
    return tasks


def _needs_restart(old: Config, new: Config) -> list[str]:
    """What a reload cannot apply: the PBX links, the transport, the outbox, the metrics
    listener. Each changed one, named as the config file names it."""
    changed = []
    old_pbxs = {p.name: p for p in old.pbxs}
    new_pbxs = {p.name: p for p in new.pbxs}
    for name in sorted(old_pbxs.keys() | new_pbxs.keys()):
        before, after = old_pbxs.get(name), new_pbxs.get(name)
        # PbxConfig leaves its protocol settings and CDR source out of ==: compare them too.
        if (before, getattr(before, "settings", None), getattr(before, "cdr", None)) != (
                after, getattr(after, "settings", None), getattr(after, "cdr", None)):
            verb = "added" if name not in old_pbxs else "removed" if name not in new_pbxs else "changed"
            changed.append(f"[[pbx]] {name!r} was {verb}")
    if len(old.all_transports) == len(new.all_transports) == 1 and old.transport.type != new.transport.type:
        changed.append(f"[transport] type was changed ({old.transport.type} → {new.transport.type})")
    elif old.all_transports != new.all_transports:
        changed.append("[transport] was changed")
    if old.routes != new.routes:
        changed.append("[[route]] was changed")
    if old.outbox_path != new.outbox_path:
        changed.append("[general] outbox was changed")
    if old.metrics_listen != new.metrics_listen:
        changed.append("[metrics] listen was changed")
    if (old.api is None) != (new.api is None):
        changed.append(f"[api] was {'enabled' if new.api else 'disabled'}")
    elif old.api and new.api and (old.api.listen, old.api.max_body_bytes) != (new.api.listen, new.api.max_body_bytes):
        changed.append("[api] listen or max_body_bytes was changed")
    return changed


def _reloaded_api(old: ApiConfig | None, new: ApiConfig | None) -> ApiConfig | None:
    """Tokens, sender and max_segments take effect at a reload (a token can be revoked
    without a restart); the listener stays as it is (see _needs_restart)."""
    if old is None or new is None:
        return old
    return replace(new, host=old.host, port=old.port, max_body_bytes=old.max_body_bytes)


def _is_up(status: dict[str, Any]) -> bool:
    state = str(status.get("state", "")).lower()
    return state in ("connected", "bound", "ready", "up", "dry run", "registered")


async def run(config: Config, config_path: str) -> int:
    daemon = Daemon(config, config_path)
    loop = asyncio.get_running_loop()
    # Before start(): a SIGTERM while connecting must drain like any other, not kill us.
    loop.add_signal_handler(signal.SIGTERM, daemon.request_stop, "SIGTERM")
    loop.add_signal_handler(signal.SIGINT, daemon.request_stop, "SIGINT (Ctrl-C)")
    loop.add_signal_handler(signal.SIGHUP, daemon.reload)
    try:
        await daemon.start()
    except (StoreError, OSError, sqlite3.Error) as exc:
        log.error("cannot start: %s", exc)
        return 1
    gctune.tune_for_daemon()
    notifier = systemd.Notifier()
    notifier.ready(daemon.status_line())
    keep_alive = asyncio.create_task(systemd.keep_alive(notifier, daemon.status_line, STATUS_EVERY_SECONDS,
                                                        healthy=daemon.supervisor.healthy))
    await daemon.wait()
    log.info("%s: draining (up to %gs for in-flight submits)", daemon.stop_signal,
             config.dispatch.drain_timeout_seconds)
    notifier.stopping()
    keep_alive.cancel()
    await daemon.stop()
    return 0

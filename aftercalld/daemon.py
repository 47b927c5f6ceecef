"""`aftercalld run`: wire sources, pipeline, outbox, dispatcher and transport together."""
from __future__ import annotations

import asyncio
import importlib
import logging
import signal
from dataclasses import replace

from . import systemd
from .config import Config, load
from .configreader import ConfigError
from .dispatcher import Dispatcher
from .logtransport import LogTransport
from .pipeline import CallHandler
from .policy import Policy
from .source import CallSource
from .store import Outbox, StoreError
from .transport import Transport

log = logging.getLogger(__name__)


def make_transport(config: Config) -> Transport:
    if config.transport.type == "log":
        return LogTransport()
    module = importlib.import_module(f"aftercalld.{config.transport.type}")
    return module.make_transport(config.transport.settings)


def make_sources(config: Config) -> list[CallSource]:
    sources = []
    for pbx in config.pbxs:
        module = importlib.import_module("aftercalld.ami" if pbx.type == "asterisk" else "aftercalld.esl")
        sources.append(module.make_source(pbx))
    return sources


class Daemon:
    def __init__(self, config: Config, config_path: str) -> None:
        self.config = config
        self.config_path = config_path
        self.outbox: Outbox | None = None
        self.dispatcher: Dispatcher | None = None
        self.handler: CallHandler | None = None
        self.sources: list[CallSource] = []
        self._source_tasks: list[asyncio.Task] = []
        self._stop = asyncio.Event()

    async def start(self) -> None:
        self.outbox = Outbox.open(self.config.outbox_path, synchronous=self.config.sqlite_synchronous)
        transport = make_transport(self.config)
        self.policy = Policy(self.config.policy, self.outbox, self.config.timezone)
        self.dispatcher = Dispatcher(self.outbox, transport, self.config.dispatch, optout=self.config.optout,
                                     default_region=self.config.phone.default_region, policy=self.policy)
        self.handler = CallHandler(self.config, self.outbox, on_queued=self.dispatcher.wake)
        await self.dispatcher.start()
        self.sources = make_sources(self.config)
        for source in self.sources:
            self._source_tasks.append(asyncio.create_task(source.run(self.handler), name=f"source {source.name}"))
        log.info("aftercalld running: %d PBX(s), transport %s, %d rule(s), outbox %s, %d message(s) waiting",
                 len(self.sources), transport.name, len(self.config.rules.rules), self.config.outbox_path,
                 self.outbox.queue_depth())

    def reload(self) -> None:
        """SIGHUP: new rules and templates, atomically; a bad file changes nothing."""
        try:
            new = load(self.config_path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running rules: %s", exc)
            return
        except Exception as exc:
            log.error("reload refused, keeping the running rules: %s", exc)
            return
        # Connections and transport stay as they are; rules, templates and limits change.
        self.config = replace(self.config, rules=new.rules, render=new.render, phone=new.phone,
                              optout=new.optout, policy=new.policy)
        if self.handler:
            self.handler.config = self.config
        if self.dispatcher:
            self.dispatcher.optout = new.optout
            self.dispatcher.policy.config = new.policy
        log.info("reloaded %s: %d rule(s)", self.config_path, len(new.rules.rules))

    def status_line(self) -> str:
        depth = self.outbox.queue_depth() if self.outbox else 0
        sent = self.dispatcher.sent_total if self.dispatcher else 0
        return f"{len(self.sources)} PBX(s); queue {depth}; submitted since start {sent}"

    def request_stop(self) -> None:
        self._stop.set()

    async def wait(self) -> None:
        await self._stop.wait()

    async def stop(self) -> None:
        """SIGTERM: take no new calls, let in-flight submits finish, unbind, close."""
        for task in self._source_tasks:
            task.cancel()
        await asyncio.gather(*self._source_tasks, return_exceptions=True)
        if self.handler:
            self.handler.flush()
        if self.dispatcher:
            await self.dispatcher.stop()
        if self.outbox:
            log.info("stopped; %d message(s) stay queued for the next start", self.outbox.queue_depth())
            self.outbox.close()


async def run(config: Config, config_path: str) -> int:
    daemon = Daemon(config, config_path)
    loop = asyncio.get_running_loop()
    try:
        await daemon.start()
    except StoreError as exc:
        log.error("%s", exc)
        return 1
    loop.add_signal_handler(signal.SIGTERM, daemon.request_stop)
    loop.add_signal_handler(signal.SIGINT, daemon.request_stop)
    loop.add_signal_handler(signal.SIGHUP, daemon.reload)
    notifier = systemd.Notifier()
    notifier.ready(daemon.status_line())
    watchdog = asyncio.create_task(systemd.keep_alive(notifier, daemon.status_line))
    await daemon.wait()
    notifier.stopping()
    watchdog.cancel()
    await daemon.stop()
    return 0

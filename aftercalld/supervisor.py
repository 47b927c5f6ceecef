"""Every long-lived task of the daemon runs here, so that none can die silently.

A supervised task that ends — by an exception (a bug, an input nobody foresaw) or by
returning, which a long-lived task never should — is logged with its traceback and started
again after a growing delay. Tasks other modules create (the dispatcher's loop, a
transport's link tasks) are *adopted*: the same, where the owner offers a way to restart,
else their death is logged and counts as unhealthy. Threads (the checkpointer, the metrics
server) are *watched* through a liveness probe.

`healthy()` is what the systemd watchdog asks before each ping: false once a supervised
task has failed `give_up_after` times in a row without a healthy run in between, or a
watched one is dead. Then the pings stop and systemd restarts a daemon that cannot heal
itself, instead of a process that looks alive while it texts nobody.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .backoff import Backoff

log = logging.getLogger(__name__)

RESTART_MIN_SECONDS = 1.0
RESTART_MAX_SECONDS = 60.0
# A task that ran this long before it died was healthy: its failure streak starts over.
HEALTHY_AFTER_SECONDS = 60.0
# Failures in a row (1 + 2 + 4 + 8 s of restarting, then the fifth death) after which a
# task is taken to be unable to heal.
GIVE_UP_AFTER_FAILURES = 5


@dataclass(slots=True)
class _Child:
    name: str
    factory: Callable[[], Awaitable[None]]
    backoff: Backoff
    task: asyncio.Task | None = None
    restarts: int = 0
    last_error: str = ""


@dataclass(slots=True)
class _Adopted:
    name: str
    task: asyncio.Task
    restart: Callable[[], asyncio.Task] | None
    backoff: Backoff
    started: float
    dead: str = ""


@dataclass(slots=True)
class _Watched:
    name: str
    alive: Callable[[], bool]
    reported: bool = field(default=False)


class Supervisor:
    def __init__(self, *, restart_min: float | None = None, restart_max: float | None = None,
                 healthy_after: float | None = None, give_up_after: int | None = None) -> None:
        # Read at construction, not import, so that a test can set the module's figures.
        self.restart_min = RESTART_MIN_SECONDS if restart_min is None else restart_min
        self.restart_max = RESTART_MAX_SECONDS if restart_max is None else restart_max
        self.healthy_after = HEALTHY_AFTER_SECONDS if healthy_after is None else healthy_after
        self.give_up_after = GIVE_UP_AFTER_FAILURES if give_up_after is None else give_up_after
        self._children: dict[str, _Child] = {}
        self._adopted: dict[str, _Adopted] = {}
        self._watched: dict[str, _Watched] = {}
        self._unhealthy_reason = ""
        self._stopping = False

    def start(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        """Run `factory()` until stopped, restarting it whenever it ends."""
        if name in self._children:
            self.cancel(name)
        child = _Child(name, factory, self._backoff())
        child.task = asyncio.create_task(self._keep(child), name=name)
        self._children[name] = child

    def adopt(self, name: str, task: asyncio.Task, restart: Callable[[], asyncio.Task] | None = None) -> None:
        """Supervise a task someone else started; `restart` starts it again."""
        previous = self._adopted.get(name)
        backoff = previous.backoff if previous else self._backoff()
        entry = _Adopted(name, task, restart, backoff, asyncio.get_running_loop().time())
        self._adopted[name] = entry
        task.add_done_callback(lambda done: self._adopted_ended(entry, done))

    def watch(self, name: str, alive: Callable[[], bool]) -> None:
        self._watched[name] = _Watched(name, alive)

    def _backoff(self) -> Backoff:
        return Backoff(self.restart_min, self.restart_max, healthy_after=self.healthy_after)

    def cancel(self, name: str) -> asyncio.Task | None:
        child = self._children.pop(name, None)
        if child is None or child.task is None:
            return None
        child.task.cancel()
        return child.task

    async def stop(self) -> None:
        """Cancel the supervised tasks; adopted ones are their owners' to stop."""
        self._stopping = True
        tasks = [t for t in (self.cancel(name) for name in list(self._children)) if t is not None]
        self._adopted.clear()
        self._watched.clear()
        await asyncio.gather(*tasks, return_exceptions=True)

    def healthy(self) -> bool:
        reason = self._problem()
        if reason and reason != self._unhealthy_reason:
            log.error("%s; no more watchdog pings, so that systemd restarts aftercalld", reason)
        elif not reason and self._unhealthy_reason:
            log.info("all supervised tasks are running again; watchdog pings resume")
        self._unhealthy_reason = reason
        return not reason

    def _problem(self) -> str:
        for child in self._children.values():
            if child.backoff.failures >= self.give_up_after:
                return (f"task {child.name!r} failed {child.backoff.failures} times in a row "
                        f"(last: {child.last_error}): it cannot heal itself")
        for adopted in self._adopted.values():
            if adopted.dead:
                return f"{adopted.name} {adopted.dead}"
            if adopted.backoff.failures >= self.give_up_after:
                return f"{adopted.name} failed {adopted.backoff.failures} times in a row: it cannot heal itself"
        for watched in self._watched.values():
            try:
                alive = watched.alive()
            except Exception as exc:  # the probe itself broke: count it as dead, and say why
                alive = False
                log.debug("probing %s failed: %r", watched.name, exc)
            if not alive:
                return f"{watched.name} is no longer running"
        return ""

    def status(self) -> dict[str, int]:
        """Restarts per supervised task, for `aftercalld status`."""
        return {name: child.restarts for name, child in self._children.items()}

    def _adopted_ended(self, entry: _Adopted, task: asyncio.Task) -> None:
        if self._stopping or self._adopted.get(entry.name) is not entry:
            return  # stopped on purpose, or already replaced
        loop = asyncio.get_running_loop()
        error = None if task.cancelled() else task.exception()
        what = ("was cancelled" if task.cancelled() else "stopped with an error" if error is not None
                else "ended although it should run until stopped")
        lasted = loop.time() - entry.started
        if entry.restart is None:
            entry.dead = what
            log.error("%s %s after %.1fs; it cannot be restarted alone", entry.name, what, lasted, exc_info=error)
            return
        delay = entry.backoff.ended(lasted) or self.restart_min
        entry.backoff.failures = max(entry.backoff.failures, 1)
        log.error("%s %s after %.1fs (failure %d in a row); restarting in %.2gs", entry.name, what, lasted,
                  entry.backoff.failures, delay, exc_info=error)
        restart = entry.restart

        def again() -> None:
            if not self._stopping and self._adopted.get(entry.name) is entry:
                self.adopt(entry.name, restart(), restart)

        loop.call_later(delay, again)

    async def _keep(self, child: _Child) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await child.factory()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error: BaseException | None = exc
                child.last_error = f"{type(exc).__name__}: {exc}"[:300]
            else:
                error = None
                child.last_error = "returned"
            lasted = loop.time() - started
            delay = child.backoff.ended(lasted)
            if delay == 0.0:
                # Ran long enough to count as healthy, yet a restart must never spin.
                delay = self.restart_min
                child.backoff.failures = 1
            child.restarts += 1
            what = "stopped with an error" if error is not None else "ended although it should run until stopped"
            log.error("task %r %s after %.1fs (failure %d in a row); restarting in %.2gs", child.name, what,
                      lasted, child.backoff.failures, delay, exc_info=error)
            await asyncio.sleep(delay)


__all__ = ["Supervisor"]

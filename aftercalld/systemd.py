"""sd_notify without a C library: READY=1, STATUS=, WATCHDOG=1, STOPPING=1.

The protocol is one datagram on the AF_UNIX socket named by $NOTIFY_SOCKET (a leading
'@' means the abstract namespace). Outside systemd every call is a no-op.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self) -> None:
        self.address = os.environ.get("NOTIFY_SOCKET", "")
        self._sock: socket.socket | None = None
        if self.address:
            if self.address.startswith("@"):
                self.address = "\0" + self.address[1:]
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *lines: str) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            log.debug("sd_notify failed: %s", exc)

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=draining")


def watchdog_interval() -> float | None:
    """Half of WatchdogSec, as systemd recommends; None when no watchdog is set for us."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None


async def keep_alive(notifier: Notifier, status: Callable[[], str], status_every: float = 10.0,
                     healthy: Callable[[], bool] = lambda: True) -> None:
    """Pings come from the event loop itself, so a stuck loop stops them and systemd
    restarts us; and only while `healthy()` says every supervised task is alive, so a
    daemon that lost a part it cannot get back is restarted too."""
    interval = watchdog_interval()
    tick = min(interval, status_every) if interval else status_every
    since_status = 0.0
    while True:
        if healthy() and interval:
            notifier.notify("WATCHDOG=1")
        since_status += tick
        if since_status >= status_every:
            notifier.status(status())
            since_status = 0.0
        await asyncio.sleep(tick)

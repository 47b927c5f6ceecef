"""One daemon per outbox on this machine.

A second `aftercalld run` on the same SQLite outbox used to start without complaint: two
dispatchers then claimed the same queue and the two sets of binds doubled the load on the
SMSC. The daemon holds an exclusive lock on `<outbox>.lock` for its whole life (the kernel
drops it when the process ends, however it ends) and writes its pid there, so a second one
is refused with the pid of the first.
"""
from __future__ import annotations

import fcntl
import os

from .store import StoreError


class AlreadyRunning(StoreError):
    pass


class InstanceLock:
    def __init__(self, fd: int, path: str) -> None:
        self._fd = fd
        self.path = path

    @classmethod
    def acquire(cls, outbox_path: str) -> InstanceLock | None:
        if outbox_path == ":memory:":
            return None
        path = outbox_path + ".lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise AlreadyRunning(f"another aftercalld (pid {other}) is already running on {outbox_path} "
                                 f"(it holds {path}); stop it first, or give this one its own outbox") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(fd, path)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing drops the lock; the file stays for the next start
            self._fd = -1

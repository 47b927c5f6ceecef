"""One daemon per outbox on this machine.

A second `aftercalld run` on the same SQLite outbox used to start without complaint: two
dispatchers then claimed the same queue and the two sets of binds doubled the load on the
SMSC. The daemon holds an exclusive lock on `<outbox>.lock` for its whole life (the kernel
drops it when the process ends, however it ends) and writes its pid there, so a second one
is refused with the pid of the first.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os

from .store import StoreError

log = logging.getLogger(__name__)

# The pid is written over a fixed width, so a restart on a full disk rewrites bytes the file
# already has instead of asking the filesystem for a block.
_PID_WIDTH = 16


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
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                raise
            # A first start on a full disk: the daemon's job (keeping the PBX's calls) comes
            # before this guard; the lock file is made at the next start with room for it.
            log.warning("cannot create %s (%s): a second aftercalld on this outbox would not be refused "
                        "until the next start", path, exc.strerror)
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise AlreadyRunning(f"another aftercalld (pid {other}) is already running on {outbox_path} "
                                 f"(it holds {path}); stop it first, or give this one its own outbox") from None
        try:
            os.pwrite(fd, f"{os.getpid()}\n".ljust(_PID_WIDTH).encode(), 0)
        except OSError as exc:  # only the pid in the refusal message is lost
            log.warning("cannot write the pid into %s: %s", path, exc.strerror)
        return cls(fd, path)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing drops the lock; the file stays for the next start
            self._fd = -1

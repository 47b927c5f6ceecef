"""Disk space held next to the outbox for the two moments a full disk would cost calls.

A daemon that runs keeps finished calls in memory while the outbox refuses writes, and
writes them when space is back. Two moments have no such way out: opening the outbox (SQLite
creates its WAL index, `-shm`, 32 KiB, and cannot open without it) and stopping (calls still
in memory are lost). For those the daemon keeps a file of `[general] disk_reserve_mb` next
to the outbox, deletes it right then, and makes it again once the disk has room for twice
its size (it never is what fills a disk). Whatever fills the disk may take the freed space
first: the reserve makes these moments likely to succeed, not certain.
"""
from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


class DiskReserve:
    def __init__(self, outbox_path: str | Path, size_bytes: int) -> None:
        self.path = Path(f"{outbox_path}.reserve")
        self.size = size_bytes

    def held(self) -> int:
        try:
            return self.path.stat().st_blocks * 512
        except OSError:
            return 0

    def ensure(self) -> bool:
        """Make the reserve if it is missing and the disk has room for twice its size.
        True when it is there."""
        if self.size <= 0:
            return False
        if self.held() >= self.size:
            return True
        try:
            stat = os.statvfs(self.path.parent)
            if stat.f_bavail * stat.f_frsize < 2 * self.size:
                return False
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                _allocate(fd, self.size)
            finally:
                os.close(fd)
        except OSError as exc:
            log.debug("cannot make the disk reserve %s: %s", self.path, exc)
            self.path.unlink(missing_ok=True)
            return False
        log.debug("disk reserve %s: %d bytes", self.path, self.size)
        return True

    def release(self, why: str) -> bool:
        """Delete the reserve; True if that freed space."""
        freed = self.held()
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.error("cannot release the disk reserve %s: %s", self.path, exc)
            return False
        if freed:
            log.warning("the disk is full: released the %.1f MiB reserve %s %s; free space on that disk",
                        freed / 1048576, self.path, why)
        return bool(freed)


def _allocate(fd: int, size: int) -> None:
    """Real blocks, not a sparse file (a hole reserves nothing)."""
    try:
        os.posix_fallocate(fd, 0, size)
        return
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # the filesystem cannot: write zeros
            raise
    block = b"\0" * 65536
    written = 0
    while written < size:
        written += os.write(fd, block[: min(len(block), size - written)])
    os.fsync(fd)

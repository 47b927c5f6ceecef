"""A small real filesystem (tmpfs) that a test fills to the brim and frees again, and AMI
calls with fresh ids, for the disk-full service tests and bench/faults.py."""
from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

TRACE = Path(__file__).resolve().parents[1] / "data" / "traces" / "asterisk" / "inbound_missed_noanswer.ami"


class SmallDisk:
    """A tmpfs of `size` mounted on a fresh directory (needs root / CAP_SYS_ADMIN)."""

    def __init__(self, size: str = "4m") -> None:
        self.size = size
        self.path = Path(tempfile.mkdtemp(prefix="aftercalld-disk-"))
        self.filler = self.path / "filler"
        self.mounted = False

    def mount(self) -> str:
        """'' when mounted, else why not (for a skip message)."""
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size}", "tmpfs", str(self.path)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            self.path.rmdir()
            return (result.stderr or result.stdout).strip() or f"mount exited {result.returncode}"
        self.mounted = True
        return ""

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], check=False)
            self.mounted = False
        with contextlib.suppress(OSError):
            self.path.rmdir()

    def fill(self) -> None:
        """Write the filler until not one more byte fits."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for chunk in (1 << 20, 1 << 16, 1 << 12, 1 << 8, 1):
                block = b"\0" * chunk
                while True:
                    try:
                        os.write(fd, block)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def available(self) -> int:
        stat = os.statvfs(self.path)
        return stat.f_bavail * stat.f_frsize


@contextlib.contextmanager
def small_disk(size: str = "4m") -> Iterator[SmallDisk | str]:
    """The mounted disk, or a string saying why it could not be mounted."""
    disk = SmallDisk(size)
    why = disk.mount()
    try:
        yield why or disk
    finally:
        disk.unmount()


def _call_template() -> bytes:
    raw = TRACE.read_bytes()
    data = b"\r\n".join(line for line in raw.split(b"\r\n") if not line.startswith(b"#"))
    blocks = [b for b in data.split(b"\r\n\r\n") if b.strip() and not b.startswith(b"Event: FullyBooted")]
    return b"".join(b + b"\r\n\r\n" for b in blocks)


_TEMPLATE = _call_template()


def call_bytes(k: int) -> bytes:
    """The recorded missed call with ids and caller made unique by `k`; its call id is
    `call_id(k)` and its caller `caller(k)`."""
    return _TEMPLATE.replace(b"1796012888.", f"{1900000000 + k}.".encode()).replace(b"9876543210", caller(k).encode())


def call_head_and_tail(k: int) -> tuple[bytes, bytes]:
    """The call split before its last Hangup: a call in progress, then its end."""
    data = call_bytes(k)
    cut = data.rindex(b"Event: Hangup")
    return data[:cut], data[cut:]


def call_id(k: int) -> str:
    return f"{1900000000 + k}.4"


def caller(k: int) -> str:
    return f"98{k:08d}"

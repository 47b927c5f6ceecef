"""What aftercalld writes to disk holds phone numbers and texts: owner and group only,
whatever the umask it was started with (issue 13, item 13)."""
from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys

import pytest
from core_helpers import call, write_config

from aftercalld.config import load
from aftercalld.pipeline import CallHandler
from aftercalld.store import Outbox


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_a_new_outbox_and_its_wal_and_shm_are_not_world_readable(tmp_path, umask_022):
    path = tmp_path / "state" / "outbox.sqlite3"
    config = load(write_config(tmp_path))
    outbox = Outbox.open(path)
    try:
        CallHandler(config, outbox).handle(call())  # a write: the WAL and its index exist now
        assert (mode(path.parent), mode(path)) == (0o750, 0o640)
        assert (mode(f"{path}-wal"), mode(f"{path}-shm")) == (0o640, 0o640)
    finally:
        outbox.close()


def test_an_existing_world_readable_outbox_is_tightened(tmp_path, umask_022):
    path = tmp_path / "outbox.sqlite3"
    Outbox.open(path).close()
    for p in (path, f"{path}-wal", f"{path}-shm"):
        if os.path.exists(p):
            os.chmod(p, 0o666)
    outbox = Outbox.open(path)
    try:
        assert mode(path) == 0o640
        assert all(mode(p) == 0o640 for p in (f"{path}-wal", f"{path}-shm") if os.path.exists(p))
    finally:
        outbox.close()


def test_the_daemon_started_under_umask_022_writes_nothing_world_readable(tmp_path):
    config = write_config(tmp_path)
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(30)
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
    proc = subprocess.Popen([sys.executable, "-m", "aftercalld", "run", "-c", str(config)], env=env,
                            stderr=subprocess.PIPE, text=True, preexec_fn=lambda: os.umask(0o022))
    try:
        message = notify.recv(4096).decode()
        while "READY=1" not in message:  # status.json is written with the READY status line
            message = notify.recv(4096).decode()
        outbox = tmp_path / "outbox.sqlite3"
        written = [outbox, tmp_path / "status.json", *(p for p in (tmp_path / "outbox.sqlite3-wal",
                                                                    tmp_path / "outbox.sqlite3-shm") if p.exists())]
        assert (tmp_path / "status.json").exists()
        assert {str(p.name): oct(mode(p) & 0o027) for p in written} == {str(p.name): "0o0" for p in written}
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        notify.close()
    assert proc.returncode == 0, err

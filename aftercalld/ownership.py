"""Who the outbox belongs to: the user the service runs as, never root by accident.

An admin who types `sudo aftercalld status` or `sudo aftercalld optout add …` before the
service's first start used to create `outbox.sqlite3` (or its -wal/-shm) owned by root; the
service user then failed with "attempt to write a readonly database". So, when run as root
on a state directory that belongs to another user:

* commands that use the outbox give every file of it they created back to that user
  (read-only commands create nothing but SQLite's -shm/-wal);
* `run` refuses: a daemon running as root would keep creating root-owned files.
"""
from __future__ import annotations

import os
import pwd
from pathlib import Path


class OwnershipError(Exception):
    pass


def _foreign_owner(outbox_path: str) -> os.stat_result | None:
    """The state directory's stat when we are root and it belongs to someone else."""
    if outbox_path == ":memory:" or os.geteuid() != 0:
        return None
    try:
        st = Path(outbox_path).parent.stat()
    except FileNotFoundError:
        return None  # nobody owns it yet: root's own set-up, nothing to protect
    return st if st.st_uid != 0 else None


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def refuse_daemon_as_root(outbox_path: str) -> None:
    st = _foreign_owner(outbox_path)
    if st is not None:
        user = _user(st.st_uid)
        raise OwnershipError(
            f"{Path(outbox_path).parent} belongs to {user}: run the daemon as {user} "
            f"(systemctl start aftercalld, or sudo -u {user} aftercalld run …), not as root")


def give_back(outbox_path: str) -> None:
    """Hand the outbox files root created to the owner of their directory."""
    st = _foreign_owner(outbox_path)
    if st is None:
        return
    for suffix in ("", "-wal", "-shm", "-journal"):
        path = outbox_path + suffix
        try:
            if os.stat(path).st_uid == 0:
                os.chown(path, st.st_uid, st.st_gid)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise OwnershipError(f"cannot give {path} to {_user(st.st_uid)}: {exc.strerror}") from None

"""Where CDR rows come from, and how far they were read.

A `CdrStore` reads what is new since a position (a small JSON-able dict the backfill keeps
in the outbox's meta table) and returns the rows and the next position. Reads block (file
system, database), so the backfill runs them in a thread, never on the event loop.

The first read after install (no position yet) reads nothing and returns the position of
*now* (the end of the file, the newest row), so yesterday's calls are never texted.
"""
from __future__ import annotations

import abc
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from . import asterisk, freeswitch
from .config import CdrConfig

Position = dict[str, Any]

# One read takes at most this much of a file: a week's backlog is read in several turns
# rather than held in memory at once.
MAX_READ_BYTES = 2 * 1024 * 1024
# A database read: rows per query.
MAX_DB_ROWS = 20_000


class CdrStore(abc.ABC):
    @abc.abstractmethod
    def read(self, position: Position | None, now: float) -> tuple[list[Any], Position]:
        """(rows since `position`, the position after them). Blocking."""

    @abc.abstractmethod
    def group(self, rows: list[Any]) -> list[Any]:
        """Rows to calls (`AstCall` / `FsCall`)."""

    def describe(self) -> str:
        return ""


class CsvFile(CdrStore):
    """A CSV file the PBX appends to. The position is the file's identity (device, inode)
    and the byte offset after the last complete line: a line being written is left for the
    next read; a file replaced or truncated (log rotation) is read from its start."""

    def __init__(self, config: CdrConfig, tz: ZoneInfo) -> None:
        self.config = config
        self.path = Path(config.path)
        self.tz = tz

    def describe(self) -> str:
        return str(self.path)

    def read(self, position: Position | None, now: float) -> tuple[list[Any], Position]:
        with self.path.open("rb") as f:
            st = os.fstat(f.fileno())
            ident = [st.st_dev, st.st_ino]
            if position is None:
                return [], {"file": ident, "offset": _last_line_end(f, st.st_size)}
            offset = int(position.get("offset", 0))
            if position.get("file") != ident or st.st_size < offset:
                offset = 0  # rotated or truncated: a new file
            f.seek(offset)
            data = f.read(MAX_READ_BYTES)
        end = data.rfind(b"\n") + 1
        if not end and len(data) == MAX_READ_BYTES:
            # No line end in a whole read: not a CDR file's line. Step over it rather than
            # stop at it for ever.
            asterisk.log.warning("%s: %d bytes without a line end at offset %d skipped", self.path, len(data), offset)
            end = len(data)
        lines = data[:end].decode("utf-8", errors="replace").splitlines()
        rows = self._parse(lines)
        return rows, {"file": ident, "offset": offset + end}

    def _parse(self, lines: list[str]) -> list[Any]:
        if self.config.kind == "asterisk-csv":
            return asterisk.parse_csv(lines, self.tz, str(self.path))
        return freeswitch.parse_csv(lines, self.tz, str(self.path))

    def group(self, rows: list[Any]) -> list[Any]:
        return asterisk.group(rows) if self.config.kind == "asterisk-csv" else freeswitch.group(rows)


def _last_line_end(f, size: int) -> int:
    """The offset just after the file's last newline (0 when it has none)."""
    if size == 0:
        return 0
    chunk = min(size, 65536)
    f.seek(size - chunk)
    tail = f.read(chunk)
    cut = tail.rfind(b"\n")
    return size - chunk + cut + 1 if cut >= 0 else 0


class MysqlTable(CdrStore):
    """FreePBX's ``asteriskcdrdb.cdr`` over PyMySQL (``pip install 'aftercalld[mysql]'``).
    The position is the newest call end read, as Unix seconds: each read takes the rows
    that ended at or after it (a row read twice is the same call, which the outbox skips)."""

    def __init__(self, config: CdrConfig, tz: ZoneInfo) -> None:
        self.config = config
        self.tz = tz

    def describe(self) -> str:
        return self.config.describe()

    def read(self, position: Position | None, now: float) -> tuple[list[Any], Position]:
        if position is None:
            return [], {"ended": now}
        since = float(position.get("ended", now))
        local = datetime.fromtimestamp(since, UTC).astimezone(self.tz).replace(tzinfo=None)
        rows = self.query(local)
        cdrs = []
        for row in rows:
            try:
                cdrs.append(asterisk.from_db_row(row, self.tz))
            except asterisk.BadRow as exc:
                asterisk.log.warning("%s: CDR row skipped: %s", self.describe(), exc)
        newest = max((c.end for c in cdrs), default=since)
        return cdrs, {"ended": max(since, newest)}

    def query(self, since_local: datetime) -> list[dict[str, Any]]:
        import pymysql  # optional extra: only a site that configured a database needs it
        import pymysql.cursors

        c = self.config
        conn = pymysql.connect(host=c.host, port=c.port, user=c.user, password=c.password, database=c.database,
                               cursorclass=pymysql.cursors.DictCursor, connect_timeout=10, read_timeout=60,
                               charset="utf8mb4")
        try:
            with conn.cursor() as cur:
                # calldate is the call's start; a call that started before `since` may have
                # ended after it. The day's bound keeps the calldate index usable.
                cur.execute(
                    f"SELECT * FROM `{c.table}` WHERE calldate >= %s "
                    "AND calldate + INTERVAL duration SECOND >= %s ORDER BY calldate LIMIT %s",
                    (since_local - timedelta(days=1), since_local, MAX_DB_ROWS))
                return list(cur.fetchall())
        finally:
            conn.close()

    def group(self, rows: list[Any]) -> list[Any]:
        return asterisk.group(rows)


def make_store(config: CdrConfig, tz: ZoneInfo) -> CdrStore:
    return MysqlTable(config, tz) if config.kind == "mysql" else CsvFile(config, tz)

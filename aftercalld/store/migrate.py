"""`aftercalld migrate --to postgresql://…`: copy an SQLite outbox into a PostgreSQL one.

Everything support reads and the daemon needs goes across: calls, messages with their parts,
unmatched receipts, replies, the opt-out and DND lists, what was read of the PBXs' CDRs,
calls handed over at the last stop. Rows are matched by their natural keys (call key,
message key, list entry…), never by SQLite's row ids, so the copy can be rerun safely (after
an interruption, or once more just before switching over) and can go into an outbox other
instances already write to: nothing is copied twice, nothing there is overwritten.

A message that was being sent when the SQLite daemon stopped arrives with its claim already
expired, so the first instance to look sends it again, as the SQLite daemon itself would
have at its next start.
"""
from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .postgres import PgOutbox, as_columns
from .sqlite import Outbox
from .types import StoreError

BATCH = 1000


@dataclass
class Copied:
    """Rows newly written to PostgreSQL, per table (a rerun counts only what was missing)."""

    calls: int = 0
    messages: int = 0
    parts: int = 0
    receipts: int = 0
    replies: int = 0
    optout: int = 0
    dnd: int = 0
    settings: int = 0
    handover: int = 0

    def __str__(self) -> str:
        return ", ".join(f"{getattr(self, f.name)} {f.name}" for f in fields(self))


async def copy_outbox(sqlite_path: str | Path, dsn: str, *,
                      progress: Callable[[str, int], None] | None = None) -> Copied:
    source = Outbox.open_readonly(sqlite_path)
    target = await PgOutbox.open(dsn, instance="migrate")
    copied = Copied()
    note = progress or (lambda table, n: None)
    try:
        read = source.conn
        pg = target.conn
        for rows in _batches(read, "SELECT call_key, pbx, call_id, status, direction, caller, rule, decision, "
                                   "record, created_at FROM calls ORDER BY rowid"):
            cur = await pg.execute(
                "INSERT INTO calls (call_key, pbx, call_id, status, direction, caller, rule, decision, record, "
                "created_at, instance) SELECT *, 'migrated' FROM unnest(%s::text[], %s::text[], %s::text[], "
                "%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::float8[]) "
                "ON CONFLICT (call_key) DO NOTHING", as_columns(rows, 10))
            copied.calls += cur.rowcount
            note("calls", copied.calls)

        ids: dict[int, int] = {}  # SQLite message id -> PostgreSQL message id
        for rows in _batches(read, "SELECT id, key, call_key, rule, recipient_kind, raw_number, destination, sender, "
                                   "text, encoding, segments, options, state, reason, attempts, next_attempt_at, "
                                   "expires_at, created_at, updated_at, submitted_at, final_at, transport "
                                   "FROM messages ORDER BY id"):
            old_ids = [r[0] for r in rows]
            keys = [r[1] for r in rows]
            values = [r[1:] for r in rows]
            cur = await pg.execute(
                "INSERT INTO messages (key, call_key, rule, recipient_kind, raw_number, destination, sender, text, "
                "encoding, segments, options, state, reason, attempts, next_attempt_at, expires_at, created_at, "
                "updated_at, submitted_at, final_at, transport, lease_until) "
                "SELECT *, CASE WHEN state = 'sending' THEN 0 END FROM unnest(%s::text[], %s::text[], %s::text[], "
                "%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::int[], %s::text[], "
                "%s::text[], %s::text[], %s::int[], %s::float8[], %s::float8[], %s::float8[], %s::float8[], "
                "%s::float8[], %s::float8[], %s::text[]) AS m (key, call_key, rule, recipient_kind, raw_number, "
                "destination, sender, text, encoding, segments, options, state, reason, attempts, next_attempt_at, "
                "expires_at, created_at, updated_at, submitted_at, final_at, transport) "
                "ON CONFLICT (key) DO NOTHING", as_columns(values, 21))
            copied.messages += cur.rowcount
            cur = await pg.execute("SELECT key, id FROM messages WHERE key = ANY(%s)", (keys,))
            by_key: dict[str, int] = {key: id_ for key, id_ in await cur.fetchall()}
            ids.update((old, by_key[key]) for old, key in zip(old_ids, keys, strict=True))
            note("messages", copied.messages)

        for rows in _batches(read, "SELECT message_id, part, transport_id, match_key, state, error, updated_at "
                                   "FROM parts ORDER BY message_id, part"):
            mapped = [(ids[r[0]], *r[1:]) for r in rows if r[0] in ids]
            cur = await pg.execute(
                "INSERT INTO parts (message_id, part, transport_id, match_key, state, error, updated_at) "
                "SELECT * FROM unnest(%s::bigint[], %s::int[], %s::text[], %s::text[], %s::text[], %s::text[], "
                "%s::float8[]) ON CONFLICT (message_id, part) DO NOTHING", as_columns(mapped, 7))
            copied.parts += cur.rowcount

        for rows in _batches(read, "SELECT transport, transport_id, match_key, state, error, raw, received_at, "
                                   "matched FROM orphan_reports ORDER BY id"):
            for row in rows:
                cur = await pg.execute(
                    "INSERT INTO orphan_reports (transport, transport_id, match_key, state, error, raw, received_at, "
                    "matched) SELECT %s, %s, %s, %s, %s, %s, %s, %s WHERE NOT EXISTS (SELECT 1 FROM orphan_reports "
                    "WHERE transport = %s AND transport_id = %s AND received_at = %s)",
                    (*row, row[0], row[1], row[6]))
                copied.receipts += cur.rowcount

        for rows in _batches(read, "SELECT number, text, transport, keyword, message_id, call_key, received_at "
                                   "FROM replies ORDER BY id"):
            for number, text, transport, keyword, message_id, call_key, received_at in rows:
                cur = await pg.execute(
                    "INSERT INTO replies (number, text, transport, keyword, message_id, call_key, received_at) "
                    "SELECT %s, %s, %s, %s, %s, %s, %s WHERE NOT EXISTS (SELECT 1 FROM replies "
                    "WHERE number = %s AND received_at = %s AND text = %s)",
                    (number, text, transport, keyword, ids.get(message_id) if message_id else None, call_key,
                     received_at, number, received_at, text))
                copied.replies += cur.rowcount

        for table, column in (("optout", "number"), ("dnd", "entry")):
            for rows in _batches(read, f"SELECT {column}, source, created_at FROM {table} ORDER BY {column}"):
                cur = await pg.execute(
                    f"INSERT INTO {table} ({column}, source, created_at) SELECT * FROM unnest(%s::text[], "
                    f"%s::text[], %s::float8[]) ON CONFLICT ({column}) DO NOTHING", as_columns(rows, 3))
                setattr(copied, table, getattr(copied, table) + cur.rowcount)

        for rows in _batches(read, "SELECT key, value FROM meta WHERE key <> 'schema_version' ORDER BY key"):
            cur = await pg.execute("INSERT INTO meta (key, value) SELECT * FROM unnest(%s::text[], %s::text[]) "
                                   "ON CONFLICT (key) DO NOTHING", as_columns(rows, 2))
            copied.settings += cur.rowcount
        for rows in _batches(read, "SELECT pbx, state, saved_at FROM handover ORDER BY pbx"):
            cur = await pg.execute("INSERT INTO handover (pbx, state, saved_at) SELECT * FROM unnest(%s::text[], "
                                   "%s::text[], %s::float8[]) ON CONFLICT (pbx) DO NOTHING", as_columns(rows, 3))
            copied.handover += cur.rowcount
    except sqlite3.Error as exc:
        raise StoreError(f"{sqlite_path}: cannot read the outbox: {exc}") from None
    finally:
        source.close()
        await target.close()
    return copied


def _batches(conn: sqlite3.Connection, sql: str) -> Iterator[list[tuple[Any, ...]]]:
    cur = conn.execute(sql)
    while rows := cur.fetchmany(BATCH):
        yield rows

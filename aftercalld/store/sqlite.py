"""The outbox on SQLite, the embedded default.

A message is written here, under its idempotency key, before any transport sees it; a
second CallRecord for the same call changes nothing; a restart picks up what was queued.
Methods are grouped so that one call is one transaction: the dispatcher hands over whole
batches of outcomes and delivery reports, never one row at a time.

SQLite runs in WAL mode, with checkpoints on a background thread (see
`checkpoint_in_background`). Its calls are synchronous: one local transaction costs tens of
microseconds, less than a hop to a thread would.
"""
from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .. import msgid
from ..model import (
    CallRecord,
    DeliveryReport,
    MessageState,
    OutboundMessage,
    ReportState,
)
from ..rules.render import RenderedMessage
from ..textsafety import bounded
from .types import (
    MESSAGE_COLUMNS,
    REPORT_TO_STATE,
    Answered,
    EventSink,
    NoOutboxError,
    OutboxUnavailable,
    OutcomeRecord,
    Pruned,
    ReplyEffects,
    StoreError,
    Transition,
    WebhookDelivery,
    WebhookResult,
    WebhookRow,
    message_row,
    outbound_from_row,
    outcome_rows,
    settle,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

# Texts without a call removed per prune pass and kind (see Outbox._prune_callless).
PRUNE_CALLLESS_BATCH = 5_000

# WAL frames (pages) beyond which the background checkpointer makes the WAL start over.
WAL_RESTART_FRAMES = 16_384

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS calls (
    call_key   TEXT PRIMARY KEY,          -- pbx/call_id
    pbx        TEXT NOT NULL,
    call_id    TEXT NOT NULL,
    status     TEXT NOT NULL,
    direction  TEXT NOT NULL,
    caller     TEXT NOT NULL,
    rule       TEXT,                      -- NULL: no rule fired
    decision   TEXT NOT NULL,             -- why: the rule that matched, or why none did
    record     TEXT NOT NULL,             -- the CallRecord as JSON
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id              INTEGER PRIMARY KEY,
    key             TEXT NOT NULL UNIQUE, -- idempotency: pbx/call id + "/" + rule + "/" + recipient
    call_key        TEXT NOT NULL,
    rule            TEXT NOT NULL,
    recipient_kind  TEXT NOT NULL,
    raw_number      TEXT NOT NULL,
    destination     TEXT,                 -- E.164; NULL when the number itself was refused
    sender          TEXT NOT NULL,
    text            TEXT NOT NULL,
    encoding        TEXT NOT NULL,
    segments        INTEGER NOT NULL,
    options         TEXT NOT NULL,
    state           TEXT NOT NULL,
    reason          TEXT NOT NULL DEFAULT '',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    expires_at      REAL NOT NULL,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    submitted_at    REAL,
    final_at        REAL,
    transport       TEXT
);
CREATE INDEX IF NOT EXISTS messages_due ON messages (next_attempt_at) WHERE state IN ('queued', 'retrying');
-- Not (destination, submitted_at): then every submit would move an index entry.
CREATE INDEX IF NOT EXISTS messages_destination ON messages (destination);
CREATE TABLE IF NOT EXISTS parts (
    message_id   INTEGER NOT NULL REFERENCES messages (id),
    part         INTEGER NOT NULL,
    transport_id TEXT NOT NULL,           -- as the transport reported it
    match_key    TEXT NOT NULL,           -- msgid.match_key(transport_id)
    state        TEXT NOT NULL DEFAULT 'submitted',
    error        TEXT NOT NULL DEFAULT '',
    updated_at   REAL NOT NULL,
    PRIMARY KEY (message_id, part)
);
CREATE INDEX IF NOT EXISTS parts_match ON parts (match_key);
CREATE TABLE IF NOT EXISTS orphan_reports (  -- receipts that matched no part (yet)
    id           INTEGER PRIMARY KEY,
    transport    TEXT NOT NULL,
    transport_id TEXT NOT NULL,
    match_key    TEXT NOT NULL,           -- msgid.match_key(transport_id)
    state        TEXT NOT NULL,
    error        TEXT NOT NULL,
    raw          TEXT NOT NULL,
    received_at  REAL NOT NULL,
    matched      INTEGER NOT NULL DEFAULT 0  -- 1 matched; 0 waiting; -1 no loose match either
);
CREATE INDEX IF NOT EXISTS orphan_reports_key ON orphan_reports (match_key) WHERE matched <= 0;
CREATE INDEX IF NOT EXISTS orphan_reports_waiting ON orphan_reports (received_at) WHERE matched = 0;
CREATE TABLE IF NOT EXISTS dnd (
    entry      TEXT PRIMARY KEY,          -- E.164 number, or a prefix ending in *
    source     TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS optout (
    number     TEXT PRIMARY KEY,
    source     TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS replies (        -- every text a customer sent back
    id          INTEGER PRIMARY KEY,
    number      TEXT NOT NULL,              -- E.164 when it could be normalised, else as received
    text        TEXT NOT NULL,
    transport   TEXT NOT NULL,
    keyword     TEXT NOT NULL DEFAULT '',   -- STOP/START/HELP word acted on, '' for a plain reply
    message_id  INTEGER,                    -- the last text sent to that number within the window
    call_key    TEXT,                       -- and the call it was about
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS replies_number ON replies (number, received_at);
CREATE TABLE IF NOT EXISTS webhook_deliveries (  -- the webhook outbox: one row per event and endpoint
    id              INTEGER PRIMARY KEY,
    event_id        TEXT NOT NULL,          -- the same in every attempt: receivers drop duplicates by it
    event_type      TEXT NOT NULL,
    endpoint        TEXT NOT NULL,          -- [[webhook]] name
    payload         TEXT NOT NULL,          -- the JSON body, byte for byte what is posted
    state           TEXT NOT NULL,          -- queued, sending, retrying, delivered, failed
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    last_error      TEXT NOT NULL DEFAULT '',
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    UNIQUE (event_id, endpoint)
);
CREATE INDEX IF NOT EXISTS webhook_due ON webhook_deliveries (endpoint, next_attempt_at)
    WHERE state IN ('queued', 'retrying');
CREATE TABLE IF NOT EXISTS handover (       -- calls in progress at a clean stop, per PBX
    pbx      TEXT PRIMARY KEY,
    state    TEXT NOT NULL,                 -- the tracker's open calls, as JSON
    saved_at REAL NOT NULL
);
"""


# Every table and index the schema creates: an outbox lacking one gets the schema script.
_SCHEMA_NAMES = frozenset(re.findall(r"CREATE (?:TABLE|INDEX) IF NOT EXISTS (\w+)", _SCHEMA))


def _names_in(conn: sqlite3.Connection) -> set[str]:
    return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")}


class Outbox:
    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        self.conn = conn
        self.path = path
        self._checkpointer: tuple[threading.Event, threading.Thread] | None = None
        # Set by the background checkpointer when the WAL should start over (see below).
        self.wal_restart_wanted = False
        # Set by the daemon when [[webhook]] endpoints listen to message events.
        self.events: EventSink | None = None

    # -- lifecycle ---------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path, *, synchronous: str = "normal", cache_mib: int = 32) -> Outbox:
        path = str(path)
        if path != ":memory:":
            _create_private(Path(path))
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
            conn.execute("PRAGMA busy_timeout=5000")
            # Keep the hot index pages in memory: the idempotency and destination indexes
            # take random keys, and a miss there is a disk read per insert. The cache fills
            # to its bound within ~30,000 calls and then stays there: [general] sqlite_cache_mib.
            conn.execute(f"PRAGMA cache_size=-{int(cache_mib) * 1024}")
            conn.execute("PRAGMA foreign_keys=ON")
            version = cls._schema_version(conn)
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{path}: outbox schema version {version} is newer than this aftercalld "
                    f"understands ({SCHEMA_VERSION}); upgrade aftercalld"
                )
            if version < SCHEMA_VERSION or not _SCHEMA_NAMES <= _names_in(conn):
                # Only a new or incomplete outbox is written to at open: one that is up to
                # date opens on a full disk, and the calls wait for space in the daemon.
                conn.executescript(
                    f"BEGIN IMMEDIATE; {_SCHEMA} INSERT OR REPLACE INTO meta (key, value) "
                    f"VALUES ('schema_version', '{SCHEMA_VERSION}'); COMMIT;"
                )
        except sqlite3.Error as exc:
            raise OutboxUnavailable(f"{path}: cannot open the outbox: {exc}") from None
        if path != ":memory:":
            for companion in (path + "-wal", path + "-shm"):
                _tighten(Path(companion))  # left 0644 by an older version
        return cls(conn, path)

    @classmethod
    def open_readonly(cls, path: str | Path) -> Outbox:
        """For commands that only look (status, report, why): never creates the outbox, its
        directory or its schema, and refuses every write."""
        path = str(path)
        if not Path(path).is_file():
            raise NoOutboxError(f"{path}: no outbox yet (the daemon creates it when it first starts)")
        try:
            conn = sqlite3.connect(f"{Path(path).absolute().as_uri()}?mode=ro", uri=True,
                                   isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=5000")
            version = cls._schema_version(conn)
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: cannot read the outbox: {exc}") from None
        if version > SCHEMA_VERSION:
            conn.close()
            raise StoreError(f"{path}: outbox schema version {version} is newer than this aftercalld "
                             f"understands ({SCHEMA_VERSION}); upgrade aftercalld")
        return cls(conn, path)

    @staticmethod
    def _schema_version(conn: sqlite3.Connection) -> int:
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.OperationalError:
            return 0
        return int(row[0]) if row else 0

    def checkpoint_in_background(self, interval: float = 1.0) -> None:
        """Move WAL checkpoints (and their fsync) off the event loop's thread: a checkpoint
        on the committing connection can stall a commit for milliseconds, which is the
        latency tail between a hangup and the text on the wire."""
        if self.path == ":memory:" or self._checkpointer is not None:
            return
        self.conn.execute("PRAGMA wal_autocheckpoint=0")
        # A WAL that grew under a burst is cut back to this size when it starts over.
        page_size = self.conn.execute("PRAGMA page_size").fetchone()[0]
        self.conn.execute(f"PRAGMA journal_size_limit={WAL_RESTART_FRAMES * page_size}")
        stop = threading.Event()

        def work() -> None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=2.0)
            try:
                while not stop.wait(interval):
                    try:
                        _, wal_frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                        if wal_frames > WAL_RESTART_FRAMES and not self.wal_restart_wanted:
                            _catch_up(conn, wal_frames)
                            self.wal_restart_wanted = True
                    except sqlite3.Error as exc:
                        log.debug("background checkpoint: %s", exc)
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            finally:
                conn.close()

        thread = threading.Thread(target=work, name="outbox-checkpoint", daemon=True)
        thread.start()
        self._checkpointer = (stop, thread)

    def finish_checkpoint(self) -> None:
        """Copy back the little the background checkpointer left, on the writer's own
        connection between two transactions: the WAL is then fully copied back when the
        next transaction begins, and SQLite starts it over from the top.

        Under sustained load the writer never begins a transaction at a moment when the
        background checkpointer has caught up, so without this the WAL never starts over
        and grows by gigabytes. Doing the last step here rather than with RESTART in the
        background thread costs one copy of a few hundred pages and two fsyncs; RESTART
        would hold this thread in SQLite's busy handler, which sleeps in steps of up to
        25 ms, for as long as it copies and waits for readers."""
        self.wal_restart_wanted = False
        try:
            self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            log.debug("checkpoint to restart the WAL: %s", exc)

    def close(self) -> None:
        if self._checkpointer is not None:
            stop, thread = self._checkpointer
            stop.set()
            thread.join(timeout=10)
            self._checkpointer = None
        self.conn.close()

    # -- calls in progress across a restart ---------------------------------------------

    def save_handover(self, pbx: str, state: str, now: float) -> None:
        """A PBX source's calls in progress at a clean stop, for the next start."""
        with _tx(self) as conn:
            conn.execute("INSERT OR REPLACE INTO handover (pbx, state, saved_at) VALUES (?, ?, ?)",
                         (pbx, state, now))

    def take_handover(self, pbx: str) -> tuple[str, float] | None:
        """What the last clean stop left for this PBX (state, saved at), and forget it: a
        crash after taking it must not hand the same calls over twice."""
        with _tx(self) as conn:
            row = conn.execute("SELECT state, saved_at FROM handover WHERE pbx = ?", (pbx,)).fetchone()
            conn.execute("DELETE FROM handover WHERE pbx = ?", (pbx,))
        return (row[0], row[1]) if row else None

    # -- calls -------------------------------------------------------------------------

    def record_call(self, record: CallRecord, rule: str | None, decision: str,
                    messages: Sequence[RenderedMessage], *, ttl_seconds: float,
                    now: float) -> list[str] | None:
        """Write the call and its messages in one transaction. Returns the keys of the
        messages that are now queued, or None when this call was already recorded (a
        replayed event, a restart): then nothing at all changes."""
        return self.record_calls([(record, rule, decision, messages)], ttl_seconds=ttl_seconds, now=now)[0]

    def record_calls(self, batch: Sequence[tuple[CallRecord, str | None, str, Sequence[RenderedMessage]]],
                     *, ttl_seconds: float, now: float) -> list[list[str] | None]:
        results: list[list[str] | None] = []
        call_rows = []
        rows: list[tuple] = []
        keys = [f"{record.pbx}/{record.call_id}" for record, *_ in batch]
        with _tx(self):
            # One lookup for the batch, then one executemany per table: a statement per
            # call cost more than the rules that decided it.
            seen = self._present("calls", "call_key", keys)
            for call_key, (record, rule, decision, messages) in zip(keys, batch, strict=True):
                if call_key in seen:  # a replayed event, or the same call twice in this batch
                    results.append(None)
                    continue
                seen.add(call_key)
                call_rows.append(
                    (call_key, record.pbx, record.call_id, record.status.value, record.direction.value,
                     record.customer_number, rule, decision, record.to_json(), now)
                )
                results.append([m.key for m in messages if not m.suppressed])
                rows.extend(message_row(call_key, m, ttl_seconds, now) for m in messages)
            self.conn.executemany(
                "INSERT INTO calls (call_key, pbx, call_id, status, direction, caller, rule, "
                "decision, record, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                call_rows,
            )
            self.conn.executemany(
                "INSERT OR IGNORE INTO messages (key, call_key, rule, recipient_kind, raw_number, "
                "destination, sender, text, encoding, segments, options, state, reason, "
                "next_attempt_at, expires_at, created_at, updated_at, final_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            wrote = self._queued_events([row[0] for row in rows], now) if rows else False
        if wrote:
            self._events_written()
        return results

    def queue_messages(self, batch: Sequence[tuple[str, RenderedMessage]], *, ttl_seconds: float,
                       now: float) -> list[tuple[int, bool]]:
        """Texts that no call rule produced (the HTTP API's, replies forwarded to an agent),
        each with the call key it belongs to ("" for none), in one transaction. They take
        the same path as a rule's texts from here: dispatcher, policy, transports.
        Returns (message id, newly queued) per entry: an idempotency key seen before gives
        the existing message's id and False, and changes nothing."""
        with _tx(self):
            out, new_keys = self._insert_adhoc(batch, ttl_seconds, now)
            wrote = self._queued_events(new_keys, now) if new_keys else False
        if wrote:
            self._events_written()
        return out

    def _insert_adhoc(self, batch: Sequence[tuple[str, RenderedMessage]], ttl_seconds: float,
                      now: float) -> tuple[list[tuple[int, bool]], list[str]]:
        out: list[tuple[int, bool]] = []
        new_keys: list[str] = []
        conn = self.conn
        for call_key, m in batch:
            row = conn.execute(
                "INSERT INTO messages (key, call_key, rule, recipient_kind, raw_number, "
                "destination, sender, text, encoding, segments, options, state, reason, "
                "next_attempt_at, expires_at, created_at, updated_at, final_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (key) DO NOTHING RETURNING id",
                message_row(call_key, m, ttl_seconds, now),
            ).fetchone()
            if row is not None:
                out.append((row[0], True))
                new_keys.append(m.key)
            else:
                (existing,) = conn.execute("SELECT id FROM messages WHERE key = ?", (m.key,)).fetchone()
                out.append((existing, False))
        return out, new_keys

    # -- webhook events ------------------------------------------------------------------

    def _queued_events(self, keys: Sequence[str], now: float) -> bool:
        """Inside a transaction: the webhook rows for messages just queued or suppressed."""
        events = self.events
        if events is None or not events.wanted & {MessageState.QUEUED, MessageState.SUPPRESSED}:
            return False
        transitions = []
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            for id_, call_key, rule, destination, state, reason in self.conn.execute(
                    "SELECT id, call_key, rule, destination, state, reason FROM messages "
                    f"WHERE key IN ({','.join('?' * len(chunk))})", chunk):
                transitions.append(Transition(id_, call_key, rule, destination or "", MessageState(state), reason))
        return self._message_events(transitions, now)

    def _message_events(self, transitions: Sequence[Transition], now: float) -> bool:
        """Inside a transaction: the webhook rows for these state changes. True when any."""
        events = self.events
        if events is None or not transitions or not events.wanted:
            return False
        rows = events.message_rows(transitions, now)
        if rows:
            self._insert_webhooks(rows, now)
        return bool(rows)

    def _events_written(self) -> None:
        if self.events is not None:
            self.events.written()

    def _insert_webhooks(self, rows: Iterable[WebhookRow], now: float) -> None:
        self.conn.executemany(
            "INSERT OR IGNORE INTO webhook_deliveries (event_id, event_type, endpoint, payload, state, "
            "next_attempt_at, created_at, updated_at) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?)",
            [(event_id, event_type, endpoint, payload, now, now, now)
             for event_id, event_type, endpoint, payload in rows])

    def queue_webhooks(self, rows: Sequence[WebhookRow], now: float) -> None:
        """Webhook rows for something that wrote nothing else (rare: most come with the
        change they report, in its transaction)."""
        if not rows:
            return
        with _tx(self):
            self._insert_webhooks(rows, now)
        self._events_written()

    def requeue_webhooks(self, now: float) -> int:
        """Deliveries a previous run was posting when it stopped: posted again (the
        receiver may have had them: at-least-once, the event id tells)."""
        with _tx(self):
            cur = self.conn.execute(
                "UPDATE webhook_deliveries SET state = 'retrying', next_attempt_at = ?, updated_at = ? "
                "WHERE state = 'sending'", (now, now))
        return cur.rowcount

    def claim_webhooks(self, free: dict[str, int], now: float) -> list[WebhookDelivery]:
        """Due deliveries, at most `free[endpoint]` per endpoint, marked as being sent."""
        claimed: list[WebhookDelivery] = []
        with _tx(self):
            for endpoint, limit in free.items():
                if limit <= 0:
                    continue
                rows = self.conn.execute(
                    "UPDATE webhook_deliveries SET state = 'sending', attempts = attempts + 1, updated_at = ? "
                    "WHERE id IN (SELECT id FROM webhook_deliveries WHERE endpoint = ? "
                    "AND state IN ('queued', 'retrying') AND next_attempt_at <= ? "
                    "ORDER BY next_attempt_at, id LIMIT ?) "
                    "RETURNING id, event_id, event_type, endpoint, payload, attempts, created_at",
                    (now, endpoint, now, limit)).fetchall()
                claimed.extend(WebhookDelivery(*row) for row in sorted(rows))
        return claimed

    def record_webhook_results(self, results: Sequence[WebhookResult], now: float) -> None:
        with _tx(self):
            self.conn.executemany(
                "UPDATE webhook_deliveries SET state = ?, last_error = ?, next_attempt_at = ?, updated_at = ? "
                "WHERE id = ?",
                [(r.state, r.error, r.next_attempt_at, now, r.delivery_id) for r in results])

    def next_webhook_due(self, endpoints: Iterable[str]) -> float | None:
        names = list(endpoints)
        if not names:
            return None
        return self.conn.execute(
            "SELECT MIN(next_attempt_at) FROM webhook_deliveries WHERE state IN ('queued', 'retrying') "
            f"AND endpoint IN ({','.join('?' * len(names))})", names).fetchone()[0]

    def webhook_deliveries(self, *, event_type: str | None = None, endpoint: str | None = None,
                           state: str | None = None) -> list[dict[str, Any]]:
        where, args = [], []
        for column, value in (("event_type", event_type), ("endpoint", endpoint), ("state", state)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        cur = self.conn.execute("SELECT * FROM webhook_deliveries" + (" WHERE " + " AND ".join(where) if where
                                                                      else "") + " ORDER BY id", args)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur]

    def webhook_counts(self) -> dict[str, dict[str, int]]:
        """Deliveries per endpoint and state, for `status`."""
        out: dict[str, dict[str, int]] = {}
        for endpoint, state, count in self.conn.execute(
                "SELECT endpoint, state, COUNT(*) FROM webhook_deliveries GROUP BY endpoint, state"):
            out.setdefault(endpoint, {})[state] = count
        return out

    def _present(self, table: str, column: str, values: Iterable[str]) -> set[str]:
        """Which of `values` the table has in `column` (its key): one query per 500, the
        most bound parameters old SQLite builds allow being 999."""
        values = list(set(values))
        found: set[str] = set()
        for i in range(0, len(values), 500):
            chunk = values[i:i + 500]
            found.update(v for (v,) in self.conn.execute(
                f"SELECT {column} FROM {table} WHERE {column} IN ({','.join('?' * len(chunk))})", chunk))
        return found

    # -- small settings kept with the data (e.g. how far a PBX's CDRs were read) ---------

    def meta_get(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def meta_set(self, key: str, value: str) -> None:
        with _tx(self):
            self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def backfilled_among(self, call_keys: Iterable[str]) -> set[str]:
        """Which of these calls were recovered from the PBX's CDRs (record source "cdr")."""
        keys = list(set(call_keys))
        found: set[str] = set()
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            found.update(k for (k,) in self.conn.execute(
                f"SELECT call_key FROM calls WHERE call_key IN ({','.join('?' * len(chunk))}) "
                "AND record LIKE '%\"source\":\"cdr\"%'", chunk))
        return found

    def callers_since(self, pbx: str, since: float, *, disorder: float = 3600.0) -> list[tuple[str, float]]:
        """(caller, created_at) of the calls of `pbx` recorded since `since`, newest first:
        how a CDR row without the call's id is told from one seen live. Calls are appended
        in time order, so this reads back from the newest and stops `disorder` seconds
        before `since` rather than scan the table (created_at has no index)."""
        out = []
        for pbx_of, caller, created in self.conn.execute(
                "SELECT pbx, caller, created_at FROM calls ORDER BY rowid DESC"):
            if created < since - disorder:
                break
            if pbx_of == pbx and created >= since:
                out.append((caller, created))
        return out

    # -- dispatching -------------------------------------------------------------------

    def requeue_interrupted(self, now: float) -> int:
        """Messages a previous process claimed but never recorded an outcome for. They may
        or may not have reached the SMSC; sending again is the lesser evil than losing them."""
        with _tx(self):
            cur = self.conn.execute(
                "UPDATE messages SET state = 'queued', next_attempt_at = ?, updated_at = ?, "
                "reason = 'requeued after restart' WHERE state = 'sending'",
                (now, now),
            )
        return cur.rowcount

    def claim_due(self, limit: int, now: float) -> list[OutboundMessage]:
        with _tx(self):
            rows = self.conn.execute(
                f"UPDATE messages SET state = 'sending', attempts = attempts + 1, updated_at = ? "
                f"WHERE id IN (SELECT id FROM messages WHERE state IN ('queued', 'retrying') "
                f"AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?) "
                f"RETURNING {MESSAGE_COLUMNS}",
                (now, now, limit),
            ).fetchall()
        rows.sort(key=lambda r: r[0])
        return [outbound_from_row(r) for r in rows]

    def opted_out_among(self, numbers: Iterable[str]) -> set[str]:
        """Which of `numbers` are on the opt-out list: one query for a whole batch."""
        return self._present("optout", "number", numbers)

    def next_due(self) -> float | None:
        row = self.conn.execute(
            "SELECT MIN(next_attempt_at) FROM messages WHERE state IN ('queued', 'retrying')"
        ).fetchone()
        return row[0]

    def expires_at(self, message_id: int) -> float:
        row = self.conn.execute("SELECT expires_at FROM messages WHERE id = ?", (message_id,)).fetchone()
        return row[0] if row else 0.0

    def record_outcomes(self, outcomes: Sequence[OutcomeRecord], now: float) -> list[Transition]:
        """All outcomes of a batch of submits in one transaction. Receipts that arrived
        before their submit's response was recorded (a real race) are applied here."""
        rows = outcome_rows(outcomes, now)
        transitions, new_keys = rows.transitions, rows.new_keys
        submitted, parts, retrying, final = rows.submitted, rows.parts, rows.retrying, rows.final
        with _tx(self):
            self.conn.executemany(
                "UPDATE messages SET state = 'submitted', reason = '', updated_at = ?, submitted_at = ?, "
                "next_attempt_at = NULL, transport = ? WHERE id = ?", submitted)
            self.conn.executemany(
                "INSERT OR REPLACE INTO parts (message_id, part, transport_id, match_key, updated_at) "
                "VALUES (?, ?, ?, ?, ?)", parts)
            self.conn.executemany(
                "UPDATE messages SET state = 'retrying', reason = ?, updated_at = ?, next_attempt_at = ?, "
                "transport = ? WHERE id = ?", retrying)
            self.conn.executemany(
                "UPDATE messages SET state = ?, reason = ?, updated_at = ?, final_at = ?, "
                "next_attempt_at = NULL, transport = ? WHERE id = ?", final)
            if new_keys:
                transitions.extend(self._apply_orphans(new_keys, now))
            wrote = self._message_events(transitions, now)
        if wrote:
            self._events_written()
        return transitions

    def suppress(self, message: OutboundMessage, reason: str, now: float) -> Transition:
        transition = Transition(message.id, message.call_id, message.rule, message.destination,
                                MessageState.SUPPRESSED, reason)
        with _tx(self):
            self.conn.execute(
                "UPDATE messages SET state = 'suppressed', reason = ?, updated_at = ?, final_at = ?, "
                "next_attempt_at = NULL WHERE id = ?",
                (reason, now, now, message.id),
            )
            wrote = self._message_events([transition], now)
        if wrote:
            self._events_written()
        return transition

    def defer(self, message: OutboundMessage, until: float, reason: str, now: float) -> None:
        """Put a claimed message back without counting an attempt (quiet hours, rate)."""
        with _tx(self):
            self.conn.execute(
                "UPDATE messages SET state = 'queued', reason = ?, updated_at = ?, next_attempt_at = ?, "
                "attempts = MAX(attempts - 1, 0) WHERE id = ?",
                (reason, now, until, message.id),
            )

    # -- delivery reports --------------------------------------------------------------

    def apply_reports(self, reports: Sequence[DeliveryReport], now: float) -> list[Transition]:
        """Match receipts to parts by their exact (normalised) id, settle messages whose
        parts are all final, and keep the rest as orphans: a receipt can arrive before its
        submit response has been recorded, and then a looser match would pick the wrong
        message (hex "22" is decimal 34). `resolve_orphans` tries the looser match later."""
        transitions: list[Transition] = []
        with _tx(self):
            for report in reports:
                try:
                    with _one_row(self.conn):
                        transition = self._apply_report(report, now)
                except Exception as exc:
                    if not _row_fault(exc):
                        raise
                    self._keep_unmatchable_report(report, exc, now)
                    continue
                if transition:
                    transitions.append(transition)
            wrote = self._message_events(transitions, now)
        if wrote:
            self._events_written()
        return transitions

    def _apply_report(self, report: DeliveryReport, now: float) -> Transition | None:
        target = self._match_part(report.message_id, loose=False, transport=report.transport)
        if target is None:
            if report.state in REPORT_TO_STATE:
                self.conn.execute(
                    "INSERT INTO orphan_reports (transport, transport_id, match_key, state, error, raw, "
                    "received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (report.transport, report.message_id, msgid.match_key(report.message_id),
                     report.state.value, report.error, report.raw, now),
                )
            return None
        return self._apply_to_part(target, report.state, report.error, now)

    def _keep_unmatchable_report(self, report: DeliveryReport, exc: Exception, now: float) -> None:
        """A receipt that breaks matching is kept for support as unmatchable (matched = -1),
        with its values made storable, instead of failing the batch it came in."""
        reason = _fault_reason(exc)
        log.warning("delivery report for message id %s cannot be matched (%s); kept for support",
                    bounded(str(report.message_id)), reason)
        self.conn.execute(
            "INSERT INTO orphan_reports (transport, transport_id, match_key, state, error, raw, received_at, "
            "matched) VALUES (?, ?, '', ?, ?, ?, ?, -1)",
            (bounded(str(report.transport)), bounded(str(report.message_id)), str(getattr(report.state, "value", "")),
             bounded(f"unmatchable: {reason}"), bounded(str(report.raw), 4096), now),
        )

    def _match_part(self, transport_id: str, *, loose: bool, transport: str = "") -> tuple[int, int] | None:
        # Among parts with the same key, one sent by the receipt's own transport (two SMSCs
        # behind routes may both number from 1), then the newest (a modem's 8-bit reference
        # wraps). Any transport's part matches: one renamed in the config still settles.
        keys = msgid.candidate_keys(transport_id) if loose else [msgid.match_key(transport_id)]
        for key in keys:
            row = self.conn.execute(
                "SELECT p.message_id, p.part FROM parts p JOIN messages m ON m.id = p.message_id "
                "WHERE p.match_key = ? ORDER BY m.transport IS ? DESC, p.message_id DESC LIMIT 1",
                (key, transport),
            ).fetchone()
            if row:
                return row[0], row[1]
        return None

    def _apply_to_part(self, target: tuple[int, int], state: ReportState, error: str,
                       now: float) -> Transition | None:
        message_id, part = target
        final = REPORT_TO_STATE.get(state)
        self.conn.execute(
            "UPDATE parts SET state = ?, error = ?, updated_at = ? WHERE message_id = ? AND part = ?",
            (state.value, error, now, message_id, part),
        )
        if final is None:
            return None
        row = self.conn.execute(
            "SELECT state, call_key, rule, destination, submitted_at FROM messages WHERE id = ?", (message_id,)
        ).fetchone()
        if row is None or row[0] != MessageState.SUBMITTED.value:
            return None  # already settled: a duplicate receipt; the part is recorded
        parts = self.conn.execute("SELECT state, error FROM parts WHERE message_id = ?", (message_id,)).fetchall()
        outcome = settle(parts)
        if outcome is None:
            return None  # more parts to hear about
        settled, reason = outcome
        self.conn.execute(
            "UPDATE messages SET state = ?, reason = ?, updated_at = ?, final_at = ? WHERE id = ?",
            (settled.value, reason, now, now, message_id),
        )
        return Transition(message_id, row[1], row[2], row[3] or "", settled, reason, submitted_at=row[4])

    def _apply_orphans(self, match_keys: Iterable[str], now: float) -> list[Transition]:
        """Receipts that arrived before the parts with these match keys were recorded.
        Given-up orphans (matched = -1) too: an exact match is right whenever it comes."""
        transitions: list[Transition] = []
        # Receipts nearly always follow their submit: most batches need no lookup at all.
        if self.conn.execute("SELECT 1 FROM orphan_reports WHERE matched <= 0 LIMIT 1").fetchone() is None:
            return transitions
        keys = sorted(set(match_keys))
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            orphans = self.conn.execute(
                f"SELECT id, transport_id, state, error, transport FROM orphan_reports WHERE matched <= 0 "
                f"AND match_key IN ({','.join('?' * len(chunk))}) ORDER BY id", chunk,
            ).fetchall()
            for orphan_id, transport_id, state, error, transport in orphans:
                try:
                    with _one_row(self.conn):
                        target = self._match_part(transport_id, loose=False, transport=transport)
                        if target is None:
                            continue
                        self.conn.execute("UPDATE orphan_reports SET matched = 1 WHERE id = ?", (orphan_id,))
                        transition = self._apply_to_part(target, ReportState(state), error, now)
                except Exception as exc:
                    if not _row_fault(exc):
                        raise
                    self._give_up_orphan(orphan_id, transport_id, exc)
                    continue
                if transition:
                    transitions.append(transition)
        return transitions

    def resolve_orphans(self, received_before: float, now: float) -> list[Transition]:
        """Receipts still unmatched after a grace period: their submit was recorded long ago
        if it exists, so now an id in the other base (or with lost leading zeros) is taken.
        What still matches nothing is kept (matched = -1) for support, not retried."""
        transitions: list[Transition] = []
        with _tx(self):
            orphans = self.conn.execute(
                "SELECT id, transport_id, state, error, transport FROM orphan_reports "
                "WHERE matched = 0 AND received_at <= ?", (received_before,),
            ).fetchall()
            for orphan_id, transport_id, state, error, transport in orphans:
                # One receipt that breaks matching must not hold back the batch, nor every
                # later one: this row survives a restart, so a retry would stall for good.
                try:
                    with _one_row(self.conn):
                        target = self._match_part(transport_id, loose=True, transport=transport)
                        self.conn.execute("UPDATE orphan_reports SET matched = ? WHERE id = ?",
                                          (1 if target else -1, orphan_id))
                        if target is None:
                            log.info("delivery report for unknown message id %s (%s); kept for support",
                                     transport_id, state)
                            continue
                        transition = self._apply_to_part(target, ReportState(state), error, now)
                except Exception as exc:
                    if not _row_fault(exc):
                        raise
                    self._give_up_orphan(orphan_id, transport_id, exc)
                    continue
                if transition:
                    transitions.append(transition)
            wrote = self._message_events(transitions, now)
        if wrote:
            self._events_written()
        return transitions

    def _give_up_orphan(self, orphan_id: int, transport_id: str, exc: Exception) -> None:
        reason = _fault_reason(exc)
        log.warning("delivery report for message id %s cannot be matched (%s); kept for support",
                    transport_id, reason)
        self.conn.execute("UPDATE orphan_reports SET matched = -1, error = ? WHERE id = ?",
                          (bounded(f"unmatchable: {reason}"), orphan_id))

    def has_pending_orphans(self, received_before: float) -> bool:
        return self.conn.execute(
            "SELECT 1 FROM orphan_reports WHERE matched = 0 AND received_at <= ? LIMIT 1", (received_before,)
        ).fetchone() is not None

    # -- opt-out -----------------------------------------------------------------------

    def optout_add(self, numbers: Iterable[str], source: str, now: float) -> int:
        with _tx(self):
            cur = self.conn.executemany(
                "INSERT OR IGNORE INTO optout (number, source, created_at) VALUES (?, ?, ?)",
                [(n, source, now) for n in numbers],
            )
        return cur.rowcount

    def optout_remove(self, numbers: Iterable[str]) -> list[str]:
        """Returns the numbers that were listed (and are no more)."""
        return self._remove("optout", "number", numbers)

    def _remove(self, table: str, column: str, entries: Iterable[str]) -> list[str]:
        removed = []
        with _tx(self):
            for entry in dict.fromkeys(entries):
                if self.conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (entry,)).rowcount:
                    removed.append(entry)
        return removed

    def is_opted_out(self, number: str) -> bool:
        return self.conn.execute("SELECT 1 FROM optout WHERE number = ?", (number,)).fetchone() is not None

    def optout_list(self) -> list[tuple[str, str, float]]:
        return self.conn.execute("SELECT number, source, created_at FROM optout ORDER BY number").fetchall()

    # -- policy ------------------------------------------------------------------------

    def submitted_counts_since(self, since: float) -> tuple[int, dict[str, int]]:
        """Messages handed to a transport since `since` (quotas), in total and per rule."""
        rows = self.conn.execute(
            "SELECT rule, COUNT(*) FROM messages WHERE submitted_at >= ? GROUP BY rule", (since,)
        ).fetchall()
        by_rule = dict(rows)
        return sum(by_rule.values()), by_rule

    def last_submitted_to(self, destinations: Iterable[str], since: float) -> dict[str, float]:
        out: dict[str, float] = {}
        for number in set(destinations):
            row = self.conn.execute(
                "SELECT MAX(submitted_at) FROM messages WHERE destination = ? AND submitted_at >= ?",
                (number, since),
            ).fetchone()
            if row[0] is not None:
                out[number] = row[0]
        return out

    def dnd_add(self, entries: Iterable[str], source: str, now: float) -> int:
        with _tx(self):
            cur = self.conn.executemany(
                "INSERT OR IGNORE INTO dnd (entry, source, created_at) VALUES (?, ?, ?)",
                [(e, source, now) for e in entries],
            )
        return cur.rowcount

    def dnd_remove(self, entries: Iterable[str]) -> list[str]:
        """Returns the entries that were listed (and are no more)."""
        return self._remove("dnd", "entry", entries)

    def dnd_list(self) -> list[tuple[str, str, float]]:
        return self.conn.execute("SELECT entry, source, created_at FROM dnd ORDER BY entry").fetchall()

    def dnd_matches(self, destinations: Iterable[str]) -> set[str]:
        numbers = set(destinations)
        if not numbers or self.conn.execute("SELECT 1 FROM dnd LIMIT 1").fetchone() is None:
            return set()
        prefixes = [e[:-1] for (e,) in self.conn.execute("SELECT entry FROM dnd WHERE entry LIKE '%*'")]
        hits = {n for n in numbers if n.startswith(tuple(prefixes))} if prefixes else set()
        return hits | self._present("dnd", "entry", numbers - hits)

    # -- replies -----------------------------------------------------------------------

    def record_reply(self, number: str, text: str, transport: str, keyword: str, now: float,
                     window_seconds: float, *, optout: str = "",
                     effects: Callable[[int, Answered | None], ReplyEffects] | None = None) -> tuple[int, str | None]:
        """Store a reply with the message it most likely answers: the last text handed to
        a transport for that number within the window. Returns (reply id, its call key).

        In the same transaction: `optout` ("add" with the source, or "remove") changes the
        opt-out list, and `effects(reply id, answered)` gives the texts and webhook rows the
        reply causes, so that a crash keeps all of them or none."""
        answered_row = self.conn.execute(
            "SELECT m.id, m.call_key, m.rule, m.sender, c.record FROM messages m "
            "LEFT JOIN calls c ON c.call_key = m.call_key WHERE m.destination = ? AND m.submitted_at >= ? "
            "ORDER BY m.submitted_at DESC LIMIT 1", (number, now - window_seconds)).fetchone()
        answered = Answered(*answered_row) if answered_row else None
        message_id, call_key = (answered.message_id, answered.call_key) if answered else (None, None)
        wrote = False
        with _tx(self):
            cur = self.conn.execute(
                "INSERT INTO replies (number, text, transport, keyword, message_id, call_key, received_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", (number, text, transport, keyword, message_id, call_key, now))
            reply_id = int(cur.lastrowid or 0)
            if optout == "remove":
                self.conn.execute("DELETE FROM optout WHERE number = ?", (number,))
            elif optout:
                self.conn.execute("INSERT OR IGNORE INTO optout (number, source, created_at) VALUES (?, ?, ?)",
                                  (number, optout, now))
            if effects is not None:
                caused = effects(reply_id, answered)
                if caused.messages:
                    _, new_keys = self._insert_adhoc(caused.messages, caused.ttl_seconds, now)
                    wrote = self._queued_events(new_keys, now) if new_keys else False
                if caused.webhooks:
                    self._insert_webhooks(caused.webhooks, now)
                    wrote = True
        if wrote:
            self._events_written()
        return reply_id, call_key

    def call_record(self, call_key: str) -> str | None:
        """The CallRecord JSON of one call, by its key (the primary key: one lookup)."""
        row = self.conn.execute("SELECT record FROM calls WHERE call_key = ?", (call_key,)).fetchone()
        return row[0] if row else None

    def last_created(self, destination: str, rule: str, since: float) -> float | None:
        """When a text of `rule` was last queued for `destination` (the HELP answer's cooldown)."""
        return self.conn.execute(
            "SELECT MAX(created_at) FROM messages WHERE destination = ? AND rule = ? AND created_at >= ?",
            (destination, rule, since)).fetchone()[0]

    def replies(self, *, numbers: Iterable[str] = (), since: float | None = None,
                until: float | None = None) -> list[dict[str, Any]]:
        """Replies, oldest first: from these numbers (any form stored), or in a time span."""
        sql = "SELECT * FROM replies WHERE 1=1"
        args: list[str | float] = []
        wanted = list(numbers)
        if wanted:
            sql += f" AND number IN ({', '.join('?' * len(wanted))})"
            args += wanted
        if since is not None:
            sql += " AND received_at >= ?"
            args.append(since)
        if until is not None:
            sql += " AND received_at < ?"
            args.append(until)
        cur = self.conn.execute(sql + " ORDER BY received_at, id", args)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur]

    # -- retention ---------------------------------------------------------------------

    def prune(self, before: float, *, after_rowid: int = 0, limit: int = 500) -> tuple[Pruned, int | None]:
        """Delete up to `limit` calls recorded before `before`, with their messages, parts
        and receipts, in one short transaction, so that a daemon writing at the same time
        waits milliseconds at most. A call with a message still queued, retrying or being
        sent is kept. Returns what went and the `after_rowid` to go on from, or None when
        nothing older is left."""
        pruned = Pruned()
        with _tx(self):
            if after_rowid == 0:
                pruned.receipts = self.conn.execute(
                    "DELETE FROM orphan_reports WHERE received_at < ?", (before,)).rowcount
                self.conn.execute("DELETE FROM replies WHERE received_at < ?", (before,))
                self.conn.execute("DELETE FROM webhook_deliveries WHERE created_at < ? "
                                  "AND state IN ('delivered', 'failed')", (before,))
                pruned.messages += self._prune_callless(before)
            # Calls are appended in time order, so rowid order is time order: stop at the
            # first one that is too new rather than scan the rest of the table.
            rows = self.conn.execute(
                "SELECT rowid, call_key, created_at FROM calls WHERE rowid > ? ORDER BY rowid LIMIT ?",
                (after_rowid, limit),
            ).fetchall()
            for rowid, call_key, created_at in rows:
                if created_at >= before:
                    return pruned, None
                after_rowid = rowid
                # Message keys start with the call key: the unique index on key finds them.
                span = (call_key + "/", call_key + "0")
                if self.conn.execute(
                    "SELECT 1 FROM messages WHERE key >= ? AND key < ? "
                    "AND state IN ('queued', 'retrying', 'sending') LIMIT 1", span,
                ).fetchone():
                    pruned.kept += 1
                    continue
                self.conn.execute(
                    "DELETE FROM parts WHERE message_id IN (SELECT id FROM messages WHERE key >= ? AND key < ?)",
                    span)
                pruned.messages += self.conn.execute(
                    "DELETE FROM messages WHERE key >= ? AND key < ?", span).rowcount
                self.conn.execute("DELETE FROM calls WHERE rowid = ?", (rowid,))
                pruned.calls += 1
        return pruned, (after_rowid if len(rows) == limit else None)

    def _prune_callless(self, before: float) -> int:
        """Texts no call owns (the HTTP API's, replies forwarded or answered) go by their own
        age: the calls table, which the rest of pruning walks, does not lead to them. Their
        keys start with "api/" or "reply/", so the unique index on key finds them; at most
        PRUNE_CALLLESS_BATCH per pass keeps the transaction short, the next pass goes on."""
        removed = 0
        for prefix in ("api/", "reply/"):
            span = (prefix, prefix[:-1] + "0", before, PRUNE_CALLLESS_BATCH)
            stale = ("SELECT id FROM messages WHERE key >= ? AND key < ? AND created_at < ? "
                     "AND state NOT IN ('queued', 'retrying', 'sending') LIMIT ?")
            self.conn.execute(f"DELETE FROM parts WHERE message_id IN ({stale})", span)
            removed += self.conn.execute(f"DELETE FROM messages WHERE id IN ({stale})", span).rowcount
        return removed

    # -- reading, for reports and support ----------------------------------------------

    def counts_by_state(self) -> dict[str, int]:
        return dict(self.conn.execute("SELECT state, COUNT(*) FROM messages GROUP BY state").fetchall())

    def last_call_time(self) -> float | None:
        return self.conn.execute("SELECT MAX(created_at) FROM calls").fetchone()[0]

    def queue_depth(self) -> int:
        row = self.conn.execute(
            "SELECT COUNT(*) FROM messages WHERE state IN ('queued', 'retrying', 'sending')"
        ).fetchone()
        return row[0]

    def messages(self, *, call_key: str | None = None, destination: str | None = None,
                 since: float | None = None, until: float | None = None, rule: str | None = None,
                 state: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        where: list[str] = []
        args: list[str | float] = []
        if call_key is not None:
            # Message keys start with the call key: the unique index on key serves this.
            where.append("m.key >= ? AND m.key < ?")
            args += [call_key + "/", call_key + "0"]
        for column, op, value in (("destination", "=", destination),
                                  ("created_at", ">=", since), ("created_at", "<", until),
                                  ("rule", "=", rule), ("state", "=", state)):
            if value is not None:
                where.append(f"m.{column} {op} ?")
                args.append(value)
        sql = (
            "SELECT m.*, (SELECT group_concat(p.transport_id, ' ') FROM parts p WHERE p.message_id = m.id) "
            "AS transport_ids FROM messages m"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY m.id"
            + (f" LIMIT {int(limit)}" if limit else "")
        )
        cur = self.conn.execute(sql, args)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur]

    def calls(self, *, call_key: str | None = None, callers: Sequence[str] = (), texted: str | None = None,
              limit: int = 50) -> list[dict[str, Any]]:
        """Newest first. `callers`: caller ids as the PBX may have written them; `texted`:
        calls with a message to this E.164 number (either matches)."""
        where, args = [], []
        if call_key is not None:
            where.append("(call_key = ? OR call_id = ?)")
            args += [call_key, call_key]
        who = []
        if callers:
            who.append(f"caller IN ({','.join('?' * len(callers))})")
            args += list(callers)
        if texted:
            # The destination index finds them; the calls table itself is scanned once.
            who.append("call_key IN (SELECT call_key FROM messages WHERE destination = ?)")
            args.append(texted)
        if who:
            where.append("(" + " OR ".join(who) + ")")
        sql = ("SELECT * FROM calls" + (" WHERE " + " AND ".join(where) if where else "")
               + f" ORDER BY created_at DESC LIMIT {int(limit)}")
        cur = self.conn.execute(sql, args)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur]

    def parts(self, message_ids: Iterable[int]) -> dict[int, list[dict[str, Any]]]:
        """Each message's parts in order: transport id, the receipt's state and error, and
        when the part last changed (its submit, then its receipt), for `why`."""
        ids = sorted(set(message_ids))
        found: dict[int, list[dict[str, Any]]] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            cur = self.conn.execute(
                "SELECT message_id, part, transport_id, state, error, updated_at FROM parts "
                f"WHERE message_id IN ({','.join('?' * len(chunk))}) ORDER BY message_id, part", chunk)
            names = [d[0] for d in cur.description]
            for row in cur:
                part = dict(zip(names, row, strict=True))
                found.setdefault(part["message_id"], []).append(part)
        return found

    def messages_by_id(self, message_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """Messages as `messages()` returns them, by id (the HTTP API's GET /v1/messages/{id})."""
        ids = sorted(set(message_ids))
        found: dict[int, dict[str, Any]] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            cur = self.conn.execute(
                "SELECT m.*, (SELECT group_concat(p.transport_id, ' ') FROM parts p WHERE p.message_id = m.id) "
                f"AS transport_ids FROM messages m WHERE m.id IN ({','.join('?' * len(chunk))})", chunk)
            names = [d[0] for d in cur.description]
            for row in cur:
                message = dict(zip(names, row, strict=True))
                found[message["id"]] = message
        return found

    def orphan_reports(self) -> list[dict[str, Any]]:
        cur = self.conn.execute("SELECT * FROM orphan_reports WHERE matched <= 0 ORDER BY id")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur]


# The outbox holds phone numbers and texts: owner and group only, whatever the umask (the
# unit sets UMask=0027; a manual run or another init may not). SQLite gives -wal and -shm
# the database file's mode, so creating that one right covers all three.
_FILE_MODE, _DIR_MODE = 0o640, 0o750


def _create_private(path: Path) -> None:
    if not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(_DIR_MODE)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, _FILE_MODE)
    except FileExistsError:
        _tighten(path)
        return
    except OSError:
        return  # sqlite3.connect reports it with the path and the reason
    try:
        os.fchmod(fd, _FILE_MODE)  # exactly 0640: the umask neither widens nor narrows it
    finally:
        os.close(fd)


def _tighten(path: Path) -> None:
    """Drop group write and every "other" bit from an existing file of ours."""
    try:
        mode = path.stat().st_mode & 0o777
        if mode & 0o027:
            path.chmod(mode & ~0o027)
    except OSError:
        pass  # absent, or not ours to change: nothing we can do here


def _catch_up(conn: sqlite3.Connection, wal_frames: int) -> None:
    """Passive passes until one copies little more than arrived while it ran."""
    for _ in range(5):
        _, now_frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        arrived, wal_frames = now_frames - wal_frames, now_frames
        if arrived < 256:
            return


class _one_row:
    """A savepoint around one row's writes inside a batch transaction: if the row fails,
    its own writes are undone and the batch goes on."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("SAVEPOINT one_row")

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.conn.execute("ROLLBACK TO one_row")
        self.conn.execute("RELEASE one_row")


def _row_fault(exc: Exception) -> bool:
    """True when `exc` is about the row's data (a value matching cannot read) rather than
    the database itself (locked, full, I/O): only the latter is worth retrying the batch."""
    if isinstance(exc, (sqlite3.OperationalError, sqlite3.InternalError)):
        return False
    return type(exc) is not sqlite3.DatabaseError  # "database disk image is malformed"


def _fault_reason(exc: Exception) -> str:
    return bounded(f"{type(exc).__name__}: {exc}", 200)


class _tx:
    """BEGIN IMMEDIATE … COMMIT, or ROLLBACK on error (autocommit connection)."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.conn = outbox.conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.conn.execute("ROLLBACK")
            return
        self.conn.execute("COMMIT")
        if self.outbox.wal_restart_wanted:
            self.outbox.finish_checkpoint()

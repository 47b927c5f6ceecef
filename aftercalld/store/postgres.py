"""The outbox on PostgreSQL, shared by any number of aftercalld instances.

Every method is a coroutine: a round trip to the server, even on loopback, must never hold
the event loop (the SQLite outbox is synchronous because a local transaction is cheaper
than a hop to a thread). The methods mirror `store.sqlite.Outbox`, with what sharing needs:

- every instance sees every hangup; the unique call key and message key let exactly one of
  them record the call and queue its texts (``ON CONFLICT DO NOTHING``);
- sending is claimed with a lease (``FOR UPDATE SKIP LOCKED``, ``claimed_by``,
  ``lease_until``): a message claimed by an instance that died is claimed again by another
  once its lease has run out, so it is sent at least once;
- receipts, replies, opt-outs and DND entries are rows like any other, so a receipt that
  arrives on one instance's bind settles a message another instance sent;
- each instance writes a heartbeat row (`heartbeat`), which `status` lists.

Times are Unix seconds (double precision), as in SQLite, and always passed in: the clock
is the caller's (aftercalld/clock.py), never the server's.
"""
from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from .. import msgid
from ..model import CallRecord, DeliveryReport, MessageState, OutboundMessage, ReportState
from ..rules.render import RenderedMessage
from ..textsafety import bounded
from .types import (
    MESSAGE_COLUMNS,
    REPORT_TO_STATE,
    Answered,
    EventSink,
    OutboxUnavailable,
    OutcomeRecord,
    PolicyFacts,
    Pruned,
    ReplyEffects,
    SendCounts,
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

try:
    import psycopg
    from psycopg.rows import dict_row
except ImportError:  # an optional extra: say how to get it, not a traceback
    raise StoreError("the PostgreSQL outbox needs psycopg: pip install 'aftercalld[postgresql]'") from None

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: messages.allowed_at and daily_counts (the shared cooldown and quotas)

# Taken while the schema is created or upgraded, so that instances starting together do
# not race each other's DDL. Any constant works; this one spells "acd".
_SCHEMA_LOCK = 0x616364

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS calls (
    call_key   TEXT PRIMARY KEY,
    seq        BIGSERIAL,                 -- insertion order, as SQLite's rowid
    pbx        TEXT NOT NULL,
    call_id    TEXT NOT NULL,
    status     TEXT NOT NULL,
    direction  TEXT NOT NULL,
    caller     TEXT NOT NULL,
    rule       TEXT,
    decision   TEXT NOT NULL,
    record     TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    instance   TEXT NOT NULL DEFAULT ''   -- the instance that recorded it
);
CREATE INDEX IF NOT EXISTS calls_seq ON calls (seq);
CREATE INDEX IF NOT EXISTS calls_caller ON calls (caller);
CREATE TABLE IF NOT EXISTS messages (
    id              BIGSERIAL PRIMARY KEY,
    key             TEXT NOT NULL UNIQUE,
    call_key        TEXT NOT NULL,
    rule            TEXT NOT NULL,
    recipient_kind  TEXT NOT NULL,
    raw_number      TEXT NOT NULL,
    destination     TEXT,
    sender          TEXT NOT NULL,
    text            TEXT NOT NULL,
    encoding        TEXT NOT NULL,
    segments        INTEGER NOT NULL,
    options         TEXT NOT NULL,
    state           TEXT NOT NULL,
    reason          TEXT NOT NULL DEFAULT '',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION,
    expires_at      DOUBLE PRECISION NOT NULL,
    created_at      DOUBLE PRECISION NOT NULL,
    updated_at      DOUBLE PRECISION NOT NULL,
    submitted_at    DOUBLE PRECISION,
    final_at        DOUBLE PRECISION,
    transport       TEXT,
    claimed_by      TEXT,                 -- the instance sending it, or that last sent it
    lease_until     DOUBLE PRECISION,     -- past this, another instance may claim it
    allowed_at      DOUBLE PRECISION      -- when the cooldown and quotas let it go out
);
ALTER TABLE messages ADD COLUMN IF NOT EXISTS allowed_at DOUBLE PRECISION;  -- version 1 had none
CREATE INDEX IF NOT EXISTS messages_due ON messages (next_attempt_at) WHERE state IN ('queued', 'retrying');
CREATE INDEX IF NOT EXISTS messages_leased ON messages (lease_until) WHERE state = 'sending';
CREATE INDEX IF NOT EXISTS messages_destination ON messages (destination);
CREATE INDEX IF NOT EXISTS messages_call_key ON messages (call_key);
CREATE INDEX IF NOT EXISTS messages_submitted ON messages (submitted_at);
CREATE TABLE IF NOT EXISTS parts (
    message_id   BIGINT NOT NULL REFERENCES messages (id),
    part         INTEGER NOT NULL,
    transport_id TEXT NOT NULL,
    match_key    TEXT NOT NULL,
    state        TEXT NOT NULL DEFAULT 'submitted',
    error        TEXT NOT NULL DEFAULT '',
    updated_at   DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (message_id, part)
);
CREATE INDEX IF NOT EXISTS parts_match ON parts (match_key);
CREATE TABLE IF NOT EXISTS orphan_reports (
    id           BIGSERIAL PRIMARY KEY,
    transport    TEXT NOT NULL,
    transport_id TEXT NOT NULL,
    match_key    TEXT NOT NULL,
    state        TEXT NOT NULL,
    error        TEXT NOT NULL,
    raw          TEXT NOT NULL,
    received_at  DOUBLE PRECISION NOT NULL,
    matched      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS orphan_reports_key ON orphan_reports (match_key) WHERE matched <= 0;
CREATE INDEX IF NOT EXISTS orphan_reports_waiting ON orphan_reports (received_at) WHERE matched = 0;
CREATE TABLE IF NOT EXISTS dnd (entry TEXT PRIMARY KEY, source TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS optout (number TEXT PRIMARY KEY, source TEXT NOT NULL,
                                   created_at DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS replies (
    id          BIGSERIAL PRIMARY KEY,
    number      TEXT NOT NULL,
    text        TEXT NOT NULL,
    transport   TEXT NOT NULL,
    keyword     TEXT NOT NULL DEFAULT '',
    message_id  BIGINT,
    call_key    TEXT,
    received_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS replies_number ON replies (number, received_at);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id              BIGSERIAL PRIMARY KEY,
    event_id        TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    endpoint        TEXT NOT NULL,
    payload         TEXT NOT NULL,
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION,
    last_error      TEXT NOT NULL DEFAULT '',
    created_at      DOUBLE PRECISION NOT NULL,
    updated_at      DOUBLE PRECISION NOT NULL,
    claimed_by      TEXT,
    lease_until     DOUBLE PRECISION,
    UNIQUE (event_id, endpoint)
);
CREATE INDEX IF NOT EXISTS webhook_due ON webhook_deliveries (endpoint, next_attempt_at)
    WHERE state IN ('queued', 'retrying');
CREATE TABLE IF NOT EXISTS handover (pbx TEXT PRIMARY KEY, state TEXT NOT NULL, saved_at DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS daily_counts (   -- texts allowed per day and rule, for the quotas
    day     TEXT NOT NULL,                    -- in the policy's time zone; rule '' marks a day counted
    rule    TEXT NOT NULL,
    allowed BIGINT NOT NULL,
    PRIMARY KEY (day, rule)
);
-- Bumped by every policy decision that allows texts (PgOutbox.allow_sends).
INSERT INTO meta (key, value) VALUES ('policy_version', '0') ON CONFLICT (key) DO NOTHING;
CREATE TABLE IF NOT EXISTS instances (
    instance     TEXT PRIMARY KEY,
    started_at   DOUBLE PRECISION NOT NULL,
    heartbeat_at DOUBLE PRECISION NOT NULL,
    info         TEXT NOT NULL DEFAULT '{}'  -- binds, PBX links, queue: what `status` shows
);
"""


def _one_at_a_time(cls: type[PgOutbox]) -> type[PgOutbox]:
    """Every public coroutine of the class holds the instance's lock while it runs.

    psycopg runs one statement at a time on a connection, but a transaction is several:
    without this, a coroutine's statement could land inside another's transaction (and
    commit or roll back with it)."""
    def locked(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(method)
        async def run(self: PgOutbox, *args: Any, **kwargs: Any) -> Any:
            async with self.lock:
                if self.conn.broken or self.conn.closed:
                    await self._reconnect()
                try:
                    return await method(self, *args, **kwargs)
                except psycopg.OperationalError as exc:
                    # The server went away (restart, failover, network): the caller keeps
                    # what it wanted written and tries again; the next call reconnects.
                    raise OutboxUnavailable(f"{self.path}: {_reason(exc)}") from None
        return run

    for name, member in list(vars(cls).items()):
        if not name.startswith("_") and name != "close" and inspect.iscoroutinefunction(member):
            setattr(cls, name, locked(member))
    return cls


@_one_at_a_time
class PgOutbox:
    """One instance's view of the shared outbox: one connection, in autocommit mode, with
    explicit transactions, used by one coroutine at a time."""

    def __init__(self, conn: psycopg.AsyncConnection, dsn_shown: str, instance: str, dsn: str = "",
                 connect_timeout: float = 10.0) -> None:
        self.conn = conn
        self._dsn = dsn  # holds the password when the URL does: never logged, not in repr
        self._connect_timeout = connect_timeout
        self.lock = asyncio.Lock()
        self.path = dsn_shown  # for messages: the DSN without its password
        self.instance = instance
        # Set by the daemon when [[webhook]] endpoints listen to message events.
        self.events: EventSink | None = None
        self._counted_day = ""  # the day whose daily_counts this instance has seen started

    # -- lifecycle ---------------------------------------------------------------------

    @classmethod
    async def open(cls, dsn: str, *, instance: str, connect_timeout: float = 10.0) -> PgOutbox:
        shown = shown_dsn(dsn)
        try:
            conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=int(connect_timeout))
        except psycopg.Error as exc:
            raise OutboxUnavailable(f"{shown}: cannot connect to the outbox: {_reason(exc)}") from None
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                await conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                cur = await conn.execute("SELECT value FROM meta WHERE key = 'schema_version'")
                row = await cur.fetchone()
                version = int(row[0]) if row else 0
                if version > SCHEMA_VERSION:
                    raise StoreError(f"{shown}: outbox schema version {version} is newer than this aftercalld "
                                     f"understands ({SCHEMA_VERSION}); upgrade aftercalld")
                if version < SCHEMA_VERSION:
                    await conn.execute(_SCHEMA)
                    await conn.execute(
                        "INSERT INTO meta (key, value) VALUES ('schema_version', %s) "
                        "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", (str(SCHEMA_VERSION),))
        except psycopg.Error as exc:
            await conn.close()
            raise OutboxUnavailable(f"{shown}: cannot prepare the outbox: {_reason(exc)}") from None
        except BaseException:
            await conn.close()
            raise
        return cls(conn, shown, instance, dsn, connect_timeout)

    async def _reconnect(self) -> None:
        try:
            self.conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True,
                                                              connect_timeout=int(self._connect_timeout))
        except psycopg.Error as exc:
            raise OutboxUnavailable(f"{self.path}: cannot connect to the outbox: {_reason(exc)}") from None
        log.warning("connected to the outbox %s again", self.path)

    async def close(self) -> None:
        await self.conn.close()

    def __repr__(self) -> str:
        return f"<PgOutbox {self.path} instance={self.instance!r}>"

    # -- instances ---------------------------------------------------------------------

    async def heartbeat(self, info: dict[str, Any], now: float) -> None:
        await self.conn.execute(
            "INSERT INTO instances (instance, started_at, heartbeat_at, info) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (instance) DO UPDATE SET heartbeat_at = EXCLUDED.heartbeat_at, info = EXCLUDED.info",
            (self.instance, now, now, json.dumps(info, default=str)))

    async def instances(self) -> list[dict[str, Any]]:
        """Every instance that ever wrote a heartbeat, newest heartbeat first."""
        rows = await self._dicts("SELECT * FROM instances ORDER BY heartbeat_at DESC")
        for row in rows:
            row["info"] = json.loads(row["info"])
        return rows

    # -- calls in progress across a restart ---------------------------------------------

    async def save_handover(self, pbx: str, state: str, now: float) -> None:
        await self.conn.execute(
            "INSERT INTO handover (pbx, state, saved_at) VALUES (%s, %s, %s) "
            "ON CONFLICT (pbx) DO UPDATE SET state = EXCLUDED.state, saved_at = EXCLUDED.saved_at",
            (pbx, state, now))

    async def take_handover(self, pbx: str) -> tuple[str, float] | None:
        cur = await self.conn.execute("DELETE FROM handover WHERE pbx = %s RETURNING state, saved_at", (pbx,))
        row = await cur.fetchone()
        return (row[0], row[1]) if row else None

    # -- calls -------------------------------------------------------------------------

    async def record_calls(self, batch: Sequence[tuple[CallRecord, str | None, str, Sequence[RenderedMessage]]],
                           *, ttl_seconds: float, now: float) -> list[list[str] | None]:
        """As `Outbox.record_calls`. With several instances recording the same hangup,
        the one whose insert of the call lands first queues its texts; the others get None
        for it, as for a replayed event."""
        keys = [f"{record.pbx}/{record.call_id}" for record, *_ in batch]
        first: dict[str, int] = {}
        for i, key in enumerate(keys):
            first.setdefault(key, i)
        call_rows: list[tuple] = []
        message_rows: list[tuple] = []
        for key, i in first.items():  # in the batch's order: message ids are FIFO order
            record, rule, decision, messages = batch[i]
            call_rows.append((key, record.pbx, record.call_id, record.status.value, record.direction.value,
                              record.customer_number, rule, decision, record.to_json(), now, self.instance))
            message_rows.extend(_message_row(key, m, ttl_seconds, now) for m in messages)
        args = (*as_columns(call_rows, 11), *as_columns(message_rows, 18))
        if self._wants_births():
            # The webhook rows for the births commit with them: a transaction of two statements.
            async with self.conn.transaction():
                cur = await self.conn.execute(_RECORD_CALLS, args)
                new, born = _recorded(await cur.fetchall())
                wrote = await self._message_events(born, now)
            if wrote:
                self._events_written()
        else:
            # One statement in autocommit: one round trip and one commit for the batch. With
            # several instances recording the same hangup the loser's insert waits for the
            # winner's commit, so the shorter the winner's transaction the better.
            cur = await self.conn.execute(_RECORD_CALLS, args)
            new, _ = _recorded(await cur.fetchall())
        return [
            [m.key for m in batch[i][3] if not m.suppressed] if key in new and first[key] == i else None
            for i, key in enumerate(keys)
        ]

    async def queue_messages(self, batch: Sequence[tuple[str, RenderedMessage]], *, ttl_seconds: float,
                             now: float) -> list[tuple[int, bool]]:
        async with self.conn.transaction():
            out, wrote = await self._insert_adhoc(batch, ttl_seconds, now)
        if wrote:
            self._events_written()
        return out

    async def _insert_adhoc(self, batch: Sequence[tuple[str, RenderedMessage]], ttl_seconds: float,
                            now: float) -> tuple[list[tuple[int, bool]], bool]:
        out: list[tuple[int, bool]] = []
        born: list[Transition] = []
        for call_key, m in batch:
            cur = await self.conn.execute(_INSERT_MESSAGES + _RETURNING_TRANSITION,
                                          as_columns([_message_row(call_key, m, ttl_seconds, now)], 18))
            row = await cur.fetchone()
            if row is not None:
                out.append((row[0], True))
                born.append(_transition(row))
                continue
            cur = await self.conn.execute("SELECT id FROM messages WHERE key = %s", (m.key,))
            (existing,) = await cur.fetchone() or (0,)
            out.append((existing, False))
        return out, await self._born_events(born, now)

    # -- webhook events ------------------------------------------------------------------

    def _wants_events(self) -> bool:
        events = self.events
        return events is not None and bool(events.wanted)

    def _wants_births(self) -> bool:
        events = self.events
        return events is not None and bool(events.wanted & {MessageState.QUEUED, MessageState.SUPPRESSED})

    async def _born_events(self, transitions: Sequence[Transition], now: float) -> bool:
        return await self._message_events(transitions, now) if self._wants_births() else False

    async def _message_events(self, transitions: Sequence[Transition], now: float) -> bool:
        """Inside a transaction: the webhook rows for these state changes. True when any."""
        events = self.events
        if events is None or not transitions or not events.wanted:
            return False
        rows = events.message_rows(transitions, now)
        if rows:
            await self._insert_webhooks(rows, now)
        return bool(rows)

    def _events_written(self) -> None:
        if self.events is not None:
            self.events.written()

    async def _insert_webhooks(self, rows: Iterable[WebhookRow], now: float) -> None:
        rows = list(rows)
        await self.conn.execute(
            "INSERT INTO webhook_deliveries (event_id, event_type, endpoint, payload, state, next_attempt_at, "
            "created_at, updated_at) SELECT e, t, p_endpoint, body, 'queued', %s, %s, %s FROM unnest(%s::text[], "
            "%s::text[], %s::text[], %s::text[]) AS w (e, t, p_endpoint, body) "
            "ON CONFLICT (event_id, endpoint) DO NOTHING",
            (now, now, now, *as_columns(rows, 4)))

    async def queue_webhooks(self, rows: Sequence[WebhookRow], now: float) -> None:
        if not rows:
            return
        async with self.conn.transaction():
            await self._insert_webhooks(rows, now)
        self._events_written()

    async def requeue_webhooks(self, now: float) -> int:
        """This instance's deliveries from before its restart, and those of instances whose
        lease ran out: posted again (at-least-once; the event id tells the receiver)."""
        cur = await self.conn.execute(
            "UPDATE webhook_deliveries SET state = 'retrying', next_attempt_at = %s, updated_at = %s, "
            "claimed_by = NULL, lease_until = NULL WHERE state = 'sending' AND (claimed_by = %s OR lease_until <= %s)",
            (now, now, self.instance, now))
        return cur.rowcount

    async def claim_webhooks(self, free: dict[str, int], now: float, *,
                             lease_seconds: float = 120.0) -> list[WebhookDelivery]:
        claimed: list[WebhookDelivery] = []
        async with self.conn.transaction():
            for endpoint, limit in free.items():
                if limit <= 0:
                    continue
                cur = await self.conn.execute(
                    "UPDATE webhook_deliveries SET state = 'sending', attempts = attempts + 1, updated_at = %s, "
                    "claimed_by = %s, lease_until = %s WHERE id IN (SELECT id FROM webhook_deliveries "
                    "WHERE endpoint = %s AND ((state IN ('queued', 'retrying') AND next_attempt_at <= %s) "
                    "OR (state = 'sending' AND lease_until <= %s)) ORDER BY next_attempt_at, id LIMIT %s "
                    "FOR UPDATE SKIP LOCKED) "
                    "RETURNING id, event_id, event_type, endpoint, payload, attempts, created_at",
                    (now, self.instance, now + lease_seconds, endpoint, now, now, limit))
                claimed.extend(WebhookDelivery(*row) for row in sorted(await cur.fetchall()))
        return claimed

    async def record_webhook_results(self, results: Sequence[WebhookResult], now: float) -> None:
        if not results:
            return
        async with self.conn.transaction(), self.conn.cursor() as cur:
            await cur.executemany(
                "UPDATE webhook_deliveries SET state = %s, last_error = %s, next_attempt_at = %s, updated_at = %s, "
                "claimed_by = NULL, lease_until = NULL WHERE id = %s",
                [(r.state, r.error, r.next_attempt_at, now, r.delivery_id) for r in results])

    async def next_webhook_due(self, endpoints: Iterable[str]) -> float | None:
        names = list(endpoints)
        if not names:
            return None
        cur = await self.conn.execute(
            "SELECT MIN(next_attempt_at) FROM webhook_deliveries WHERE state IN ('queued', 'retrying') "
            "AND endpoint = ANY(%s)", (names,))
        row = await cur.fetchone()
        return row[0] if row else None

    async def webhook_deliveries(self, *, event_type: str | None = None, endpoint: str | None = None,
                                 state: str | None = None) -> list[dict[str, Any]]:
        where, args = _where((("event_type", "=", event_type), ("endpoint", "=", endpoint), ("state", "=", state)))
        rows = await self._dicts(f"SELECT * FROM webhook_deliveries{where} ORDER BY id", args)
        for row in rows:
            del row["claimed_by"], row["lease_until"]
        return rows

    async def webhook_counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        cur = await self.conn.execute(
            "SELECT endpoint, state, COUNT(*) FROM webhook_deliveries GROUP BY endpoint, state")
        for endpoint, state, count in await cur.fetchall():
            out.setdefault(endpoint, {})[state] = int(count)
        return out

    async def meta_get(self, key: str) -> str | None:
        cur = await self.conn.execute("SELECT value FROM meta WHERE key = %s", (key,))
        row = await cur.fetchone()
        return row[0] if row else None

    async def meta_set(self, key: str, value: str) -> None:
        await self.conn.execute("INSERT INTO meta (key, value) VALUES (%s, %s) "
                                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", (key, value))

    async def backfilled_among(self, call_keys: Iterable[str]) -> set[str]:
        cur = await self.conn.execute(
            "SELECT call_key FROM calls WHERE call_key = ANY(%s) AND record LIKE '%%\"source\":\"cdr\"%%'",
            (list(set(call_keys)),))
        return {k for (k,) in await cur.fetchall()}

    async def callers_since(self, pbx: str, since: float, *, disorder: float = 3600.0) -> list[tuple[str, float]]:
        cur = await self.conn.execute(
            "SELECT caller, created_at FROM calls WHERE pbx = %s AND created_at >= %s ORDER BY seq DESC",
            (pbx, since))
        return [(c, t) for c, t in await cur.fetchall()]

    # -- dispatching -------------------------------------------------------------------

    async def requeue_interrupted(self, now: float) -> int:
        """This instance's claims from before its restart, and every claim whose lease ran
        out (its instance died): sending again is the lesser evil than losing them."""
        cur = await self.conn.execute(
            "UPDATE messages SET state = 'queued', next_attempt_at = %s, updated_at = %s, claimed_by = NULL, "
            "lease_until = NULL, reason = 'requeued after restart' "
            "WHERE state = 'sending' AND (claimed_by = %s OR lease_until <= %s)",
            (now, now, self.instance, now))
        return cur.rowcount

    async def claim_due(self, limit: int, now: float, *, lease_seconds: float = 60.0) -> list[OutboundMessage]:
        """Claim up to `limit` due messages for this instance: queued or retrying ones whose
        time has come, and claims of other instances whose lease ran out. SKIP LOCKED lets
        instances claim side by side without waiting for each other.

        The claim's commit does not wait for the server's disk: a claim lost to a crash of
        the server puts the message back where a lease running out would (sent again, at
        least once), and the outcome's commit, which waits, makes the claim durable too.
        It saves a disk flush between a hangup and its submit_sm."""
        # One statement in autocommit, which set_config makes commit asynchronously: "the
        # behavior for any one transaction is determined by the setting in effect when it
        # commits" (PostgreSQL's documentation of synchronous_commit).
        cur = await self.conn.execute(
            f"UPDATE messages SET state = 'sending', attempts = attempts + 1, updated_at = %s, "
            f"claimed_by = %s, lease_until = %s "
            f"FROM (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit (setting) "
            f"WHERE id IN (SELECT id FROM messages WHERE "
            f"(state IN ('queued', 'retrying') AND next_attempt_at <= %s) "
            f"OR (state = 'sending' AND lease_until <= %s) "
            f"ORDER BY next_attempt_at NULLS FIRST, id LIMIT %s FOR UPDATE SKIP LOCKED) "
            f"RETURNING {MESSAGE_COLUMNS}",
            (now, self.instance, now + lease_seconds, now, now, limit))
        rows = await cur.fetchall()
        rows.sort(key=lambda r: r[0])
        return [outbound_from_row(r) for r in rows]

    async def renew_leases(self, message_ids: Sequence[int], now: float, *, lease_seconds: float) -> list[int]:
        """Push the lease of this instance's messages still being sent to `now + lease_seconds`,
        so that a send slower than one lease is not claimed (and sent) by another instance
        meanwhile. Returns the ids it can no longer renew: claimed by another instance after
        the lease ran out, or no longer being sent.

        SKIP LOCKED: a row another transaction holds (this instance's own outcome being
        written, a receipt settling it) is neither waited for (a renewal must not deadlock
        with the outcome writer on another connection) nor reported; the next renewal tells.
        The commit does not wait for the disk, as a claim's does not: a renewal lost to a
        crash of the server leaves the lease where it was."""
        if not message_ids:
            return []
        # One statement, committed asynchronously as claim_due's is. Its SELECT reads the
        # snapshot from before the UPDATE: rows still ours there and not renewed are the
        # locked ones, left for the next renewal.
        cur = await self.conn.execute(
            "WITH renewed AS (UPDATE messages SET lease_until = %s "
            "FROM (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit (setting) "
            "WHERE id IN (SELECT id FROM messages WHERE id = ANY(%s) AND state = 'sending' AND claimed_by = %s "
            "FOR UPDATE SKIP LOCKED) RETURNING id) "
            "SELECT wanted.id FROM unnest(%s::bigint[]) AS wanted (id) LEFT JOIN messages m ON m.id = wanted.id "
            "WHERE m.id IS NULL OR m.state <> 'sending' OR m.claimed_by IS DISTINCT FROM %s ORDER BY wanted.id",
            (now + lease_seconds, list(message_ids), self.instance, list(message_ids), self.instance))
        return [message_id for (message_id,) in await cur.fetchall()]

    async def allow_sends(self, ids: Sequence[int], destinations: Sequence[str], now: float, *,
                          day: str | None, midnight: float, cooldown_since: float | None,
                          decide: Callable[[SendCounts], Sequence[int]]) -> list[int]:
        """Which of these claimed messages the policy lets go out, as `decide` says from
        what every instance allowed and the lists (`SendCounts`). `day`: the quotas' day in
        the policy's time zone, which began at `midnight` (None: no quota is set);
        `cooldown_since`: now - cooldown (None: no cooldown). The ones `decide` returns are
        marked allowed, and counted for the day, in one statement.

        Decisions are serialised optimistically: the read returns the outbox's policy
        version, and the write applies only if the version is still the one read (bumping
        it), else the batch is read and decided again. So each decision that lands saw every
        text allowed before it: two texts to one number, or the last of a quota, decided at
        the same moment on two instances never both go out. Two statements and no lock held
        between them; the day's counts are a row per rule (`daily_counts`), so a check costs
        the same at the day's last text as at its first."""
        if day is not None and day != self._counted_day:
            await self._start_daily_counts(day, midnight)
        args = {"day": day or "", "ids": list(ids), "to": list(set(destinations)), "now": now,
                "after": float("inf") if cooldown_since is None else cooldown_since}
        for _ in range(_DECISION_ATTEMPTS):
            cur = await self.conn.execute(_POLICY_READ, args)
            counts = SendCounts(0, {}, {})
            version = ""
            for kind, key, value in await cur.fetchall():
                if kind == "rule":
                    counts.today_by_rule[key] = int(value)
                    counts.today += int(value)
                elif kind == "to":
                    counts.last_sent[key] = value
                elif kind == "again":
                    counts.counted.add(int(value))
                elif kind == "optout":
                    counts.opted_out.add(key)
                elif kind == "dnd":
                    counts.dnd.add(key)
                else:
                    version = key
            allowed = list(decide(counts))
            if not allowed:
                return allowed  # nothing to write: a refusal changes nothing another reads
            cur = await self.conn.execute(_POLICY_WRITE, {**args, "ids": allowed, "version": version})
            if await cur.fetchone() is not None:
                return allowed
        raise OutboxUnavailable(f"{self.path}: {_DECISION_ATTEMPTS} policy decisions in a row met another "
                                f"instance's; the claimed texts wait for their lease")

    async def _start_daily_counts(self, day: str, midnight: float) -> None:
        """Once per day and instance: the first instance to count a day counts what was
        already sent that day (texts from before an upgrade, or from before a quota was
        set), and drops the counts of days past. Instances doing it together insert the
        same counts: the second's are conflicts, and change nothing."""
        await self.conn.execute(
            "INSERT INTO daily_counts (day, rule, allowed) SELECT %(day)s, rule, COUNT(*) FROM messages "
            "WHERE submitted_at >= %(midnight)s AND state NOT IN ('failed', 'suppressed') "
            "AND NOT EXISTS (SELECT 1 FROM daily_counts WHERE day = %(day)s AND rule = '') GROUP BY rule "
            "UNION ALL SELECT %(day)s, '', 0 ON CONFLICT (day, rule) DO NOTHING",
            {"day": day, "midnight": midnight})
        await self.conn.execute("DELETE FROM daily_counts WHERE day < %s", (day,))
        self._counted_day = day

    async def opted_out_among(self, numbers: Iterable[str]) -> set[str]:
        cur = await self.conn.execute("SELECT number FROM optout WHERE number = ANY(%s)", (list(set(numbers)),))
        return {n for (n,) in await cur.fetchall()}

    async def next_due(self) -> float | None:
        cur = await self.conn.execute(
            "SELECT LEAST((SELECT MIN(next_attempt_at) FROM messages WHERE state IN ('queued', 'retrying')), "
            "(SELECT MIN(lease_until) FROM messages WHERE state = 'sending' AND claimed_by <> %s))",
            (self.instance,))
        row = await cur.fetchone()
        return row[0] if row else None

    async def expires_at(self, message_id: int) -> float:
        cur = await self.conn.execute("SELECT expires_at FROM messages WHERE id = %s", (message_id,))
        row = await cur.fetchone()
        return row[0] if row else 0.0

    async def record_outcomes(self, outcomes: Sequence[OutcomeRecord], now: float) -> list[Transition]:
        rows = outcome_rows(outcomes, now)
        transitions = rows.transitions
        # A part given twice (a text submitted twice in one batch) keeps its last id, as the
        # SQLite outbox's row-by-row upsert does: one INSERT may not change a row twice.
        parts = list({(p[0], p[1]): p for p in rows.parts}.values())
        args = (*as_columns(rows.submitted, 4), *as_columns(parts, 5), *as_columns(rows.retrying, 5),
                *as_columns(rows.final, 6), sorted(set(rows.new_keys)))
        if self._wants_events():
            # The webhook rows for these changes commit with them.
            async with self.conn.transaction():
                cur = await self.conn.execute(_RECORD_OUTCOMES, args)
                transitions.extend(await self._apply_orphan_rows(await cur.fetchall(), now))
                wrote = await self._message_events(transitions, now)
            if wrote:
                self._events_written()
            return transitions
        # One statement in autocommit. Receipts that came before these submits were recorded
        # (orphans) are matched after it, in their own transaction: should that one fail,
        # they still wait in orphan_reports for `resolve_orphans`.
        cur = await self.conn.execute(_RECORD_OUTCOMES, args)
        orphans = await cur.fetchall()
        if orphans:
            async with self.conn.transaction():
                transitions.extend(await self._apply_orphan_rows(orphans, now))
        return transitions

    async def suppress(self, message: OutboundMessage, reason: str, now: float) -> Transition:
        transition = Transition(message.id, message.call_id, message.rule, message.destination,
                                MessageState.SUPPRESSED, reason)
        async with self.conn.transaction():
            await self.conn.execute(
                "UPDATE messages SET state = 'suppressed', reason = %s, updated_at = %s, final_at = %s, "
                "next_attempt_at = NULL, claimed_by = NULL, lease_until = NULL WHERE id = %s",
                (reason, now, now, message.id))
            wrote = await self._message_events([transition], now)
        if wrote:
            self._events_written()
        return transition

    async def defer(self, message: OutboundMessage, until: float, reason: str, now: float) -> None:
        await self.conn.execute(
            "UPDATE messages SET state = 'queued', reason = %s, updated_at = %s, next_attempt_at = %s, "
            "attempts = GREATEST(attempts - 1, 0), claimed_by = NULL, lease_until = NULL WHERE id = %s",
            (reason, now, until, message.id))

    # -- delivery reports --------------------------------------------------------------

    async def apply_reports(self, reports: Sequence[DeliveryReport], now: float) -> list[Transition]:
        transitions: list[Transition] = []
        async with self.conn.transaction():
            for report in reports:
                try:
                    async with self.conn.transaction():  # a savepoint: one bad row is undone alone
                        transition = await self._apply_report(report, now)
                except Exception as exc:
                    if not _row_fault(exc):
                        raise
                    await self._keep_unmatchable_report(report, exc, now)
                    continue
                if transition:
                    transitions.append(transition)
            wrote = await self._message_events(transitions, now)
        if wrote:
            self._events_written()
        return transitions

    async def _apply_report(self, report: DeliveryReport, now: float) -> Transition | None:
        target = await self._match_part(report.message_id, loose=False, transport=report.transport)
        if target is None:
            if report.state in REPORT_TO_STATE:
                await self.conn.execute(
                    "INSERT INTO orphan_reports (transport, transport_id, match_key, state, error, raw, "
                    "received_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (report.transport, report.message_id, msgid.match_key(report.message_id),
                     report.state.value, report.error, report.raw, now))
            return None
        return await self._apply_to_part(target, report.state, report.error, now)

    async def _keep_unmatchable_report(self, report: DeliveryReport, exc: Exception, now: float) -> None:
        reason = _fault_reason(exc)
        log.warning("delivery report for message id %s cannot be matched (%s); kept for support",
                    bounded(str(report.message_id)), reason)
        await self.conn.execute(
            "INSERT INTO orphan_reports (transport, transport_id, match_key, state, error, raw, received_at, "
            "matched) VALUES (%s, %s, '', %s, %s, %s, %s, -1)",
            (_storable(report.transport), _storable(report.message_id), str(getattr(report.state, "value", "")),
             _storable(f"unmatchable: {reason}"), _storable(report.raw, 4096), now))

    async def _match_part(self, transport_id: str, *, loose: bool, transport: str = "") -> tuple[int, int] | None:
        # As the SQLite outbox: a part the receipt's own transport sent first, then the newest.
        keys = msgid.candidate_keys(transport_id) if loose else [msgid.match_key(transport_id)]
        for key in keys:
            cur = await self.conn.execute(
                "SELECT p.message_id, p.part FROM parts p JOIN messages m ON m.id = p.message_id "
                "WHERE p.match_key = %s ORDER BY (m.transport IS NOT DISTINCT FROM %s) DESC, p.message_id DESC "
                "LIMIT 1", (key, transport))
            row = await cur.fetchone()
            if row:
                return row[0], row[1]
        return None

    async def _apply_to_part(self, target: tuple[int, int], state: ReportState, error: str,
                             now: float) -> Transition | None:
        message_id, part = target
        await self.conn.execute(
            "UPDATE parts SET state = %s, error = %s, updated_at = %s WHERE message_id = %s AND part = %s",
            (state.value, error, now, message_id, part))
        if state not in REPORT_TO_STATE:
            return None
        # FOR UPDATE: two instances settling the same message's last two parts at once
        # must not both see the other part as still open.
        cur = await self.conn.execute(
            "SELECT state, call_key, rule, destination, submitted_at FROM messages WHERE id = %s FOR UPDATE",
            (message_id,))
        row = await cur.fetchone()
        if row is None or row[0] != MessageState.SUBMITTED.value:
            return None
        cur = await self.conn.execute("SELECT state, error FROM parts WHERE message_id = %s", (message_id,))
        outcome = settle(await cur.fetchall())
        if outcome is None:
            return None
        settled, reason = outcome
        await self.conn.execute(
            "UPDATE messages SET state = %s, reason = %s, updated_at = %s, final_at = %s WHERE id = %s",
            (settled.value, reason, now, now, message_id))
        return Transition(message_id, row[1], row[2], row[3] or "", settled, reason, submitted_at=row[4])

    async def _apply_orphan_rows(self, orphans: Iterable[tuple], now: float) -> list[Transition]:
        """Inside a transaction: receipts kept in orphan_reports (id, transport_id, state,
        error, transport), applied to the parts they now match."""
        transitions: list[Transition] = []
        for orphan_id, transport_id, state, error, transport in orphans:
            try:
                async with self.conn.transaction():
                    target = await self._match_part(transport_id, loose=False, transport=transport)
                    if target is None:
                        continue
                    await self.conn.execute("UPDATE orphan_reports SET matched = 1 WHERE id = %s", (orphan_id,))
                    transition = await self._apply_to_part(target, ReportState(state), error, now)
            except Exception as exc:
                if not _row_fault(exc):
                    raise
                await self._give_up_orphan(orphan_id, transport_id, exc)
                continue
            if transition:
                transitions.append(transition)
        return transitions

    async def resolve_orphans(self, received_before: float, now: float) -> list[Transition]:
        transitions: list[Transition] = []
        async with self.conn.transaction():
            cur = await self.conn.execute(
                "SELECT id, transport_id, state, error, transport FROM orphan_reports WHERE matched = 0 "
                "AND received_at <= %s ORDER BY id FOR UPDATE SKIP LOCKED", (received_before,))
            for orphan_id, transport_id, state, error, transport in await cur.fetchall():
                try:
                    async with self.conn.transaction():
                        target = await self._match_part(transport_id, loose=True, transport=transport)
                        await self.conn.execute("UPDATE orphan_reports SET matched = %s WHERE id = %s",
                                                (1 if target else -1, orphan_id))
                        if target is None:
                            log.info("delivery report for unknown message id %s (%s); kept for support",
                                     transport_id, state)
                            continue
                        transition = await self._apply_to_part(target, ReportState(state), error, now)
                except Exception as exc:
                    if not _row_fault(exc):
                        raise
                    await self._give_up_orphan(orphan_id, transport_id, exc)
                    continue
                if transition:
                    transitions.append(transition)
            wrote = await self._message_events(transitions, now)
        if wrote:
            self._events_written()
        return transitions

    async def _give_up_orphan(self, orphan_id: int, transport_id: str, exc: Exception) -> None:
        reason = _fault_reason(exc)
        log.warning("delivery report for message id %s cannot be matched (%s); kept for support",
                    bounded(transport_id), reason)
        await self.conn.execute("UPDATE orphan_reports SET matched = -1, error = %s WHERE id = %s",
                                (_storable(f"unmatchable: {reason}"), orphan_id))

    async def has_pending_orphans(self, received_before: float) -> bool:
        cur = await self.conn.execute(
            "SELECT 1 FROM orphan_reports WHERE matched = 0 AND received_at <= %s LIMIT 1", (received_before,))
        return await cur.fetchone() is not None

    # -- opt-out and DND ---------------------------------------------------------------

    async def optout_add(self, numbers: Iterable[str], source: str, now: float) -> int:
        return await self._add("optout", "number", numbers, source, now)

    async def optout_remove(self, numbers: Iterable[str]) -> list[str]:
        return await self._remove("optout", "number", numbers)

    async def is_opted_out(self, number: str) -> bool:
        cur = await self.conn.execute("SELECT 1 FROM optout WHERE number = %s", (number,))
        return await cur.fetchone() is not None

    async def optout_list(self) -> list[tuple[str, str, float]]:
        cur = await self.conn.execute("SELECT number, source, created_at FROM optout ORDER BY number")
        return [tuple(r) for r in await cur.fetchall()]

    async def dnd_add(self, entries: Iterable[str], source: str, now: float) -> int:
        return await self._add("dnd", "entry", entries, source, now)

    async def dnd_remove(self, entries: Iterable[str]) -> list[str]:
        return await self._remove("dnd", "entry", entries)

    async def dnd_list(self) -> list[tuple[str, str, float]]:
        cur = await self.conn.execute("SELECT entry, source, created_at FROM dnd ORDER BY entry")
        return [tuple(r) for r in await cur.fetchall()]

    async def dnd_matches(self, destinations: Iterable[str]) -> set[str]:
        numbers = list(set(destinations))
        if not numbers:
            return set()
        cur = await self.conn.execute(f"SELECT d FROM unnest(%s::text[]) AS d WHERE {_ON_DND}", (numbers,))
        return {n for (n,) in await cur.fetchall()}

    async def _add(self, table: str, column: str, entries: Iterable[str], source: str, now: float) -> int:
        cur = await self.conn.execute(
            f"INSERT INTO {table} ({column}, source, created_at) SELECT e, %s, %s FROM unnest(%s::text[]) AS e "
            f"ON CONFLICT ({column}) DO NOTHING", (source, now, list(dict.fromkeys(entries))))
        return cur.rowcount

    async def _remove(self, table: str, column: str, entries: Iterable[str]) -> list[str]:
        wanted = list(dict.fromkeys(entries))
        cur = await self.conn.execute(f"DELETE FROM {table} WHERE {column} = ANY(%s) RETURNING {column}", (wanted,))
        gone = {e for (e,) in await cur.fetchall()}
        return [e for e in wanted if e in gone]

    # -- policy ------------------------------------------------------------------------

    async def submitted_counts_since(self, since: float) -> tuple[int, dict[str, int]]:
        cur = await self.conn.execute(
            "SELECT rule, COUNT(*) FROM messages WHERE submitted_at >= %s GROUP BY rule", (since,))
        by_rule = {rule: int(n) for rule, n in await cur.fetchall()}
        return sum(by_rule.values()), by_rule

    async def policy_facts(self, destinations: Sequence[str], *, submitted_since: float | None) -> PolicyFacts:
        numbers = list(set(destinations))
        last = ("(SELECT MAX(submitted_at) FROM messages WHERE destination = d AND submitted_at >= %s)"
                if submitted_since is not None else "NULL::float8")
        cur = await self.conn.execute(
            f"SELECT d, EXISTS (SELECT 1 FROM optout WHERE number = d), {_ON_DND}, {last} "
            f"FROM unnest(%s::text[]) AS d",
            (numbers,) if submitted_since is None else (submitted_since, numbers))
        facts = PolicyFacts(set(), set(), {})
        for number, opted_out, dnd, last_submitted in await cur.fetchall():
            if opted_out:
                facts.opted_out.add(number)
            if dnd:
                facts.dnd.add(number)
            if last_submitted is not None:
                facts.last_submitted[number] = last_submitted
        return facts

    async def last_submitted_to(self, destinations: Iterable[str], since: float) -> dict[str, float]:
        cur = await self.conn.execute(
            "SELECT destination, MAX(submitted_at) FROM messages WHERE destination = ANY(%s) "
            "AND submitted_at >= %s GROUP BY destination", (list(set(destinations)), since))
        return {d: t for d, t in await cur.fetchall()}

    # -- replies -----------------------------------------------------------------------

    async def record_reply(self, number: str, text: str, transport: str, keyword: str, now: float,
                           window_seconds: float, *, optout: str = "",
                           effects: Callable[[int, Answered | None], ReplyEffects] | None = None
                           ) -> tuple[int, str | None]:
        """As `Outbox.record_reply`: the reply, the opt-out change and what the reply causes
        (texts, webhook rows) in one transaction."""
        cur = await self.conn.execute(
            "SELECT m.id, m.call_key, m.rule, m.sender, c.record FROM messages m "
            "LEFT JOIN calls c ON c.call_key = m.call_key WHERE m.destination = %s AND m.submitted_at >= %s "
            "ORDER BY m.submitted_at DESC LIMIT 1", (number, now - window_seconds))
        row = await cur.fetchone()
        answered = Answered(*row) if row else None
        message_id, call_key = (answered.message_id, answered.call_key) if answered else (None, None)
        wrote = False
        async with self.conn.transaction():
            cur = await self.conn.execute(
                "INSERT INTO replies (number, text, transport, keyword, message_id, call_key, received_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (_storable(number), _storable(text, 4096), transport, keyword, message_id, call_key, now))
            inserted = await cur.fetchone()
            reply_id = int(inserted[0]) if inserted else 0
            if optout == "remove":
                await self.conn.execute("DELETE FROM optout WHERE number = %s", (number,))
            elif optout:
                await self.conn.execute("INSERT INTO optout (number, source, created_at) VALUES (%s, %s, %s) "
                                        "ON CONFLICT (number) DO NOTHING", (number, optout, now))
            if effects is not None:
                caused = effects(reply_id, answered)
                if caused.messages:
                    _, wrote = await self._insert_adhoc(caused.messages, caused.ttl_seconds, now)
                if caused.webhooks:
                    await self._insert_webhooks(caused.webhooks, now)
                    wrote = True
        if wrote:
            self._events_written()
        return reply_id, call_key

    async def call_record(self, call_key: str) -> str | None:
        cur = await self.conn.execute("SELECT record FROM calls WHERE call_key = %s", (call_key,))
        row = await cur.fetchone()
        return row[0] if row else None

    async def last_created(self, destination: str, rule: str, since: float) -> float | None:
        cur = await self.conn.execute(
            "SELECT MAX(created_at) FROM messages WHERE destination = %s AND rule = %s AND created_at >= %s",
            (destination, rule, since))
        row = await cur.fetchone()
        return row[0] if row else None

    async def replies(self, *, numbers: Iterable[str] = (), since: float | None = None,
                      until: float | None = None) -> list[dict[str, Any]]:
        where, args = _where((("number", "= ANY", list(numbers) or None), ("received_at", ">=", since),
                              ("received_at", "<", until)))
        return await self._dicts(f"SELECT * FROM replies{where} ORDER BY received_at, id", args)

    # -- retention ---------------------------------------------------------------------

    async def prune(self, before: float, *, after_rowid: int = 0, limit: int = 500) -> tuple[Pruned, int | None]:
        pruned = Pruned()
        async with self.conn.transaction():
            if after_rowid == 0:
                cur = await self.conn.execute("DELETE FROM orphan_reports WHERE received_at < %s", (before,))
                pruned.receipts = cur.rowcount
                await self.conn.execute("DELETE FROM replies WHERE received_at < %s", (before,))
                await self.conn.execute("DELETE FROM webhook_deliveries WHERE created_at < %s "
                                        "AND state IN ('delivered', 'failed')", (before,))
                # Texts no call owns (the HTTP API's, replies forwarded or answered) go by age.
                stale = ("SELECT id FROM messages WHERE (starts_with(key, 'api/') OR starts_with(key, 'reply/')) "
                         "AND created_at < %s AND state NOT IN ('queued', 'retrying', 'sending')")
                await self.conn.execute(f"DELETE FROM parts WHERE message_id IN ({stale})", (before,))
                cur = await self.conn.execute(f"DELETE FROM messages WHERE id IN ({stale})", (before,))
                pruned.messages += cur.rowcount
            cur = await self.conn.execute(
                "SELECT seq, call_key, created_at FROM calls WHERE seq > %s ORDER BY seq LIMIT %s",
                (after_rowid, limit))
            rows = await cur.fetchall()
            for seq, call_key, created_at in rows:
                if created_at >= before:
                    return pruned, None
                after_rowid = seq
                cur = await self.conn.execute(
                    "SELECT 1 FROM messages WHERE call_key = %s AND state IN ('queued', 'retrying', 'sending') "
                    "LIMIT 1", (call_key,))
                if await cur.fetchone():
                    pruned.kept += 1
                    continue
                await self.conn.execute(
                    "DELETE FROM parts WHERE message_id IN (SELECT id FROM messages WHERE call_key = %s)", (call_key,))
                cur = await self.conn.execute("DELETE FROM messages WHERE call_key = %s", (call_key,))
                pruned.messages += cur.rowcount
                await self.conn.execute("DELETE FROM calls WHERE call_key = %s", (call_key,))
                pruned.calls += 1
        return pruned, (after_rowid if len(rows) == limit else None)

    # -- reading, for reports and support ----------------------------------------------

    async def counts_by_state(self) -> dict[str, int]:
        cur = await self.conn.execute("SELECT state, COUNT(*) FROM messages GROUP BY state")
        return {state: int(n) for state, n in await cur.fetchall()}

    async def last_call_time(self) -> float | None:
        cur = await self.conn.execute("SELECT MAX(created_at) FROM calls")
        row = await cur.fetchone()
        return row[0] if row else None

    async def queue_depth(self) -> int:
        cur = await self.conn.execute(
            "SELECT COUNT(*) FROM messages WHERE state IN ('queued', 'retrying', 'sending')")
        row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def messages(self, *, call_key: str | None = None, destination: str | None = None,
                       since: float | None = None, until: float | None = None, rule: str | None = None,
                       state: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        where, args = _where((("m.call_key", "=", call_key), ("m.destination", "=", destination),
                              ("m.created_at", ">=", since), ("m.created_at", "<", until),
                              ("m.rule", "=", rule), ("m.state", "=", state)))
        return await self._dicts(
            "SELECT m.*, (SELECT string_agg(p.transport_id, ' ' ORDER BY p.part) FROM parts p "
            f"WHERE p.message_id = m.id) AS transport_ids FROM messages m{where} ORDER BY m.id"
            + (f" LIMIT {int(limit)}" if limit else ""), args)

    async def calls(self, *, call_key: str | None = None, callers: Sequence[str] = (), texted: str | None = None,
                    limit: int = 50) -> list[dict[str, Any]]:
        where: list[str] = []
        args: list[Any] = []
        if call_key is not None:
            where.append("(call_key = %s OR call_id = %s)")
            args += [call_key, call_key]
        who = []
        if callers:
            who.append("caller = ANY(%s)")
            args.append(list(callers))
        if texted:
            who.append("call_key IN (SELECT call_key FROM messages WHERE destination = %s)")
            args.append(texted)
        if who:
            where.append("(" + " OR ".join(who) + ")")
        rows = await self._dicts(
            "SELECT * FROM calls" + (" WHERE " + " AND ".join(where) if where else "")
            + f" ORDER BY created_at DESC LIMIT {int(limit)}", args)
        for row in rows:
            del row["seq"], row["instance"]  # the same columns as the SQLite outbox's
        return rows

    async def parts(self, message_ids: Iterable[int]) -> dict[int, list[dict[str, Any]]]:
        found: dict[int, list[dict[str, Any]]] = {}
        for part in await self._dicts(
                "SELECT message_id, part, transport_id, state, error, updated_at FROM parts "
                "WHERE message_id = ANY(%s) ORDER BY message_id, part", [sorted(set(message_ids))]):
            found.setdefault(part["message_id"], []).append(part)
        return found

    async def messages_by_id(self, message_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        rows = await self._dicts(
            "SELECT m.*, (SELECT string_agg(p.transport_id, ' ' ORDER BY p.part) FROM parts p "
            "WHERE p.message_id = m.id) AS transport_ids FROM messages m WHERE m.id = ANY(%s)",
            [sorted(set(message_ids))])
        return {row["id"]: row for row in rows}

    async def orphan_reports(self) -> list[dict[str, Any]]:
        return await self._dicts("SELECT * FROM orphan_reports WHERE matched <= 0 ORDER BY id")

    async def _dicts(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        async with self.conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(sql, args)
            return await cur.fetchall()


# A new message's columns, in `types.message_row`'s order, and the arrays they are bound as.
_NEW_MESSAGE_COLUMNS = (
    "key, call_key, rule, recipient_kind, raw_number, destination, sender, text, encoding, segments, options, "
    "state, reason, next_attempt_at, expires_at, created_at, updated_at, final_at"
)
_NEW_MESSAGE_ARRAYS = (
    "unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], "
    "%s::text[], %s::int[], %s::text[], %s::text[], %s::text[], %s::float8[], %s::float8[], %s::float8[], "
    "%s::float8[], %s::float8[])"
)
_INSERT_MESSAGES = (
    f"INSERT INTO messages ({_NEW_MESSAGE_COLUMNS}) SELECT * FROM {_NEW_MESSAGE_ARRAYS} ON CONFLICT (key) DO NOTHING"
)


# What a message's birth looks like to webhooks: the columns of `_transition`.
_RETURNING_TRANSITION = " RETURNING id, call_key, rule, destination, state, reason"


# Whether number `d` is on the DND list: an entry ending in * is a prefix, others match whole
# numbers.
_ON_DND = ("EXISTS (SELECT 1 FROM dnd WHERE entry = d "
           "OR (right(entry, 1) = '*' AND starts_with(d, left(entry, -1))))")


# A batch of finished calls and their messages in one statement. A call already recorded
# (a replayed event, or another instance that saw the same hangup first) keeps its row,
# and its messages are not inserted again. The messages are inserted in the batch's order
# (WITH ORDINALITY), so that message ids keep the order calls finished in. Returns a row
# per new call (id NULL) and one per message born, as `_transition` reads them.
_RECORD_CALLS = (
    "WITH new_calls AS (INSERT INTO calls (call_key, pbx, call_id, status, direction, caller, rule, decision, "
    "record, created_at, instance) SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], "
    "%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::float8[], %s::text[]) "
    "ON CONFLICT (call_key) DO NOTHING RETURNING call_key), "
    f"born AS (INSERT INTO messages ({_NEW_MESSAGE_COLUMNS}) SELECT {_NEW_MESSAGE_COLUMNS} "
    f"FROM {_NEW_MESSAGE_ARRAYS} WITH ORDINALITY AS m ({_NEW_MESSAGE_COLUMNS}, n) "
    "WHERE m.call_key IN (SELECT call_key FROM new_calls) ORDER BY m.n "
    "ON CONFLICT (key) DO NOTHING RETURNING id, call_key, rule, destination, state, reason) "
    "SELECT NULL::bigint, call_key, NULL, NULL, NULL, NULL FROM new_calls "
    "UNION ALL SELECT id, call_key, rule, destination, state, reason FROM born"
)


# A batch of submit outcomes (`types.outcome_rows`) in one statement; returns the receipts
# waiting in orphan_reports for the parts it records (`_apply_orphan_rows` reads them).
_RECORD_OUTCOMES = (
    "WITH submitted AS (UPDATE messages m SET state = 'submitted', reason = '', updated_at = s.updated_at, "
    "submitted_at = s.submitted_at, next_attempt_at = NULL, transport = s.transport, lease_until = NULL "
    "FROM unnest(%s::float8[], %s::float8[], %s::text[], %s::bigint[]) AS s (updated_at, submitted_at, "
    "transport, id) WHERE m.id = s.id), "
    "new_parts AS (INSERT INTO parts (message_id, part, transport_id, match_key, updated_at) "
    "SELECT * FROM unnest(%s::bigint[], %s::int[], %s::text[], %s::text[], %s::float8[]) "
    "ON CONFLICT (message_id, part) DO UPDATE SET transport_id = EXCLUDED.transport_id, "
    "match_key = EXCLUDED.match_key, state = 'submitted', error = '', updated_at = EXCLUDED.updated_at), "
    "retrying AS (UPDATE messages m SET state = 'retrying', reason = r.reason, updated_at = r.updated_at, "
    "next_attempt_at = r.next_attempt_at, transport = r.transport, lease_until = NULL "
    "FROM unnest(%s::text[], %s::float8[], %s::float8[], %s::text[], %s::bigint[]) AS r (reason, updated_at, "
    "next_attempt_at, transport, id) WHERE m.id = r.id), "
    "final AS (UPDATE messages m SET state = f.state, reason = f.reason, updated_at = f.updated_at, "
    "final_at = f.final_at, next_attempt_at = NULL, transport = f.transport, lease_until = NULL "
    "FROM unnest(%s::text[], %s::text[], %s::float8[], %s::float8[], %s::text[], %s::bigint[]) AS f (state, "
    "reason, updated_at, final_at, transport, id) WHERE m.id = f.id) "
    "SELECT id, transport_id, state, error, transport FROM orphan_reports WHERE matched <= 0 "
    "AND match_key = ANY(%s) ORDER BY id"
)


# What a policy decision reads, in one statement (one snapshot): the policy version, the
# day's counts, each destination's last text allowed or sent within the cooldown (a failed
# or suppressed one never went out), the batch's texts allowed before (retries: counted
# already), and which destinations are opted out or on the DND list.
_POLICY_READ = (
    "SELECT 'version', value, NULL::float8 FROM meta WHERE key = 'policy_version' "
    "UNION ALL SELECT 'rule', rule, allowed::float8 FROM daily_counts WHERE day = %(day)s AND rule <> '' "
    "UNION ALL SELECT 'to', destination, MAX(GREATEST(allowed_at, submitted_at)) FROM messages "
    "WHERE destination = ANY(%(to)s) AND (allowed_at >= %(after)s OR submitted_at >= %(after)s) "
    "AND state NOT IN ('failed', 'suppressed') AND id <> ALL(%(ids)s) GROUP BY destination "
    "UNION ALL SELECT 'again', NULL, id FROM messages WHERE id = ANY(%(ids)s) AND allowed_at IS NOT NULL "
    "UNION ALL SELECT 'optout', number, NULL FROM optout WHERE number = ANY(%(to)s) "
    f"UNION ALL SELECT 'dnd', d, NULL FROM unnest(%(to)s::text[]) AS d WHERE {_ON_DND}"
)
# A decision's write: only if no other decision landed since the read (the version is the
# one read; an instance bumping it at the same moment holds the row until it commits, then
# ours finds the new version and writes nothing). A text allowed again (a retry) is counted
# once, on its first allowance. Committed asynchronously, as the claim these texts came
# with: a crash of the server that loses the mark loses the claim too, and the outcome's
# commit, which waits for the disk, makes both durable.
_POLICY_WRITE = (
    "WITH bump AS (UPDATE meta SET value = (value::bigint + 1)::text WHERE key = 'policy_version' "
    "AND value = %(version)s AND set_config('synchronous_commit', 'off', true) IS NOT NULL RETURNING value), "
    "marked AS (UPDATE messages m SET allowed_at = %(now)s FROM (SELECT id, allowed_at IS NULL AS first "
    "FROM messages WHERE id = ANY(%(ids)s) AND EXISTS (SELECT 1 FROM bump) FOR UPDATE) o WHERE m.id = o.id "
    "RETURNING m.rule, o.first), "
    "counted AS (INSERT INTO daily_counts (day, rule, allowed) SELECT %(day)s, rule, COUNT(*) FROM marked "
    "WHERE first AND %(day)s <> '' GROUP BY rule "
    "ON CONFLICT (day, rule) DO UPDATE SET allowed = daily_counts.allowed + EXCLUDED.allowed) "
    "SELECT value FROM bump"
)
# Decisions met by another instance's, in a row, before giving up (the claims then wait for
# their lease): each round lets at least one instance's decision land.
_DECISION_ATTEMPTS = 50


def _recorded(rows: list[tuple]) -> tuple[set[str], list[Transition]]:
    """`_RECORD_CALLS`'s rows: the keys of the calls it recorded, and the messages born."""
    new = {row[1] for row in rows if row[0] is None}
    return new, sorted((_transition(row) for row in rows if row[0] is not None), key=lambda t: t.message_id)


def _transition(row: tuple) -> Transition:
    id_, call_key, rule, destination, state, reason = row
    return Transition(id_, call_key, rule, destination or "", MessageState(state), reason)


def _message_row(call_key: str, m: RenderedMessage, ttl_seconds: float, now: float) -> tuple:
    return message_row(call_key, m, ttl_seconds, now, raw_number=_storable(m.raw_number),
                       text=_storable(m.text, 1 << 20))


def as_columns(rows: Sequence[tuple], width: int) -> list[list[Any]]:
    """Rows as one array per column, for INSERT … SELECT FROM unnest(…): one statement and
    one round trip for a whole batch."""
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


def _where(conditions: Iterable[tuple[str, str, Any]]) -> tuple[str, list[Any]]:
    parts, args = [], []
    for column, op, value in conditions:
        if value is None:
            continue
        parts.append(f"{column} = ANY(%s)" if op == "= ANY" else f"{column} {op} %s")
        args.append(value)
    return (" WHERE " + " AND ".join(parts) if parts else ""), args


def _storable(value: object, limit: int = 256) -> str:
    """PostgreSQL refuses NUL in text, which a hostile peer can send; SQLite stores it."""
    return bounded(str(value), limit).replace("\x00", "\\x00")


def _row_fault(exc: Exception) -> bool:
    """True when `exc` is about one row's data rather than the connection or the server."""
    if isinstance(exc, psycopg.Error):
        return isinstance(exc, psycopg.DataError)
    return isinstance(exc, (ValueError, TypeError, KeyError))


def _fault_reason(exc: Exception) -> str:
    return bounded(f"{type(exc).__name__}: {exc}", 200)


def _reason(exc: psycopg.Error) -> str:
    """The server's or libpq's own words, first line: they name what is wrong (host,
    authentication, database) and never carry the password."""
    return bounded(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, 300)


def shown_dsn(dsn: str) -> str:
    """The connection string as logs and errors may show it: without the password."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "postgresql://(unparsable connection string)"
    info.pop("password", None)
    host = info.get("host", "")
    where = f"{host}:{info['port']}" if "port" in info else str(host)
    return f"postgresql://{info.get('user', '')}@{where}/{info.get('dbname', '')}"

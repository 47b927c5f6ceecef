"""The HTTP API's listener inside the daemon: aiohttp on its own address, bearer tokens,
JSON in and out.

Every answer is JSON, errors included (``{"error": "..."}``): a middleware turns aiohttp's
own refusals (no route, wrong method, a body over the limit) into that shape, and anything
unforeseen into a 500 whose details go to the log only. Tokens are compared in constant
time and never logged; requests are logged by token name.

The event loop is the daemon's: the texts of concurrent requests are written to the outbox
in one transaction per loop turn (as the dispatcher writes its outcomes), and the read-only
views (a message, a call, a rules test) run in a worker thread on a connection of their own.
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import logging
import sqlite3
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import orjson
from aiohttp import web

from ..clock import Clock
from ..config import Config, sender_problem
from ..logutil import fields
from ..model import CallRecord, MessageState, RecipientKind
from ..report import call_view, message_view
from ..rules.render import RenderedMessage, render_adhoc
from ..store import InlineOutbox, Outbox, OutboxUnavailable, Store, StoreError, run_inline
from ..textsafety import escape_controls
from .config import ApiConfig, ApiToken
from .openapi import DOCUMENT

if TYPE_CHECKING:
    from ..dispatcher import Dispatcher

log = logging.getLogger(__name__)

T = TypeVar("T")

_REQUEST_FIELDS = frozenset({"to", "text", "sender", "call_id"})
_MAX_IDEMPOTENCY_KEY = 200
_MAX_NUMBER = 64
_MAX_CALL_ID = 300
# Where the middleware leaves the token's name for the handlers (a typed key, aiohttp 3.14+: it warns
# about plain string keys, and a typo would be a KeyError at runtime rather than for mypy).
_TOKEN_NAME = web.RequestKey("aftercalld.token_name", str)
_OPENAPI_BODY = orjson.dumps(DOCUMENT)
_CHALLENGE = 'Bearer realm="aftercalld"'
SHUTDOWN_TIMEOUT_SECONDS = 5.0
# Texts per outbox transaction: a burst of requests holds the event loop (and the calls it
# serves) for one such write at a time, a few milliseconds.
WRITE_BATCH_MAX = 200


class ApiHost(Protocol):
    """What the API needs of the daemon (aftercalld.daemon.Daemon)."""

    config: Config
    store: Store | None
    dispatcher: Dispatcher | None
    clock: Clock

    def status(self) -> dict[str, Any]: ...


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class OutboxRefused(Exception):
    """The outbox would not take a write (disk full, I/O error): the client tries again."""


def _json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body, default=str), status=status, headers=headers,
                        content_type="application/json")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return _json_response({"error": message}, status, headers)


class _GroupWriter:
    """Texts of the requests of one event-loop turn, queued in one outbox transaction: at
    a few thousand requests a second, a commit per request would be the bottleneck."""

    def __init__(self, host: ApiHost) -> None:
        self.host = host
        self._pending: list[tuple[str, RenderedMessage, asyncio.Future[tuple[int, bool]]]] = []
        self._writes: set[asyncio.Task] = set()  # PostgreSQL: writes under way

    @property
    def pending(self) -> int:
        return len(self._pending)

    def queue(self, call_key: str, message: RenderedMessage) -> asyncio.Future[tuple[int, bool]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[int, bool]] = loop.create_future()
        if not self._pending:
            loop.call_soon(self.flush)
        self._pending.append((call_key, message, future))
        return future

    def flush(self) -> None:
        batch, self._pending = self._pending[:WRITE_BATCH_MAX], self._pending[WRITE_BATCH_MAX:]
        if self._pending:  # a burst: the rest in the next turn, after the hangups waiting meanwhile
            asyncio.get_running_loop().call_soon(self.flush)
        if not batch:
            return
        store = self.host.store
        if store is None or isinstance(store, InlineOutbox):
            run_inline(self._write(store, batch))  # SQLite: written in this turn, as always
            return
        task = asyncio.create_task(self._write(store, batch), name="api write")
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def drain(self) -> None:
        """At a stop: everything queued so far written (or refused)."""
        while self._pending or self._writes:
            if self._pending:
                self.flush()
            if self._writes:
                await asyncio.gather(*self._writes, return_exceptions=True)

    async def _write(self, store: Store | None,
                     batch: list[tuple[str, RenderedMessage, asyncio.Future[tuple[int, bool]]]]) -> None:
        failure: BaseException
        try:
            if store is None:
                raise OutboxRefused("the outbox is closed (the daemon is stopping)")
            results = await store.queue_messages([(key, message) for key, message, _ in batch],
                                                 ttl_seconds=self.host.config.dispatch.ttl_seconds,
                                                 now=self.host.clock())
        except (OutboxRefused, sqlite3.Error, OutboxUnavailable) as exc:
            failure = exc if isinstance(exc, OutboxRefused) else OutboxRefused(f"the outbox refuses writes ({exc})")
            log.error("HTTP API: %d text(s) not queued, the clients were told to try again: %s", len(batch), failure)
        except Exception as exc:  # a bug: every request waiting on this batch must still be answered
            log.exception("HTTP API: %d text(s) not queued", len(batch))
            failure = exc
        else:
            for (_, _, future), result in zip(batch, results, strict=True):
                if not future.done():  # a client that went away: its text is queued all the same
                    future.set_result(result)
            if any(new for _, new in results) and self.host.dispatcher is not None:
                self.host.dispatcher.wake()
            return
        for _, _, future in batch:
            if not future.done():
                future.set_exception(failure)


class _Reader:
    """Read-only views on a connection of their own, in one worker thread, so that a large
    call or a rules test never holds up the event loop (and the hangups it serves)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="api-read")
        # Used in the worker thread only. PostgreSQL: its coroutines run on the thread's own
        # event loop (store/blocking.py), behind the same methods as SQLite's.
        self._outbox: Any = None

    async def run(self, view: Callable[[Outbox], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._in_thread, view)

    def _in_thread(self, view: Callable[[Outbox], T]) -> T:
        if self._outbox is None:
            if self.config.outbox_is_postgres:
                from ..store.blocking import open_configured
                self._outbox = open_configured(self.config.outbox_path, self.config.outbox_password_file,
                                               self.config.instance)
            else:
                self._outbox = Outbox.open_readonly(self.config.outbox_path)
        return view(self._outbox)

    async def close(self) -> None:
        def close() -> None:
            if self._outbox is not None:
                self._outbox.close()
                self._outbox = None

        await asyncio.get_running_loop().run_in_executor(self._pool, close)
        self._pool.shutdown(wait=True)


class ApiServer:
    def __init__(self, host: ApiHost) -> None:
        self.host = host
        api = self._api()
        self.app = web.Application(middlewares=[self._errors, self._authenticate],
                                   client_max_size=api.max_body_bytes)
        self.app.router.add_post("/v1/messages", self.post_message)
        self.app.router.add_get(r"/v1/messages/{id:\d+}", self.get_message)
        # A call key holds a "/" (<pbx>/<call id>): clients may write it as it is.
        self.app.router.add_post("/v1/calls/{call_id:.+}/test", self.test_call)
        self.app.router.add_get("/v1/calls/{call_id:.+}", self.get_call)
        self.app.router.add_get("/v1/status", self.get_status)
        self.app.router.add_get("/v1/openapi.json", self.get_openapi)
        # No access log: it would cost more than the request, and support follows a text
        # by its message id and rule ("api/<token name>") in the outbox.
        # At a stop, requests in progress get this long to finish (a rules test takes
        # milliseconds); then the daemon's own drain goes on.
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                                     shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS)
        self._server: asyncio.Server | None = None
        self._writer = _GroupWriter(host)
        self._reader = _Reader(host.config)
        self._digests: tuple[tuple[ApiToken, ...], list[tuple[str, bytes]]] = ((), [])

    def _api(self) -> ApiConfig:
        api = self.host.config.api
        assert api is not None  # the daemon starts the API only when [api] enables it
        return api

    # -- lifecycle ---------------------------------------------------------------------

    async def bind(self) -> None:
        """Listen; an address that cannot be had stops the start (OSError), as a bad
        config does."""
        if self._runner.server is None:
            await self._runner.setup()
        api = self._api()
        assert self._runner.server is not None
        try:
            self._server = await asyncio.get_running_loop().create_server(
                self._runner.server, api.host, api.port, reuse_address=True, backlog=1024)
        except OSError as exc:
            raise OSError(exc.errno, f"HTTP API: cannot listen on {api.listen} ([api] listen): "
                                     f"{exc.strerror or exc}") from None
        log.info("HTTP API listening on %s; %d token(s) from %s", api.listen, len(api.tokens), api.tokens_file)

    async def serve(self) -> None:
        """The supervised task: as long as it runs, the listener accepts. Restarted, it
        listens again."""
        if self._server is None:
            await self.bind()
        assert self._server is not None
        try:
            await self._server.serve_forever()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # stopped on purpose
            # The listener was closed under us: an error the supervisor logs and restarts
            # from, where a cancellation would end the task without a word.
            raise RuntimeError("the HTTP API's listener closed") from None
        finally:
            if self._server is not None:
                self._server.close()
            self._server = None

    async def close(self) -> None:
        """After serve() was cancelled: let requests in progress finish, write what they
        queued, close the reader."""
        if self._server is not None:
            self._server.close()
            self._server = None
        await self._runner.cleanup()
        await self._writer.drain()
        await self._reader.close()

    # -- middlewares ---------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return _error(exc.status, exc.message, exc.headers)
        except web.HTTPException as exc:  # aiohttp's own: no route, wrong method, body too large
            if exc.status < 400:
                raise
            headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate")}
            reason = exc.reason
            if exc.status == 413:
                reason = f"the body is over [api] max_body_bytes = {self._api().max_body_bytes}"
            return _error(exc.status, reason, headers)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("HTTP API: %s %s failed", request.method, escape_controls(request.path))
            return _error(500, "internal error; the daemon's log says more")

    @web.middleware
    async def _authenticate(self, request: web.Request,
                            handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if request.path == "/v1/openapi.json":
            return await handler(request)
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise ApiError(401, "missing bearer token: send Authorization: Bearer <token>",
                           {"WWW-Authenticate": _CHALLENGE})
        name = self._token_name(presented.strip())
        if name is None:
            log.info("HTTP API: %s %s refused: unknown token, from %s", request.method,
                     escape_controls(request.path), request.remote)
            raise ApiError(401, "unknown token",
                           {"WWW-Authenticate": f'{_CHALLENGE}, error="invalid_token"'})
        request[_TOKEN_NAME] = name
        return await handler(request)

    def _token_name(self, presented: str) -> str | None:
        """The name of the token presented, or None. Digests of equal length compared with
        compare_digest, and every token compared: the time taken tells nothing of how much
        of a token was right, nor which."""
        tokens = self._api().tokens
        if self._digests[0] is not tokens:  # first use, or a reload brought new tokens
            self._digests = (tokens, [(t.name, hashlib.sha256(t.token.encode()).digest()) for t in tokens])
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found = None
        for name, known in self._digests[1]:
            if hmac.compare_digest(digest, known):
                found = name
        return found

    # -- handlers ------------------------------------------------------------------------

    async def post_message(self, request: web.Request) -> web.Response:
        api = self._api()
        config = self.host.config
        name = request[_TOKEN_NAME]
        if request.content_type != "application/json":
            raise ApiError(415, "the body must be JSON (Content-Type: application/json)")
        data = _json_object(await request.read())
        unknown = sorted(set(data) - _REQUEST_FIELDS)
        if unknown:
            raise ApiError(422, f"unknown field(s): {', '.join(escape_controls(f) for f in unknown)} "
                                f"(expected: to, text, sender, call_id)")
        to = _string(data, "to", max_length=_MAX_NUMBER)
        text = _string(data, "text")
        sender = _string(data, "sender", required=False) or api.sender
        if sender is None:
            raise ApiError(422, "sender: missing, and [api] sender gives no default")
        problem = sender_problem(sender)
        if problem:
            raise ApiError(422, f"sender: {escape_controls(problem)}")
        call_id = _string(data, "call_id", required=False, max_length=_MAX_CALL_ID)
        idempotency = _idempotency_key(request)
        call_key = ""
        if call_id is not None:
            call_key = (await self._find_call(call_id, missing=422))["call_key"]
        key = f"api/{name}/{idempotency}"
        if call_key:
            # Under the call's key, so that `why` and the call's view list it, and the
            # call's pruning takes it along.
            key = f"{call_key}/{key}"
        message = render_adhoc(key, f"api/{name}", RecipientKind.FIXED, to, text, sender, config.render,
                               max_segments=api.max_segments)
        try:
            message_id, new = await self._writer.queue(call_key, message)
        except OutboxRefused as exc:
            raise ApiError(503, f"{exc}; try again with the same Idempotency-Key", {"Retry-After": "5"}) from None
        if new:
            if log.isEnabledFor(logging.INFO):  # one line per text, as the pipeline logs one per call
                log.info("HTTP API: %s queued message %d to %s%s", name, message_id,
                         escape_controls(message.destination or to),
                         f" (suppressed: {message.suppressed})" if message.suppressed else "",
                         extra=fields(call_id=call_key, rule=message.rule, recipient=message.destination))
            view = message_view(_written_row(message_id, call_key, message, self.host.clock(),
                                             config.dispatch.ttl_seconds), [], config.timezone)
        else:
            view = await self._message(message_id)
        return _json_response(view, 201 if new else 200, {"Location": f"/v1/messages/{message_id}"})

    async def get_message(self, request: web.Request) -> web.Response:
        return _json_response(await self._message(int(request.match_info["id"])))

    async def _message(self, message_id: int) -> dict[str, Any]:
        tz = self.host.config.timezone

        def view(outbox: Outbox) -> dict[str, Any] | None:
            row = outbox.messages_by_id([message_id]).get(message_id)
            if row is None:
                return None
            return message_view(row, outbox.parts([message_id]).get(message_id, []), tz)

        found = await self._read(view)
        if found is None:
            raise ApiError(404, f"no message {message_id}")
        return found

    async def get_call(self, request: web.Request) -> web.Response:
        config = self.host.config
        call = await self._find_call(request.match_info["call_id"])
        return _json_response(await self._read(lambda outbox: call_view(outbox, config, call)))

    async def test_call(self, request: web.Request) -> web.Response:
        from ..replay import replay_sync

        config = self.host.config
        call = await self._find_call(request.match_info["call_id"])
        try:
            record = CallRecord.from_dict(json.loads(call["record"]))
        except ValueError as exc:
            raise ApiError(422, f"call {escape_controls(call['call_key'])} was stored in a form this version "
                                f"cannot read again: {escape_controls(str(exc))}") from None
        # test-rule's path: rules, then policy at the time the call ended, into a throwaway
        # outbox and the log transport. Its own event loop, in a thread: none of it may
        # hold up the daemon's.
        (result,) = await asyncio.to_thread(functools.partial(replay_sync, [record], config, in_daemon=True))
        return _json_response(result.to_json())

    async def get_status(self, request: web.Request) -> web.Response:
        return _json_response(self.host.status())

    async def get_openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=_OPENAPI_BODY, content_type="application/json")

    # -- helpers -------------------------------------------------------------------------

    async def _read(self, view: Callable[[Outbox], T]) -> T:
        try:
            return await self._reader.run(view)
        except (sqlite3.Error, StoreError) as exc:
            log.error("HTTP API: cannot read the outbox: %s", exc)
            raise ApiError(503, "cannot read the outbox now; try again later", {"Retry-After": "5"}) from None

    async def _find_call(self, call_id: str, *, missing: int = 404) -> dict[str, Any]:
        """A call by <pbx>/<call id>, or by the bare call id when only one PBX has it.
        `missing`: the status when there is none (422 when the body named it)."""
        calls = await self._read(lambda outbox: outbox.calls(call_key=call_id, limit=10))
        exact = [c for c in calls if c["call_key"] == call_id]
        if exact:
            return exact[0]
        if not calls:
            raise ApiError(missing, f"no call {escape_controls(repr(call_id))}")
        if len(calls) > 1:
            raise ApiError(409, f"call id {escape_controls(repr(call_id))} is on several PBXs "
                                f"({', '.join(escape_controls(c['call_key']) for c in calls)}): give <pbx>/<call id>")
        return calls[0]


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    return data


def _string(data: dict[str, Any], field: str, *, required: bool = True, max_length: int | None = None) -> Any:
    value = data.get(field)
    if value is None:
        if required:
            raise ApiError(422, f"{field}: missing (required)")
        return None
    if not isinstance(value, str):
        raise ApiError(422, f"{field}: must be a string")
    if max_length is not None and len(value) > max_length:
        raise ApiError(422, f"{field}: longer than {max_length} characters")
    return value


def _idempotency_key(request: web.Request) -> str:
    value = request.headers.get("Idempotency-Key")
    if value is None:
        return uuid.uuid4().hex  # every request a new text, as without any key
    if not 0 < len(value) <= _MAX_IDEMPOTENCY_KEY or not all("!" <= c <= "~" for c in value):
        raise ApiError(400, f"Idempotency-Key: 1-{_MAX_IDEMPOTENCY_KEY} visible ASCII characters, no spaces")
    return value


def _written_row(message_id: int, call_key: str, m: RenderedMessage, now: float, ttl: float) -> dict[str, Any]:
    """The row queue_messages has just written, as Outbox.messages would read it back: the
    answer to a new text costs no read."""
    return {
        "id": message_id, "key": m.key, "call_key": call_key, "rule": m.rule, "recipient_kind": m.kind.value,
        "raw_number": m.raw_number, "destination": m.destination, "sender": m.sender, "text": m.text,
        "encoding": m.encoding.value, "segments": m.segments,
        "state": MessageState.SUPPRESSED if m.suppressed else MessageState.QUEUED, "reason": m.suppressed,
        "attempts": 0, "next_attempt_at": None if m.suppressed else now, "expires_at": now + ttl,
        "created_at": now, "updated_at": now, "submitted_at": None, "final_at": now if m.suppressed else None,
    }

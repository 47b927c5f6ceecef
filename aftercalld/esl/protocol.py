"""FreeSWITCH event socket (inbound mode) on asyncio streams: framing, auth, commands, events.

This module knows the wire protocol and nothing about calls. python-ESL is not used: it does
not build with SWIG 4 and its blocking socket would stall the event loop.

Wire shape (mod_event_socket): a message is a block of ``Name: value`` lines ended by a blank
line; if the block has ``Content-Length`` that many body bytes follow. The server opens with
``auth/request``; commands (``auth``, ``event``, ``filter``) are answered in order with
``command/reply``, ``api`` with ``api/response``; events come as ``text/event-plain`` (body:
URL-encoded ``Name: value`` lines) or ``text/event-json``; ``text/disconnect-notice`` says the
server is about to close.
"""
from __future__ import annotations

import asyncio
import codecs
import collections
import json
import logging
import re
from collections.abc import Callable, ItemsView, Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

log = logging.getLogger("aftercalld.esl.protocol")

# mod_event_socket bodies are small (a CHANNEL_HANGUP_COMPLETE is 5-15 KiB); a bigger declared
# length means a corrupt stream, and trusting it would swallow everything that follows.
MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024

# FreeSWITCH's JSON events are flat (a few arrays of strings at most). Deeper nesting is
# junk, and deep enough it makes json.loads raise RecursionError.
MAX_JSON_DEPTH = 32
EXCERPT_BYTES = 80  # of a bad event, in its log line (escaped)

Event = Mapping[str, str]  # a dict (json) or a PlainEvent


class EslError(Exception):
    """The connection cannot go on (the source reconnects)."""


class AuthError(EslError):
    """The server said ``-ERR invalid`` to our password."""


class AccessDenied(EslError):
    """``text/rude-rejection``: the server's ACL does not admit our address."""


class ProtocolError(EslError):
    """The byte stream is not ESL (or no longer in step)."""


class ConnectionLost(EslError):
    """The server closed the connection or it broke."""


@dataclass(slots=True)
class Message:
    headers: dict[str, str]
    body: bytes = b""

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")

    @property
    def reply_text(self) -> str:
        return self.headers.get("Reply-Text", "")

    @property
    def ok(self) -> bool:
        text = self.reply_text if self.content_type == "command/reply" else self.body.decode("utf-8", "replace")
        return text.startswith("+OK")


def parse_header_block(block: bytes) -> dict[str, str] | None:
    """Outer headers of one message; None if the block is not ESL at all."""
    headers: dict[str, str] = {}
    for line in block.decode("utf-8", "replace").split("\n"):
        if not line:
            continue
        name, sep, value = line.partition(": ")
        if not sep:
            # FreeSWITCH never sends a header line without ": "; a block that has one is the
            # tail of a message we lost step with.
            return None
        headers[name] = value.rstrip("\r")
    return headers


async def read_message(reader: asyncio.StreamReader) -> Message | None:
    """Read one framed message. Returns None for a block that is not ESL (caller skips it and
    the stream usually falls back in step at the next blank line). Raises ConnectionLost at
    EOF, ProtocolError for an impossible length."""
    while True:
        try:
            block = await reader.readuntil(b"\n\n")
        except asyncio.IncompleteReadError as exc:
            raise ConnectionLost("connection closed" + (" mid-message" if exc.partial.strip() else "")) from None
        except asyncio.LimitOverrunError:
            raise ProtocolError(f"header block longer than {MAX_HEADER_BYTES} bytes") from None
        except (ConnectionError, OSError) as exc:
            raise ConnectionLost(f"connection broke: {exc}") from None
        if block.strip():
            break  # stray blank lines between messages are harmless
    headers = parse_header_block(block[:-2])
    if headers is None or "Content-Type" not in headers and "Content-Length" not in headers:
        log.warning("ESL: skipped %d bytes that are not an ESL message (stream out of step?)", len(block))
        return None
    length_text = headers.get("Content-Length")
    body = b""
    if length_text is not None:
        try:
            length = int(length_text)
        except ValueError:
            raise ProtocolError(f"Content-Length is not a number: {length_text[:40]!r}") from None
        if length < 0 or length > MAX_BODY_BYTES:
            raise ProtocolError(f"Content-Length {length} out of range (max {MAX_BODY_BYTES})")
        try:
            body = await reader.readexactly(length)
        except asyncio.IncompleteReadError as exc:
            raise ConnectionLost(f"connection closed after {len(exc.partial)} of {length} body bytes") from None
        except (ConnectionError, OSError) as exc:
            raise ConnectionLost(f"connection broke: {exc}") from None
    return Message(headers, body)


class MalformedEvent(ValueError):
    pass


def _percent_decode(data: bytes) -> bytes:
    """URL-decode in C: turn every %XX into \\xXX (after escaping real backslashes) and let
    codecs.escape_decode resolve them; urllib's unquote is a Python loop per escape."""
    try:
        return codecs.escape_decode(data.replace(b"\\", b"\\\\").replace(b"%", b"\\x"))[0]
    except ValueError:  # a "%" not followed by two hex digits: decode the slow, lenient way
        return unquote_to_bytes(data)


_KEYS: dict[str, bytes] = {}  # header name -> the bytes that start its line


class PlainEvent(Mapping[str, str]):
    """A ``text/event-plain`` event, decoded on demand.

    A CHANNEL_HANGUP_COMPLETE has ~250 headers and the tracker reads a few dozen of them;
    most events it reads only for their name. Splitting every line into Python objects up
    front was most of the client's CPU time, so a lookup is a ``bytes.find`` for the
    header line in the raw block and only that value is URL-decoded. The first header
    wins if FreeSWITCH repeats one (it only repeats codec details)."""

    __slots__ = ("_raw", "_body", "_all")

    def __init__(self, head: bytes, body: str | None = None) -> None:
        self._raw = b"\n" + head + b"\n"
        self._body = body
        self._all: dict[str, str] | None = None

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        # The hot path of the whole client (~15 lookups per event): kept flat.
        key = _KEYS.get(name)
        if key is None:
            if name == "_body":
                return default if self._body is None else self._body
            if not isinstance(name, str):
                return default
            key = b"\n" + name.encode("utf-8", "replace") + b": "
            if len(_KEYS) < 4096:  # header names are a small fixed set; junk must not grow it
                _KEYS[name] = key
        raw = self._raw
        i = raw.find(key)
        if i < 0:
            return default
        i += len(key)
        value = raw[i:raw.index(b"\n", i)]
        if b"%" in value:
            value = _percent_decode(value)
        return value.decode("utf-8", "replace")

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            # A header name that is not valid UTF-8 is iterated under its decoded form,
            # which the byte lookup above cannot find again.
            everything = self._everything()
            if name in everything:
                return everything[name]
            raise KeyError(name)
        return value

    def items(self) -> ItemsView[str, str]:
        return self._everything().items()

    def __bool__(self) -> bool:
        return True  # never empty (it has Event-Name); without this, `ev or {}` would parse it all

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def _everything(self) -> dict[str, str]:
        if self._all is None:
            out: dict[str, str] = {}
            for line in self._raw.split(b"\n"):
                name, found, value = line.partition(b": ")
                if found:
                    key = name.decode("utf-8", "replace")
                    if key not in out:
                        out[key] = (_percent_decode(value) if b"%" in value else value).decode("utf-8", "replace")
            if self._body is not None:
                out["_body"] = self._body
            self._all = out
        return self._all

    def __iter__(self) -> Iterator[str]:
        return iter(self._everything())

    def __len__(self) -> int:
        return len(self._everything())

    def __repr__(self) -> str:
        return f"PlainEvent({self._everything()!r})"


def parse_plain_event(body: bytes) -> PlainEvent:
    """``text/event-plain`` body -> a mapping of URL-decoded values. An event body of its
    own (BACKGROUND_JOB, api events) is under ``_body`` like in FreeSWITCH's JSON form."""
    head, sep, rest = body.partition(b"\n\n")
    head = head.strip(b"\n")
    event = PlainEvent(head)
    if not head.startswith(b"Event-Name: ") and b"\nEvent-Name: " not in head:
        raise MalformedEvent("no Event-Name")
    # Only an event with a body of its own has an inner Content-Length (and then bytes after
    # the blank line); not looking for it in the others saves a scan of every event.
    inner = event.get("Content-Length") if rest else None
    if inner is not None:
        try:
            want = int(inner)
        except ValueError:
            raise MalformedEvent(f"event Content-Length not a number: {inner[:40]!r}") from None
        if want < 0 or len(rest) < want:
            raise MalformedEvent(f"event body cut short ({len(rest)} of {want} bytes)")
        event._body = rest[:want].decode("utf-8", "replace")
    elif not sep:
        # A plain event always ends with a blank line; without it the outer Content-Length
        # was shorter than the event and the last headers are missing.
        raise MalformedEvent("event cut short (no closing blank line)")
    elif rest.strip():
        log.warning("ESL: %d bytes after a plain event ignored (Content-Length larger than the event)", len(rest))
    return event


_SURROGATE = re.compile("[\ud800-\udfff]")
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def clean_text(value: str) -> str:
    """A string from the wire, safe to encode: JSON's ``\\ud800`` escapes (and raw
    surrogate bytes, which json.loads lets through) give unpaired surrogates, on which
    every later UTF-8 encode fails — SQLite, a log handler, the SMS itself. Replaced by
    U+FFFD here at the edge. (A valid pair is one character by now.)"""
    if value.isascii():
        return value
    return _SURROGATE.sub("\ufffd", value)


def too_deep(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether JSON text nests deeper than `limit`, found without recursion: keep only the
    brackets outside strings and peel innermost pairs, at least one level a round."""
    if body.count(b"{") + body.count(b"[") <= limit:
        return False
    skeleton = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    for _ in range(limit):
        peeled = skeleton.replace(b"{}", b"").replace(b"[]", b"")
        if not peeled:
            return False
        if peeled == skeleton:
            return False  # unbalanced: json.loads says what is wrong
        skeleton = peeled
    return True


def _scalar(value: object) -> str | None:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, (bool, int, float)):
        return str(value)
    return None


def parse_json_event(body: bytes) -> Event:
    if too_deep(body):
        raise MalformedEvent(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedEvent(f"not JSON: {exc}") from None
    except RecursionError:  # too_deep() should have caught it; never let it kill the reader
        raise MalformedEvent("JSON nested too deep") from None
    if not isinstance(data, dict):
        raise MalformedEvent("JSON event is not an object")
    event: dict[str, str] = {}
    for name, value in data.items():
        if isinstance(value, list):
            # FreeSWITCH turns a repeated header into an array; the first is what plain shows first.
            text = _scalar(value[0]) if value else ""
        else:
            text = _scalar(value)
        if text is not None:
            event[clean_text(name)] = text
    if "Event-Name" not in event:
        raise MalformedEvent("no Event-Name")
    return event


EVENT_PARSERS: dict[str, Callable[[bytes], Event]] = {
    "text/event-plain": parse_plain_event,
    "text/event-json": parse_json_event,
}


class EslConnection:
    """One inbound event-socket connection.

    A reader task frames every message: replies resolve the oldest pending command (the
    server answers in order), events go to ``on_event`` synchronously (it must not block),
    a disconnect notice or EOF ends ``wait_closed()`` with the reason.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 on_event: Callable[[Event], None]) -> None:
        self._reader = reader
        self._writer = writer
        self._on_event = on_event
        self._pending: collections.deque[asyncio.Future[Message]] = collections.deque()
        self._closed: asyncio.Future[EslError] = asyncio.get_running_loop().create_future()
        self._auth_request: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task: asyncio.Task[None] | None = None
        self.events_received = 0
        self.events_malformed = 0
        self.disconnect_notice = ""

    @classmethod
    async def open(cls, host: str, port: int, on_event: Callable[[Event], None], *,
                   timeout: float = 5.0) -> EslConnection:
        """Connect and wait for ``auth/request``."""
        # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that
        # races with completion, and then shutdown would hang in a live session.
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(host, port, limit=MAX_HEADER_BYTES)
        except TimeoutError:
            raise ConnectionLost(f"connect to {host}:{port} timed out after {timeout:g}s") from None
        except OSError as exc:
            raise ConnectionLost(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
        conn = cls(reader, writer, on_event)
        conn._task = asyncio.create_task(conn._read_loop(), name=f"esl-reader-{host}:{port}")
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(conn._auth_request)
        except TimeoutError:
            await conn.close()
            raise ProtocolError(
                f"no auth/request from {host}:{port} within {timeout:g}s (not an event socket?)") from None
        except BaseException:
            await conn.close()
            raise
        return conn

    async def auth(self, password: str, timeout: float = 5.0) -> None:
        reply = await self.command(f"auth {password}", timeout)
        if not reply.ok:
            # The server hangs up after a bad password; never echo what we sent.
            raise AuthError(f"password rejected ({reply.reply_text or 'no reply text'})")

    async def command(self, line: str, timeout: float = 5.0) -> Message:
        """Send one command line and await its reply (command/reply or api/response)."""
        if "\n" in line or "\r" in line:
            raise ValueError("ESL command must be one line")
        if self._closed.done():
            raise self._closed.result()
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending.append(fut)
        try:
            self._writer.write(line.encode("utf-8") + b"\n\n")
            async with asyncio.timeout(timeout):
                await self._writer.drain()
                return await asyncio.shield(fut)
        except TimeoutError:
            verb = line.split(" ", 1)[0]
            raise ProtocolError(f"no reply to {verb!r} within {timeout:g}s") from None
        except (ConnectionError, OSError) as exc:
            raise ConnectionLost(f"connection broke: {exc}") from None

    async def api(self, command: str, timeout: float = 5.0) -> str:
        reply = await self.command(f"api {command}", timeout)
        return reply.body.decode("utf-8", "replace")

    async def wait_closed(self) -> EslError:
        """Wait until the connection ends; returns why."""
        return await asyncio.shield(self._closed)

    async def close(self) -> None:
        self._finish(ConnectionLost("closed by us"))
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        self._writer.close()
        try:
            async with asyncio.timeout(1.0):
                await self._writer.wait_closed()
        except (TimeoutError, OSError, ConnectionError):
            pass

    def _finish(self, reason: EslError) -> None:
        if not self._closed.done():
            self._closed.set_result(reason)
        if not self._auth_request.done():
            self._auth_request.set_exception(reason)
            self._auth_request.exception()  # mark retrieved: open() may already have given up
        while self._pending:
            fut = self._pending.popleft()
            if not fut.done():
                fut.set_exception(reason)
                fut.exception()

    async def _read_loop(self) -> None:
        reader = self._reader
        try:
            while True:
                msg = await read_message(reader)
                if msg is None:
                    continue
                ctype = msg.headers.get("Content-Type", "")
                parser = EVENT_PARSERS.get(ctype)
                if parser is not None:
                    self._handle_event(parser, msg.body)
                elif ctype in ("command/reply", "api/response"):
                    if self._pending:
                        fut = self._pending.popleft()
                        if not fut.done():
                            fut.set_result(msg)
                    else:
                        log.debug("ESL: unsolicited %s ignored", ctype)
                elif ctype == "auth/request":
                    if not self._auth_request.done():
                        self._auth_request.set_result(None)
                elif ctype == "text/disconnect-notice":
                    # The server closes right after; remember what it said for the log.
                    lines = msg.body.decode("utf-8", "replace").strip().splitlines()
                    self.disconnect_notice = lines[0] if lines else "disconnect notice"
                elif ctype == "text/rude-rejection":
                    text = msg.body.decode("utf-8", "replace").strip()
                    raise AccessDenied(f"refused by the server's ACL ({text or 'rude-rejection'}); "
                                       "check apply-inbound-acl in event_socket.conf.xml")
                else:
                    log.debug("ESL: message of type %r ignored", ctype)
        except EslError as exc:
            if isinstance(exc, ConnectionLost) and self.disconnect_notice:
                exc = ConnectionLost(f"server disconnected: {self.disconnect_notice}")
            self._finish(exc)
        except asyncio.CancelledError:
            self._finish(ConnectionLost("closed by us"))
            raise
        except Exception as exc:  # a bug in on_event must not leave run() waiting forever
            log.exception("ESL: reader stopped by an unexpected error")
            self._finish(ProtocolError(f"unexpected error: {exc!r}"))

    def _handle_event(self, parser: Callable[[bytes], Event], body: bytes) -> None:
        try:
            event = parser(body)
        except MalformedEvent as exc:
            self.events_malformed += 1
            # repr(): escaped, so that what a peer sent cannot forge or colour a log line.
            log.warning("ESL: malformed event skipped: %s (%d bytes, starting %r)", str(exc)[:200],
                        len(body), body[:EXCERPT_BYTES])
            return
        self.events_received += 1
        self._on_event(event)

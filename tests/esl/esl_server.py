"""A small mod_event_socket (inbound mode) for tests: real TCP on 127.0.0.1.

It speaks what FreeSWITCH 1.10 speaks to an ESL client: ``auth/request`` on connect,
``+OK accepted`` / ``-ERR invalid`` to ``auth``, ``command/reply`` to ``event`` / ``filter`` /
``exit``, ``api/response`` with a Content-Length body to ``api``, events with Content-Length
bodies, ``text/disconnect-notice`` before it closes, ``text/rude-rejection`` for a refused
address. It reads traces on its own (it is a peer, not a user of aftercalld's code) and can
replay their recorded bytes exactly as FreeSWITCH sent them.
"""
from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from urllib.parse import quote

from testdata import FREESWITCH_TRACES

DISCONNECT_BODY = b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
TRACES = FREESWITCH_TRACES

_RECORD = re.compile(rb"^#@ \S+ \S+ seq=\d+ len=(\d+)")


def trace_records(path: Path) -> list[bytes]:
    """The raw messages of an aftercalld-esl-trace/1 file, byte for byte."""
    data = path.read_bytes()
    out, pos = [], 0
    while pos < len(data):
        end = data.index(b"\n", pos)
        m = _RECORD.match(data[pos:end])
        if m:
            n = int(m.group(1))
            out.append(data[end + 1:end + 1 + n])
            pos = end + 1 + n + 1
        else:
            pos = end + 1
    return out


def trace_events(path: Path) -> list[bytes]:
    """Only the event messages (what a subscribed client receives after its replies)."""
    return [r for r in trace_records(path) if b"Content-Type: text/event-" in r.split(b"\n\n", 1)[0]]


def frame(headers: dict[str, str], body: bytes = b"") -> bytes:
    head = "".join(f"{k}: {v}\n" for k, v in headers.items())
    if body:
        head = f"Content-Length: {len(body)}\n" + head
    return head.encode() + b"\n" + body


def plain_event(event: dict[str, str]) -> bytes:
    body = "".join(f"{k}: {quote(str(v), safe='')}\n" for k, v in event.items()).encode() + b"\n"
    return frame({"Content-Type": "text/event-plain"}, body)


def json_event(event: dict[str, str]) -> bytes:
    return frame({"Content-Type": "text/event-json"}, json.dumps(event).encode())


class Session:
    def __init__(self, server: EslServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.format = ""
        self.subscription = ""
        self.filters: list[str] = []
        self.commands: list[str] = []
        self.subscribed = asyncio.Event()
        self.closed = asyncio.Event()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send_event(self, event: dict[str, str]) -> None:
        await self.send(json_event(event) if self.format == "json" else plain_event(event))

    async def disconnect(self, notice: bool = True) -> None:
        if notice:
            try:
                await self.send(frame({"Content-Type": "text/disconnect-notice"}, DISCONNECT_BODY))
            except ConnectionError:
                pass
        self.writer.close()
        self.closed.set()

    def reply(self, text: str) -> bytes:
        return frame({"Content-Type": "command/reply", "Reply-Text": text})

    async def serve(self) -> None:
        try:
            if self.server.reject:
                await self.send(frame({"Content-Type": "text/rude-rejection"}, b"Access Denied, go away.\n"))
                await self.disconnect(notice=False)
                return
            await self.send(frame({"Content-Type": "auth/request"}))
            authed = False
            while True:
                try:
                    block = await self.reader.readuntil(b"\n\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                line = block.decode().strip()
                self.commands.append(line)
                verb, _, rest = line.partition(" ")
                if not authed:
                    if verb == "auth" and rest == self.server.password:
                        authed = True
                        await self.send(self.reply("+OK accepted"))
                    elif verb == "auth":
                        self.server.auth_failures += 1
                        await self.send(self.reply("-ERR invalid"))
                        await self.disconnect()
                        break
                    else:
                        await self.send(self.reply("-ERR command not found"))
                    continue
                if verb == "event":
                    fmt, _, names = rest.partition(" ")
                    if fmt not in ("plain", "json", "xml"):
                        await self.send(self.reply("-ERR invalid format"))
                        continue
                    self.format, self.subscription = fmt, names
                    await self.send(self.reply(f"+OK event listener enabled {fmt}"))
                    self.subscribed.set()
                elif verb == "filter":
                    header, _, value = rest.partition(" ")
                    self.filters.append(rest)
                    await self.send(self.reply(f"+OK filter added. [{header}]=[{value}]"))
                elif verb == "api":
                    body = self.server.api_replies.get(rest, "-ERR " + rest.split(" ")[0] + " Command not found!\n")
                    await self.send(frame({"Content-Type": "api/response"}, body.encode()))
                elif verb == "exit":
                    await self.send(self.reply("+OK bye"))
                    await self.disconnect()
                    break
                else:
                    await self.send(self.reply("-ERR command not found"))
        except ConnectionError:
            pass
        finally:
            self.closed.set()
            self.writer.close()


class EslServer:
    def __init__(self, password: str = "ClueCon", *, port: int = 0) -> None:
        self.password = password
        self.port = port
        self.reject = False  # answer with text/rude-rejection (ACL)
        self.auth_failures = 0
        self.api_replies = {"status": "UP 0 years, 0 days\nFreeSWITCH (Version 1.10.12) is ready\n"}
        self.sessions: list[Session] = []
        self._server: asyncio.AbstractServer | None = None
        self._new_session = asyncio.Condition()

    async def start(self) -> EslServer:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Close the listener and every session (FreeSWITCH going down)."""
        if self._server is not None:
            self._server.close()
            for session in self.sessions:
                if not session.closed.is_set():
                    await session.disconnect()
            await self._server.wait_closed()
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = Session(self, reader, writer)
        async with self._new_session:
            self.sessions.append(session)
            self._new_session.notify_all()
        try:
            await session.serve()
        except asyncio.CancelledError:
            pass  # torn down with the test's event loop

    async def session(self, n: int, timeout: float = 10.0) -> Session:
        """Wait for connection number `n` (0-based) to have subscribed to events."""
        async def wait() -> Session:
            async with self._new_session:
                await self._new_session.wait_for(lambda: len(self.sessions) > n)
                session = self.sessions[n]
            await session.subscribed.wait()
            return session
        return await asyncio.wait_for(wait(), timeout)

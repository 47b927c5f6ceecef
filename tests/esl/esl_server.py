"""A small mod_event_socket (inbound mode) for tests: real TCP on 127.0.0.1.

It speaks what FreeSWITCH 1.10 speaks to an ESL client: ``auth/request`` on connect,
``+OK accepted`` / ``-ERR invalid`` to ``auth``, ``command/reply`` to ``event`` / ``filter`` /
``exit``, ``api/response`` with a Content-Length body to ``api``, events with Content-Length
bodies, ``text/disconnect-notice`` before it closes, ``text/rude-rejection`` for a refused
address. It reads traces on its own (it is a peer, not a user of aftercalld's code) and can
replay their recorded bytes exactly as FreeSWITCH sent them.

It follows the live channels of the events it sent (or, with `advance`, of events the PBX
had while no client listened) and answers ``api show channels as json`` from them in
FreeSWITCH's shape: ``{"row_count": N, "rows": [{"uuid", "direction", "created",
"created_epoch", "name", "state", "cid_name", "cid_num", "dest", "application",
"context", "callstate", "call_uuid", ...}]}``, or ``{"row_count": 0}`` when there is none.
Given a `cdr` path it writes those calls' A legs there as ``mod_cdr_csv`` does (`esl_cdr.py`).
"""
from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from urllib.parse import quote, unquote

from esl_cdr import FsCdrCsv
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
        self.server.advance([data])
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
                    if rest == "show channels as json" and rest not in self.server.api_replies:
                        body = self.server.show_channels()
                    elif rest == "global_getvar core_uuid" and rest not in self.server.api_replies:
                        body = self.server.core_uuid  # empty, as for a variable not set, unless given
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
    def __init__(self, password: str = "ClueCon", *, port: int = 0, cdr: Path | None = None) -> None:
        self.password = password
        self.port = port
        self.reject = False  # answer with text/rude-rejection (ACL)
        self.auth_failures = 0
        self.api_replies = {"status": "UP 0 years, 0 days\nFreeSWITCH (Version 1.10.12) is ready\n"}
        self.sessions: list[Session] = []
        self.channels: dict[str, dict[str, str]] = {}  # Unique-ID -> its `show channels` row
        self.cdr = FsCdrCsv(cdr) if cdr is not None else None
        # What `api global_getvar core_uuid` answers: the Core-UUID of the events a test sends.
        self.core_uuid = ""
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

    def advance(self, frames: list[bytes]) -> None:
        """FreeSWITCH lives through these event frames: its channels change."""
        for data in frames:
            head, _, body = data.partition(b"\n\n")
            if b"text/event-json" in head:
                try:
                    event = json.loads(body)
                except (ValueError, RecursionError):  # hostile tests send such events on purpose
                    continue
                if not isinstance(event, dict):
                    continue
            elif b"text/event-plain" in head:
                event = {}
                for line in body.decode(errors="replace").split("\n"):
                    key, sep, value = line.partition(": ")
                    if sep:
                        event.setdefault(key, unquote(value))
            else:
                continue
            self._apply(event)

    def _apply(self, ev: dict[str, str]) -> None:
        if self.cdr is not None:
            self.cdr.apply(ev)
        name, uuid = ev.get("Event-Name"), ev.get("Unique-ID", "")
        if not uuid:
            return
        if name in ("CHANNEL_HANGUP_COMPLETE", "CHANNEL_DESTROY"):
            self.channels.pop(uuid, None)
            return
        if name == "CHANNEL_UUID" and ev.get("Old-Unique-ID") in self.channels:
            self.channels[uuid] = dict(self.channels.pop(ev["Old-Unique-ID"]), uuid=uuid)
        row = self.channels.get(uuid)
        if name == "CHANNEL_CREATE" and row is None:
            created = int(ev.get("Caller-Channel-Created-Time", "0") or 0) // 1_000_000
            row = self.channels[uuid] = {
                "uuid": uuid, "direction": ev.get("Call-Direction", ""), "created": "", "created_epoch": str(created),
                "name": ev.get("Channel-Name", ""), "state": ev.get("Channel-State", ""),
                "cid_name": ev.get("Caller-Caller-ID-Name", ""), "cid_num": ev.get("Caller-Caller-ID-Number", ""),
                "ip_addr": ev.get("Caller-Network-Addr", ""), "dest": ev.get("Caller-Destination-Number", ""),
                "application": "", "application_data": "", "dialplan": ev.get("Caller-Dialplan", ""),
                "context": ev.get("Caller-Context", ""), "read_codec": "", "read_rate": "", "read_bit_rate": "",
                "write_codec": "", "write_rate": "", "write_bit_rate": "", "secure": "", "hostname": "",
                "presence_id": "", "presence_data": "", "accountcode": "", "callstate": "DOWN",
                "callee_name": "", "callee_num": "", "callee_direction": "", "call_uuid": "",
                "sent_callee_name": "", "sent_callee_num": "", "initial_cid_name": "", "initial_cid_num": "",
                "initial_ip_addr": "", "initial_dest": "", "initial_dialplan": "", "initial_context": ""}
            parent = ev.get("variable_originator") or ev.get("Other-Leg-Unique-ID") or ""
            row["call_uuid"] = parent
        if row is None:
            return
        row["state"] = ev.get("Channel-State", row["state"])
        if name == "CHANNEL_ANSWER":
            row["callstate"] = "ACTIVE"
        elif name == "CHANNEL_BRIDGE":
            row["callstate"] = "ACTIVE"
            row["call_uuid"] = row["call_uuid"] or ev.get("Other-Leg-Unique-ID", "")

    def show_channels(self) -> str:
        rows = list(self.channels.values())
        return json.dumps({"row_count": len(rows), "rows": rows} if rows else {"row_count": 0})

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

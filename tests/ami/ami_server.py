"""A small Asterisk Manager Interface peer for tests and the benchmark.

Speaks the real protocol over TCP on 127.0.0.1: banner, ``Login`` (success, or
``Authentication failed`` and close, as Asterisk does), ``Ping``/``Pong``, ``Logoff``; sends
``FullyBooted`` with an ``Uptime`` after login; replays raw event bytes (traces) to logged-in
clients; can be stopped and restarted on the same port (a new boot), cut the stream, or stop
answering pings (a dead link). As a hostile peer it can greet the next connections with junk
instead of the banner (`greetings`), or accept their login and then send junk and hang up
(`after_login`).

It also keeps the live channel state of what it replayed (`send`, or `advance` for events the
PBX had while no client listened) and answers ``CoreStatus``, ``CoreShowChannels`` and
``BridgeList`` from it in the exact shape a real Asterisk 22.10.1 does
(tests/data/traces/asterisk-actions/answers.jsonl); actions named in `refused` get
Asterisk's ``Permission denied`` (an AMI user without ``write = reporting``).

Given a `cdr` path it writes the calls it lives through to that file as ``cdr_csv``'s
``Master.csv`` (`ami_cdr.py`), the rows a daemon's CDR backfill reads.
"""
from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

from ami_cdr import CdrCsv

from aftercalld.ami.protocol import AmiParser

BANNER = b"Asterisk Call Manager/11.0.0\r\n"


class AmiServer:
    def __init__(self, username: str = "aftercalld", secret: str = "test", *, live_state: bool = True,
                 cdr: Path | None = None) -> None:
        self.username = username
        self.secret = secret
        self.host = "127.0.0.1"
        self.port = 0
        self.answer_pings = True
        self.boot_time = time.time() - 3600.0
        self.login_attempts: list[tuple[float, str, bool]] = []  # (time, username, accepted)
        self.pings = 0
        self.actions: list[dict[str, str]] = []
        self.connections = 0
        # One entry per coming connection: bytes sent instead of the banner, then hang up.
        self.greetings: list[bytes] = []
        # One entry per coming login: bytes sent after the login reply, then hang up.
        self.after_login: list[bytes] = []
        # Following the channels costs a parse of every event sent: the benchmark's server,
        # whose speed must not limit the daemon's, plays a PBX that is never asked for them.
        self.live_state = live_state
        self.refused: set[str] = set()  # lower-case action names answered "Permission denied"
        self.channels: dict[str, dict[str, str]] = {}  # Uniqueid -> CoreShowChannel fields
        self._created: dict[str, float] = {}  # Uniqueid -> when the channel appeared
        self._state_parser = AmiParser()
        self.cdr = CdrCsv(cdr) if cdr is not None else None
        self._server: asyncio.base_events.Server | None = None
        self._clients: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task] = set()
        self._changed = asyncio.Condition()

    # -------------------------------------------------------------- lifecycle

    async def start(self) -> AmiServer:
        self._server = await asyncio.start_server(self._client, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.drop_clients()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def restart(self) -> None:
        """Asterisk restart: every connection drops, the next login sees a fresh uptime."""
        await self.stop()
        self.boot_time = time.time()
        self.channels.clear()  # the restart hung every channel up
        if self.cdr is not None:
            self.cdr.cut_all()
        await self.start()

    def drop_clients(self) -> None:
        """Cut every connection at once (TCP reset), wherever the stream is."""
        for writer in self._clients:
            writer.transport.abort()
        self._clients.clear()

    async def close_clients(self) -> None:
        """Close every connection after what was sent has gone out (a link drop that loses
        no event: the PBX keeps what happens next for the next connection)."""
        for writer in self._clients:
            writer.close()
        for writer in list(self._clients):
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass
        self._clients.clear()

    @property
    def ok_logins(self) -> int:
        return sum(1 for _, _, ok in self.login_attempts if ok)

    @property
    def clients(self) -> int:
        return len(self._clients)

    async def wait_until(self, predicate, timeout: float = 10.0) -> None:
        async def waiter():
            async with self._changed:
                await self._changed.wait_for(predicate)
        await asyncio.wait_for(waiter(), timeout)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -------------------------------------------------------------- streaming

    def advance(self, data: bytes) -> None:
        """The PBX lives through these events (its channel state changes) but no client
        hears them: what happens while the link is down or the daemon is away."""
        if not self.live_state:
            return
        for ev in self._state_parser.feed(data):
            self._apply(ev)

    def _apply(self, ev: dict[str, str]) -> None:
        if self.cdr is not None:
            self.cdr.apply(ev)
        name, uid = ev.get("Event"), ev.get("Uniqueid", "")
        if not uid or name is None:
            return
        if name == "Hangup":
            self.channels.pop(uid, None)
            return
        row = self.channels.get(uid)
        if name == "Newchannel":
            row = self.channels[uid] = {
                key: ev.get(key, "") for key in (
                    "Channel", "ChannelState", "ChannelStateDesc", "CallerIDNum", "CallerIDName",
                    "ConnectedLineNum", "ConnectedLineName", "Language", "AccountCode", "Context", "Exten",
                    "Priority", "Uniqueid", "Linkedid")}
            row.update(Application="", ApplicationData="", BridgeId="")
            self._created[uid] = time.time()
        if row is None:
            return
        for key in ("Linkedid", "ChannelState", "ChannelStateDesc", "CallerIDNum", "CallerIDName",
                    "ConnectedLineNum", "ConnectedLineName", "AccountCode", "Context", "Exten", "Priority"):
            if key in ev and (name != "Newexten" or key not in ("CallerIDNum", "CallerIDName")):
                row[key] = ev[key]
        if name == "Newexten":
            row["Application"], row["ApplicationData"] = ev.get("Application", ""), ev.get("AppData", "")
        elif name == "BridgeEnter":
            row["BridgeId"] = ev.get("BridgeUniqueid", "")
        elif name == "BridgeLeave":
            row["BridgeId"] = ""

    def _list(self, head: str) -> str:
        now = time.time()
        out = [f"Response: Success\r\n{head}EventList: start\r\nMessage: Channels will follow\r\n\r\n"]
        for uid, row in self.channels.items():
            age = int(now - self._created.get(uid, now))
            fields = dict(row, Duration=f"{age // 3600:02d}:{age // 60 % 60:02d}:{age % 60:02d}")
            body = "".join(f"{key}: {fields[key]}\r\n" for key in (
                "Channel", "ChannelState", "ChannelStateDesc", "CallerIDNum", "CallerIDName", "ConnectedLineNum",
                "ConnectedLineName", "Language", "AccountCode", "Context", "Exten", "Priority", "Uniqueid",
                "Linkedid", "Application", "ApplicationData", "Duration", "BridgeId"))
            out.append(f"Event: CoreShowChannel\r\n{head}{body}\r\n")
        out.append(f"Event: CoreShowChannelsComplete\r\n{head}EventList: Complete\r\n"
                   f"ListItems: {len(self.channels)}\r\n\r\n")
        return "".join(out)

    def _bridges(self, head: str) -> str:
        members: dict[str, int] = {}
        for row in self.channels.values():
            if row["BridgeId"]:
                members[row["BridgeId"]] = members.get(row["BridgeId"], 0) + 1
        out = [f"Response: Success\r\n{head}EventList: start\r\nMessage: Bridge listing will follow\r\n\r\n"]
        for bid, count in members.items():
            out.append(f"Event: BridgeListItem\r\n{head}BridgeUniqueid: {bid}\r\nBridgeType: basic\r\n"
                       f"BridgeTechnology: simple_bridge\r\nBridgeCreator: <unknown>\r\nBridgeName: <unknown>\r\n"
                       f"BridgeNumChannels: {count}\r\nBridgeVideoSourceMode: none\r\n\r\n")
        out.append(f"Event: BridgeListComplete\r\n{head}EventList: Complete\r\nListItems: {len(members)}\r\n\r\n")
        return "".join(out)

    def _core_status(self, head: str) -> str:
        boot = datetime.fromtimestamp(int(self.boot_time), UTC)
        return (f"Response: Success\r\n{head}CoreStartupDate: {boot:%Y-%m-%d}\r\nCoreStartupTime: {boot:%H:%M:%S}\r\n"
                f"CoreReloadDate: {boot:%Y-%m-%d}\r\nCoreReloadTime: {boot:%H:%M:%S}\r\n"
                f"CoreCurrentCalls: {len(self.channels)}\r\nCoreProcessedCalls: {len(self._created)}\r\n\r\n")

    async def send(self, data: bytes, chunk: int = 0) -> None:
        """Send raw bytes to every logged-in client (in ``chunk``-sized writes if given)."""
        self.advance(data)
        for writer in list(self._clients):
            if chunk:
                for i in range(0, len(data), chunk):
                    writer.write(data[i:i + chunk])
                    await writer.drain()
            else:
                writer.write(data)
                await writer.drain()

    # -------------------------------------------------------------- protocol

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            pass
        finally:
            self._tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        await self._notify()
        if self.greetings:
            writer.write(self.greetings.pop(0))
            await writer.drain()
            writer.close()
            return
        writer.write(BANNER)
        parser = AmiParser()
        authed = False
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                for action in parser.feed(data):
                    self.actions.append(action)
                    name = action.get("Action", "").lower()
                    aid = action.get("ActionID", "")
                    head = f"ActionID: {aid}\r\n" if aid else ""
                    if name == "login":
                        ok = (action.get("Username") == self.username
                              and action.get("Secret") == self.secret)
                        self.login_attempts.append((time.monotonic(), action.get("Username", ""), ok))
                        if not ok:
                            writer.write(f"Response: Error\r\n{head}Message: Authentication failed\r\n\r\n".encode())
                            await writer.drain()
                            writer.close()
                            await self._notify()
                            return
                        authed = True
                        uptime = int(time.time() - self.boot_time)
                        writer.write(
                            f"Response: Success\r\n{head}Message: Authentication accepted\r\n\r\n"
                            f"Event: FullyBooted\r\nPrivilege: system,all\r\nUptime: {uptime}\r\n"
                            f"LastReload: {uptime}\r\nStatus: Fully Booted\r\n\r\n".encode())
                        await writer.drain()
                        if self.after_login:
                            writer.write(self.after_login.pop(0))
                            await writer.drain()
                            writer.close()
                            await self._notify()
                            return
                        self._clients.append(writer)
                        await self._notify()
                    elif not authed:
                        writer.write(f"Response: Error\r\n{head}Message: Authentication Required\r\n\r\n".encode())
                    elif name == "ping":
                        self.pings += 1
                        if self.answer_pings:
                            writer.write(f"Response: Success\r\n{head}Ping: Pong\r\n"
                                         f"Timestamp: {time.time():.6f}\r\n\r\n".encode())
                        await self._notify()
                    elif name in self.refused:
                        writer.write(f"Response: Error\r\n{head}Message: Permission denied\r\n\r\n".encode())
                    elif name == "corestatus":
                        writer.write(self._core_status(head).encode())
                    elif name == "coreshowchannels":
                        writer.write(self._list(head).encode())
                    elif name == "bridgelist":
                        writer.write(self._bridges(head).encode())
                    elif name == "logoff":
                        writer.write(f"Response: Goodbye\r\n{head}Message: Thanks for all the fish.\r\n\r\n".encode())
                        await writer.drain()
                        writer.close()
                        return
                    else:
                        writer.write(f"Response: Error\r\n{head}Message: Invalid/unknown command\r\n\r\n".encode())
        except (ConnectionError, OSError):
            pass
        finally:
            if writer in self._clients:
                self._clients.remove(writer)
            if not writer.transport.is_closing():
                writer.transport.abort()
            await self._notify()

"""A small Asterisk Manager Interface peer for tests and the benchmark.

Speaks the real protocol over TCP on 127.0.0.1: banner, ``Login`` (success, or
``Authentication failed`` and close, as Asterisk does), ``Ping``/``Pong``, ``Logoff``; sends
``FullyBooted`` with an ``Uptime`` after login; replays raw event bytes (traces) to logged-in
clients; can be stopped and restarted on the same port (a new boot), cut the stream, or stop
answering pings (a dead link). As a hostile peer it can greet the next connections with junk
instead of the banner (`greetings`), or accept their login and then send junk and hang up
(`after_login`).
"""
from __future__ import annotations

import asyncio
import time

from aftercalld.ami.protocol import AmiParser

BANNER = b"Asterisk Call Manager/11.0.0\r\n"


class AmiServer:
    def __init__(self, username: str = "aftercalld", secret: str = "test") -> None:
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
        await self.start()

    def drop_clients(self) -> None:
        """Cut every connection at once (TCP reset), wherever the stream is."""
        for writer in self._clients:
            writer.transport.abort()
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

    async def send(self, data: bytes, chunk: int = 0) -> None:
        """Send raw bytes to every logged-in client (in ``chunk``-sized writes if given)."""
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

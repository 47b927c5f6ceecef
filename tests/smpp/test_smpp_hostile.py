"""An SMSC that misbehaves after (or at) the bind, over real sockets: the transport backs
off instead of re-binding in a storm, and logs each kind of trouble once."""
from __future__ import annotations

import asyncio
import logging
import struct

import pytest
from smpp_util import Events, settings

from aftercalld.smpp import make_transport

HEADER = struct.Struct(">IIII")


class HostileSmsc:
    """Answers every bind with `bind_status`; after a successful one sends `after_bind`
    (then hangs up if `hang_up`). Nothing else: this is no SMSC, only the trouble."""

    def __init__(self, *, bind_status: int = 0, after_bind: bytes = b"", hang_up: bool = False) -> None:
        self.bind_status = bind_status
        self.after_bind = after_bind
        self.hang_up = hang_up
        self.binds: list[float] = []
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._changed = asyncio.Event()

    async def start(self) -> HostileSmsc:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()

    async def wait_binds(self, n: int, timeout: float = 10.0) -> None:
        async def wait() -> None:
            while len(self.binds) < n:
                self._changed.clear()
                await self._changed.wait()
        await asyncio.wait_for(wait(), timeout)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                length, command, _, seq = HEADER.unpack(await reader.readexactly(16))
                await reader.readexactly(length - 16)
                if command in (1, 2, 9):  # bind_receiver/transmitter/transceiver
                    self.binds.append(asyncio.get_running_loop().time())
                    self._changed.set()
                    body = b"HOSTILE\x00" if self.bind_status == 0 else b""
                    writer.write(HEADER.pack(16 + len(body), command | 0x80000000, self.bind_status, seq) + body)
                    if self.bind_status == 0 and self.after_bind:
                        await writer.drain()
                        await asyncio.sleep(0.02)  # the junk comes after the bind, not with it
                        writer.write(self.after_bind)
                        if self.hang_up:
                            await writer.drain()
                            writer.close()
                            return
                elif command == 6:  # unbind
                    writer.write(HEADER.pack(16, 0x80000006, 0, seq))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def hostile():
    servers: list[HostileSmsc] = []

    async def make(**kw) -> HostileSmsc:
        servers.append(await HostileSmsc(**kw).start())
        return servers[-1]
    yield make
    for s in servers:
        await s.stop()


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:], strict=False)]


async def test_a_4gb_command_length_after_the_bind_is_logged_and_backed_off(hostile, caplog):
    caplog.set_level(logging.DEBUG)
    smsc = await hostile(after_bind=HEADER.pack(0xFFFFFFFF, 0x00000005, 0, 1))
    t = make_transport(settings(smsc.port, reconnect_min=0.05, reconnect_max=0.4))
    await t.start(Events())
    try:
        await smsc.wait_binds(6)
        between = gaps(smsc.binds)
        # 0.05 s doubling to 0.4 s, up to half off for jitter; the storm re-bound every 25 ms or less
        assert between[3] >= 0.1 and between[3] > between[0], between
        garbage = [r.getMessage() for r in caplog.records if "garbage" in r.getMessage()]
        assert "command_length 4294967295 is impossible" in garbage[0]
        lost = [r for r in caplog.records if "lost" in r.getMessage() and r.levelno >= logging.WARNING]
        assert len(lost) <= 2, [r.getMessage() for r in lost]
        bound = [r for r in caplog.records if "bound to" in r.getMessage() and r.levelno >= logging.INFO]
        assert len(bound) == 1
    finally:
        await t.close()


async def test_a_refused_bind_is_an_error_once_not_on_every_retry(hostile, caplog):
    caplog.set_level(logging.DEBUG)
    smsc = await hostile(bind_status=0x0D)  # ESME_RBINDFAIL
    t = make_transport(settings(smsc.port, reconnect_min=0.01, reconnect_max=0.05, connect_timeout=0.3,
                                response_timeout=0.3))
    await t.start(Events())
    try:
        await smsc.wait_binds(6)
        refused = [r for r in caplog.records if "refused" in r.getMessage()]
        assert len(refused) >= 5
        assert [r.levelno for r in refused].count(logging.ERROR) == 1
    finally:
        await t.close()

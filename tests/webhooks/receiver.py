"""A webhook receiver for the tests and the bench: an aiohttp server on 127.0.0.1 that
checks each request's signature as the README tells receivers to, and records what came."""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from aftercalld.webhooks.signing import HEADER, verify


@dataclass
class Received:
    event: dict[str, Any]
    headers: dict[str, str]
    signed: bool
    status: int = 0
    at: float = field(default_factory=time.perf_counter)


class Receiver:
    def __init__(self, secret: bytes, *, answers: list[int] | None = None, default: int = 200,
                 clock: Callable[[], float] = time.time, answer_delay: float = 0.0) -> None:
        """`answers`: the HTTP statuses to give, in order, before `default` for the rest.
        `answer_delay`: seconds between taking an event and answering (posts stay in flight)."""
        self.secret = secret
        self.answer_delay = answer_delay
        self.answers = list(answers or [])
        self.default = default
        self.clock = clock
        self.received: list[Received] = []  # every request, whatever was answered
        self.bad_signatures = 0
        self.port = 0
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None

    async def start(self, port: int = 0) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        signed = verify(self.secret, request.headers.get(HEADER, ""), body, self.clock())
        if not signed:
            self.bad_signatures += 1
        if not signed:
            status = 401
        else:
            status = self.answers.pop(0) if self.answers else self.default
        self.received.append(Received(json.loads(body), dict(request.headers), signed, status))
        self._changed.set()
        if self.answer_delay:
            await asyncio.sleep(self.answer_delay)
        return web.Response(status=status, text="ok" if status < 300 else "no")

    def accepted(self) -> list[dict[str, Any]]:
        """Events answered 2xx with a good signature, in arrival order (duplicates kept)."""
        return [r.event for r in self.received if 200 <= r.status < 300]

    def events(self, event_type: str | None = None) -> list[dict[str, Any]]:
        return [r.event for r in self.received if event_type is None or r.event["type"] == event_type]

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        async def wait() -> None:
            while not predicate():
                self._changed.clear()
                await self._changed.wait()
        await asyncio.wait_for(wait(), timeout)

"""`aftercalld run` as a child process for the service tests, with its log lines awaitable."""
from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path


class Daemon:
    """`aftercalld run` as a child process, with its log lines awaitable."""

    def __init__(self, config: Path, env: dict[str, str] | None = None, *, inject: str = "") -> None:
        """`inject`: Python run in the daemon's process before `aftercalld run`, to plant a
        fault that no outside input can cause (a bug)."""
        self.config = config
        self.inject = inject
        self.env = {**os.environ, **(env or {})}
        self.lines: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._new_line = asyncio.Event()
        self._reader: asyncio.Task | None = None

    async def start(self) -> Daemon:
        if self.inject:
            program = (f"{self.inject}\nimport sys\nfrom aftercalld.cli import main\n"
                       f"sys.exit(main(['run', '-c', {str(self.config)!r}]))")
            argv = [sys.executable, "-c", program]
        else:
            argv = [sys.executable, "-m", "aftercalld.cli", "run", "-c", str(self.config)]
        self.proc = await asyncio.create_subprocess_exec(*argv, stderr=asyncio.subprocess.PIPE, env=self.env)
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc and self.proc.stderr
        async for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace"))
            self._new_line.set()
        self._new_line.set()

    async def wait_for_line(self, text: str, count: int = 1, timeout: float = 20.0) -> None:
        async def waiter():
            while sum(text in line for line in self.lines) < count:
                if self.proc.returncode is not None and self._reader.done():
                    raise AssertionError(f"daemon exited waiting for {text!r}:\n{self.log}")
                self._new_line.clear()
                await self._new_line.wait()
        try:
            await asyncio.wait_for(waiter(), timeout)
        except TimeoutError:
            raise AssertionError(f"no {text!r} within {timeout}s:\n{self.log}") from None

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 30.0) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await self._reader
        # A store call left un-awaited does nothing and says so only as this warning.
        assert "was never awaited" not in self.log, self.log
        return code

    @property
    def log(self) -> str:
        return "".join(self.lines)

    async def kill(self) -> None:
        if self.proc and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

"""The PostgreSQL outbox for the command line's synchronous commands (status, why, report,
optout, dnd, prune, send-test): each coroutine of `PgOutbox` run to its end on a private
event loop, so that those commands read either outbox through the same methods."""
from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Coroutine
from typing import Any, TypeVar

from .postgres import PgOutbox

T = TypeVar("T")


class BlockingOutbox:
    def __init__(self, store: PgOutbox, runner: asyncio.Runner) -> None:
        self.store = store
        self._runner = runner
        self.path = store.path  # without the password

    @classmethod
    def open(cls, dsn: str, *, instance: str) -> BlockingOutbox:
        runner = asyncio.Runner()
        try:
            store = runner.run(PgOutbox.open(dsn, instance=instance))
        except BaseException:
            runner.close()
            raise
        return cls(store, runner)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Any coroutine on this outbox's loop (where its connection lives)."""
        return self._runner.run(coro)

    def __getattr__(self, name: str) -> Any:
        member = getattr(self.store, name)
        if not inspect.iscoroutinefunction(member):
            return member

        @functools.wraps(member)
        def blocking(*args: Any, **kwargs: Any) -> Any:
            return self._runner.run(member(*args, **kwargs))
        return blocking

    def close(self) -> None:
        try:
            self._runner.run(self.store.close())
        finally:
            self._runner.close()



def open_configured(outbox: str, password_file: str, instance: str) -> BlockingOutbox:
    """The PostgreSQL outbox `[general] outbox` names, password from `password_file` if any."""
    from .location import with_password_file
    from .types import StoreError

    try:
        dsn = with_password_file(outbox, password_file)
    except OSError as exc:
        raise StoreError(f"cannot read [general] outbox_password_file: {exc.strerror}") from None
    return BlockingOutbox.open(dsn, instance=instance)

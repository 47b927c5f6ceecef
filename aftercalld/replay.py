"""Recorded calls through the whole pipeline, for `replay`, `demo` and `test-rule`.

A trace is read by the tracker of its protocol (`.ami` Asterisk, `.esl` FreeSWITCH) or is
already CallRecords (`.json` / `.jsonl`: one JSON object per line). The messages go to a
throwaway outbox and the `log` transport, so a replay never texts anybody.
"""
from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .clock import Clock, system_clock
from .config import Config
from .dispatcher import Dispatcher
from .logtransport import LogTransport
from .model import CallRecord
from .pbxconfig import PbxConfig, default_pbx
from .pipeline import CallHandler, Decision
from .policy import Policy
from .rules.render import call_key
from .store import Outbox, StoreError, as_store

log = logging.getLogger(__name__)

TRACE_TYPES = {".ami": "asterisk", ".esl": "freeswitch"}


class TraceError(Exception):
    pass


def trace_type(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in TRACE_TYPES:
        return TRACE_TYPES[suffix]
    if suffix in (".json", ".jsonl", ".ndjson"):
        return "json"
    raise TraceError(f"{path}: unknown trace type {suffix!r} (expected .ami, .esl, .json or .jsonl)")


def read_calls(path: str | Path, config: Config, pbx_name: str | None = None) -> Iterator[CallRecord]:
    kind = trace_type(path)
    if not Path(path).is_file():
        raise TraceError(f"{path}: no such file")
    if kind == "json":
        yield from _read_json_calls(Path(path))
        return
    pbx = _pbx_for(kind, config, pbx_name)
    module = importlib.import_module("aftercalld.ami" if kind == "asterisk" else "aftercalld.esl")
    yield from module.iter_trace_calls(path, pbx)


def _pbx_for(kind: str, config: Config, pbx_name: str | None) -> PbxConfig:
    for pbx in config.pbxs:
        if (pbx_name is None or pbx.name == pbx_name) and pbx.type == kind:
            return pbx
    if pbx_name is not None:
        raise TraceError(f"no [[pbx]] named {pbx_name!r} of type {kind} in {config.file}")
    return default_pbx(kind, name="replay", timezone=config.timezone.key)


def _read_json_calls(path: Path) -> Iterator[CallRecord]:
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TraceError(f"{path}: not JSON: {exc.msg} at line {exc.lineno}") from None
        if not isinstance(items, list):
            raise TraceError(f"{path}: a JSON array of calls was expected")
        numbered = list(enumerate(items, start=1))
    else:
        numbered = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                numbered.append((n, json.loads(line)))
            except json.JSONDecodeError as exc:
                log.warning("%s:%d: skipped: not JSON: %s", path, n, exc.msg)
    for number, item in numbered:
        # replay's own --format json/jsonl output carries the call under "call".
        if isinstance(item, dict) and isinstance(item.get("call"), dict):
            item = item["call"]
        try:
            if not isinstance(item, dict):
                raise ValueError("a call is a JSON object")
            yield CallRecord.from_dict(item)
        except ValueError as exc:
            log.warning("%s:%d: skipped: %s", path, number, exc)


def call_from_json(text: str) -> CallRecord:
    """One call for test-rule: a CallRecord object, or one call of replay's own output
    (an object with the record under "call", or an array holding one such object)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if isinstance(data, list):
        if len(data) != 1:
            raise ValueError(f"an array of {len(data)} calls; test-rule takes one (replay takes many)")
        data = data[0]
    if isinstance(data, dict) and isinstance(data.get("call"), dict):
        data = data["call"]
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    return CallRecord.from_dict(data)


@dataclass
class ReplayResult:
    decision: Decision
    messages: list[dict[str, Any]]  # rows from the outbox after dispatch

    def to_json(self) -> dict[str, Any]:
        sel = self.decision.selection
        return {
            "call": self.decision.record.to_dict(),
            "rule": sel.rule.name if sel.rule else None,
            "reason": sel.reason if sel.rule else _why_none(sel),
            "duplicate": self.decision.duplicate,
            "messages": [
                {
                    "recipient": m["recipient_kind"],
                    "number": m["destination"] or m["raw_number"],
                    "sender": m["sender"],
                    "text": m["text"],
                    "encoding": m["encoding"],
                    "segments": m["segments"],
                    "state": m["state"],
                    "reason": m["reason"],
                }
                for m in self.messages
            ],
        }


def _why_none(selection) -> str:
    if not selection.skipped:
        return "no rules configured"
    return "no rule matched: " + "; ".join(f"{name}: {why}" for name, why in selection.skipped)


class CallTime:
    """The replay's clock: when the call being replayed ended. Quiet hours, quotas, cooldowns
    and time-to-live are then judged as the daemon would have judged them at that moment,
    whatever the day the replay runs. Before the first call, and for a call with no times,
    the fallback clock."""

    def __init__(self, fallback: Clock) -> None:
        self.fallback = fallback
        self.now: float | None = None

    def __call__(self) -> float:
        return self.now if self.now is not None else self.fallback()

    def at(self, record: CallRecord) -> None:
        when = record.end_time or record.start_time
        self.now = when.timestamp() if when is not None else self.fallback()


async def copy_lists(config: Config, into: Outbox, now: float) -> int:
    """The daemon's opt-out and DND lists, read from its outbox without changing it, so a
    replay holds back what the daemon would. No outbox yet (or none reachable): no lists."""
    try:
        if config.outbox_is_postgres:
            from .daemon import open_store
            real = await open_store(config)
        else:
            real = as_store(Outbox.open_readonly(config.outbox_path))
    except StoreError:
        return 0
    try:
        optout = [number for number, _, _ in await real.optout_list()]
        dnd = [entry for entry, _, _ in await real.dnd_list()]
    finally:
        await real.close()
    into.optout_add(optout, "copied from the daemon's outbox", now)
    into.dnd_add(dnd, "copied from the daemon's outbox", now)
    return len(optout) + len(dnd)


@contextlib.contextmanager
def _results_printed_not_logged() -> Iterator[None]:
    """The replay prints every message's outcome; the dispatcher's own warnings about them
    (a suppression, a hold) would say it twice on stderr. -v still shows them."""
    dispatcher_log = logging.getLogger("aftercalld.dispatcher")
    if dispatcher_log.getEffectiveLevel() < logging.WARNING:
        yield
        return
    before = dispatcher_log.level
    dispatcher_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        dispatcher_log.setLevel(before)


class _NotFromThisThread(logging.Filter):
    """Drops what one thread logs below ERROR; other threads' records pass."""

    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread != self.thread or record.levelno >= logging.ERROR


@contextlib.contextmanager
def _silenced_in_this_thread() -> Iterator[None]:
    """For a replay inside the running daemon (the HTTP API's rules test, in a thread of its
    own): its call decision, dry-run sends and state changes would read in the daemon's log
    as a real call handled again. The daemon's own lines, from its own thread, still pass."""
    quiet = _NotFromThisThread()
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)


async def replay(records: list[CallRecord] | Iterator[CallRecord], config: Config,
                 outbox_path: str | None = None, clock: Clock = system_clock, *,
                 in_daemon: bool = False) -> list[ReplayResult]:
    """Each call through rules, outbox, policy and dispatch in turn, at the time it ended.
    `in_daemon`: run in a thread of the running daemon, which must not log any of it."""
    quiet = _silenced_in_this_thread() if in_daemon else _results_printed_not_logged()
    with tempfile.TemporaryDirectory(prefix="aftercalld-replay-") as tmp, quiet:
        outbox = Outbox.open(outbox_path or str(Path(tmp) / "outbox.sqlite3"))
        try:
            call_time = CallTime(clock)
            await copy_lists(config, outbox, clock())
            policy = Policy(config.policy, outbox, config.timezone)
            dispatcher = Dispatcher(outbox, LogTransport(), config.dispatch, optout=config.optout,
                                    default_region=config.phone.default_region, policy=policy, clock=call_time)
            handler = CallHandler(config, outbox, on_queued=dispatcher.wake, clock=call_time)
            await dispatcher.start()
            decisions: list[Decision] = []
            for record in records:
                call_time.at(record)
                handler_decision = handler.decide(record, explain=True)
                stored = handler.handle(record)
                decisions.append(Decision(stored.record, handler_decision.selection, stored.messages, stored.duplicate))
                await dispatcher.wait_idle()
            await dispatcher.stop()
            return [
                ReplayResult(d, outbox.messages(call_key=call_key(d.record))) for d in decisions
            ]
        finally:
            outbox.close()


def replay_sync(records, config: Config, outbox_path: str | None = None, *,
                in_daemon: bool = False) -> list[ReplayResult]:
    return asyncio.run(replay(records, config, outbox_path, in_daemon=in_daemon))

"""Replay of recorded event-socket streams (``aftercalld-esl-trace/1`` files, plain or json).

A trace is the byte stream a connection received, cut into records::

    #@ 2026-11-30T04:38:41.474099Z 1796013521.474099 seq=1 len=28
    <exactly len bytes: headers, blank line, Content-Length body>
    <one "\\n">

Other lines starting with ``#`` are metadata. A file of raw ESL bytes (no ``#@`` records) is
also accepted: it is framed by Content-Length like a live connection.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

from ..model import CallRecord
from ..pbxconfig import PbxConfig
from .protocol import EVENT_PARSERS, MalformedEvent, Message, parse_header_block
from .tracker import EslTracker

log = logging.getLogger("aftercalld.esl.trace")

_RECORD = re.compile(rb"^#@ \S+ (?P<epoch>\d+(?:\.\d+)?) seq=\d+ len=(?P<len>\d+)\s*$")


class TraceError(ValueError):
    pass


def _split_message(raw: bytes) -> Message | None:
    head, _, body = raw.partition(b"\n\n")
    headers = parse_header_block(head)
    if headers is None:
        return None
    length = headers.get("Content-Length")
    if length is not None and length.isdigit():
        body = body[: int(length)]
    return Message(headers, body)


def iter_trace_messages(path: str | Path) -> Iterator[tuple[float | None, Message]]:
    """(recorded epoch or None, message) for every message in the file, in order."""
    data = Path(path).read_bytes()
    pos, size = 0, len(data)
    while pos < size:
        end = data.find(b"\n", pos)
        if end < 0:
            end = size
        line = data[pos:end]
        if line.startswith(b"#@"):
            m = _RECORD.match(line)
            if m is None:
                raise TraceError(f"{path}: malformed record line at byte {pos}: {line[:80]!r}")
            length = int(m.group("len"))
            start = end + 1
            raw = data[start:start + length]
            if len(raw) < length:
                log.warning("%s: last record cut short (%d of %d bytes); ignored", path, len(raw), length)
                return
            pos = start + length + 1  # the "\n" after each record is not part of it
            msg = _split_message(raw)
            if msg is not None:
                yield float(m.group("epoch")), msg
            continue
        if line.startswith(b"#") or not line.strip():
            pos = end + 1
            continue
        # Raw ESL stream: header block up to a blank line, then Content-Length bytes.
        head_end = data.find(b"\n\n", pos)
        if head_end < 0:
            log.warning("%s: trailing %d bytes without a blank line ignored", path, size - pos)
            return
        headers = parse_header_block(data[pos:head_end])
        pos = head_end + 2
        if headers is None:
            log.warning("%s: skipped a block that is not an ESL message", path)
            continue
        body = b""
        content_length = headers.get("Content-Length")
        if content_length is not None:
            if not (content_length.isascii() and content_length.isdigit()):
                raise TraceError(f"{path}: bad Content-Length {content_length!r}")
            body = data[pos:pos + int(content_length)]
            pos += int(content_length)
        yield None, Message(headers, body)


def iter_trace_events(path: str | Path) -> Iterator[tuple[float | None, dict[str, str]]]:
    """Decoded events (plain and json give the same dicts); malformed ones are logged and skipped."""
    for when, msg in iter_trace_messages(path):
        parser = EVENT_PARSERS.get(msg.content_type)
        if parser is None:
            continue
        try:
            yield when, dict(parser(msg.body))  # the tracker takes plain dicts
        except MalformedEvent as exc:
            log.warning("%s: malformed event skipped: %s", path, exc)


def _event_time(event: dict[str, str], recorded: float | None, last: float) -> float:
    if recorded is not None:
        return recorded
    stamp = event.get("Event-Date-Timestamp", "")
    if stamp.isdigit():
        return int(stamp) / 1_000_000
    return last


def iter_trace_calls(path: str | Path, pbx: PbxConfig) -> Iterator[CallRecord]:
    """Replay a trace through the live tracker; yields finished calls in the order they ended.
    A call still open at the end of the file is logged as a warning and not yielded.
    Tracker settings (direction variable, contexts) come from ``pbx.settings`` if it is an
    EslSettings, else the defaults."""
    tracker = EslTracker(pbx)
    now = 0.0
    for recorded, event in iter_trace_events(path):
        now = _event_time(event, recorded, now)
        yield from tracker.feed(event, now)
    for dropped in tracker.unfinished(now):
        log.warning("%s: call with channel(s) %s never ended in the trace; not reported",
                    path, ", ".join(dropped.uuids))

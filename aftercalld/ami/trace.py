"""Recorded AMI streams (``*.ami``, see ``shared/traces/asterisk/README.md``) from disk.

Format: CRLF lines; lines starting with ``#`` are comments, except ``# ts=<epoch> +<rel>``
which gives the receive time of the message that follows; messages are ``Key: Value`` lines
ended by an empty line, byte-exact as Asterisk sent them.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from os import PathLike

from ..model import CallRecord
from ..pbxconfig import PbxConfig
from .protocol import parse_block
from .tracker import CallTracker

log = logging.getLogger("aftercalld.ami.trace")


def read_trace_bytes(raw: bytes) -> Iterator[tuple[float, dict[str, str]]]:
    """(epoch seconds, message) for every message of a trace. A message without its own
    ``# ts=`` line gets the previous one's time; a trace without any uses 0."""
    ts = 0.0
    lines: list[bytes] = []
    for line in raw.split(b"\n"):
        line = line.rstrip(b"\r")
        if line.startswith(b"#"):
            if line.startswith(b"# ts="):
                try:
                    ts = float(line[5:].split(None, 1)[0])
                except (ValueError, IndexError):
                    log.debug("bad ts line in trace: %r", line[:60])
            continue
        if line:
            lines.append(line)
        elif lines:
            msg = parse_block(b"\r\n".join(lines))
            lines = []
            if msg:
                yield ts, msg
    if lines:
        msg = parse_block(b"\r\n".join(lines))
        if msg:
            yield ts, msg


def read_trace(path: str | PathLike[str]) -> Iterator[tuple[float, dict[str, str]]]:
    with open(path, "rb") as fh:
        raw = fh.read()
    yield from read_trace_bytes(raw)


def stream_bytes(raw: bytes) -> bytes:
    """The byte-exact AMI event stream of a trace: every ``#`` line dropped."""
    return b"\r\n".join(line for line in raw.split(b"\r\n") if not line.startswith(b"#"))


def iter_trace_calls(path: str | PathLike[str], pbx: PbxConfig) -> Iterator[CallRecord]:
    """Replay a trace through the same tracker as the live source, using the ``# ts=``
    times as event times; yields finished calls in the order they ended. Calls still open
    at the end of the file are reported with a warning, not yielded."""
    tracker = CallTracker(pbx)
    for ts, msg in read_trace(path):
        if "Event" in msg:
            yield from tracker.feed(msg, ts)
    tracker.flush(f"end of trace {path}")

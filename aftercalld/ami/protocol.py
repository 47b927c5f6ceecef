"""AMI wire framing: bytes in, plain ``dict[str, str]`` messages out; actions out as bytes.

Why not panoramisk's ``AMIProtocol``/``Manager`` (pinned 1.4):

* it decodes every TCP chunk on its own with ``errors='ignore'``, so a multi-byte UTF-8
  character (a caller name such as "Zoë") split across two reads silently loses bytes; we
  buffer bytes and decode one complete message at a time;
* its reconnect is a fixed 2 s with no backoff and its ping cannot be tied to "dead link";
* it dispatches every event through ``ensure_future`` without keeping a reference and with
  no backpressure, and builds a case-insensitive ``Message`` per event -- too slow for the
  hot path (most AMI volume is VarSet/Newexten that the tracker throws away).

The framing is small (messages are ``Key: Value`` lines ended by an empty line), so owning
it costs ~100 lines and lets the tracker run synchronously on each parsed message.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping

TERMINATOR = b"\r\n\r\n"
# A message larger than this without a terminator is garbage (a real AMI event is < 4 KiB);
# dropping it keeps memory bounded when a peer sends junk.
MAX_MESSAGE_BYTES = 256 * 1024


def parse_block(block: bytes) -> dict[str, str]:
    """One message (without its terminating empty line) into a dict.

    Lines are split on the first ``": "`` only (values may contain ``": "``); ``Key:`` with
    nothing after it is an empty value. Lines that are not ``Key: Value`` are dropped. A key
    repeated within one message keeps one of its values: Asterisk does not repeat the keys
    the tracker reads, and one shape keeps the hot path simple.
    """
    text = block.decode("utf-8", "replace")
    try:
        # Fast path (every well-formed Asterisk message): ~25 % cheaper than the loop.
        return dict([line.split(": ", 1) for line in text.split("\r\n")])
    except ValueError:
        pass
    out: dict[str, str] = {}
    for line in text.split("\r\n"):
        key, sep, value = line.partition(": ")
        if not sep:
            if line.endswith(":"):
                key, value = line[:-1], ""
            else:
                continue
        if key and key not in out:
            out[key] = value
    return out


class AmiParser:
    """Incremental framer: ``feed(bytes)`` returns the complete messages received so far.

    ``events`` (event names) and ``variables`` (VarSet variable names, leading ``_``
    ignored) make it drop uninteresting events before decoding them: CEL, device state,
    and the VarSet/Newexten flood are most of an AMI stream, and parsing is the dominant
    cost per event. Responses are always parsed. Never raises on bad input; junk yields
    dicts without ``Event``/``Response`` that callers skip.
    """

    __slots__ = ("_buf", "dropped_bytes", "skipped", "_events", "_variables")

    def __init__(self, events: Iterable[str] | None = None,
                 variables: Iterable[str] | None = None) -> None:
        self._buf = b""
        self.dropped_bytes = 0
        self.skipped = 0  # events filtered out before parsing
        self._events = frozenset(e.encode() for e in events) if events is not None else None
        self._variables = (frozenset(v.lstrip("_").encode() for v in variables)
                           if variables is not None else None)

    def feed(self, data: bytes) -> list[dict[str, str]]:
        buf = self._buf + data if self._buf else data
        parts = buf.split(TERMINATOR)
        self._buf = parts.pop()
        if len(self._buf) > MAX_MESSAGE_BYTES:
            self.dropped_bytes += len(self._buf)
            self._buf = b""
        out = []
        events = self._events
        for block in parts:
            if block[:2] == b"\r\n":
                # Tolerate stray CRLFs between messages (seen after some responses).
                block = block.lstrip(b"\r\n")
                if not block:
                    continue
            if events is not None and block[:7] == b"Event: ":
                end = block.find(b"\r\n")
                name = block[7:end] if end > 0 else block[7:]
                if name not in events or (name == b"VarSet" and not self._wanted_var(block)):
                    self.skipped += 1
                    continue
            msg = parse_block(block)
            if msg:
                out.append(msg)
        return out

    def _wanted_var(self, block: bytes) -> bool:
        if self._variables is None:
            return True
        start = block.find(b"\r\nVariable: ")
        if start < 0:
            return False
        start += 12
        end = block.find(b"\r\n", start)
        return block[start:end if end > 0 else None].lstrip(b"_") in self._variables

    def reset(self) -> None:
        self._buf = b""

    @property
    def pending(self) -> int:
        return len(self._buf)


_action_ids = itertools.count(1)


def next_action_id(prefix: str = "aftercalld") -> str:
    return f"{prefix}-{next(_action_ids)}"


def encode_action(fields: Mapping[str, str] | Iterable[tuple[str, str]]) -> bytes:
    """An action as bytes. CR/LF inside values would inject extra headers, so they are
    replaced by spaces."""
    items = fields.items() if isinstance(fields, Mapping) else fields
    lines = []
    for key, value in items:
        value = str(value).replace("\r", " ").replace("\n", " ")
        lines.append(f"{key}: {value}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("utf-8")

"""Where log lines go: native journald entries under systemd, readable text otherwise.

Under systemd every line carries structured fields (CALL_ID, PBX, RULE, MSG_ID, RECIPIENT,
STATE) so support staff can run ``journalctl -u aftercalld CALL_ID=1796012880.0``. The
journal protocol is one datagram per entry on /run/systemd/journal/socket; no C library is
needed for that.
"""
from __future__ import annotations

import logging
import os
import socket
import struct
import sys
from typing import Any

from .textsafety import escape_controls

JOURNAL_SOCKET = "/run/systemd/journal/socket"

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def _field(name: str, value: object) -> bytes:
    data = str(value).encode("utf-8", "replace")
    key = name.encode()
    if b"\n" in data:
        # Binary form: the value's length, then the value, so newlines survive.
        return key + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    return key + b"=" + data + b"\n"


class EscapingFormatter(logging.Formatter):
    """A text formatter that escapes control, format and line-separator characters in the
    message (its format string and every argument), so one record is one line whatever a
    caller id holds. A traceback, appended after this, keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return escape_traceback(super().formatException(ei))


_TRACEBACK_HEADS = ("Traceback (most recent call last):", "During handling of the above exception",
                    "The above exception was the direct cause")


def escape_traceback(text: str) -> str:
    """A traceback keeps its own lines (frames are indented; the exception line and the
    chaining sentences are not), but an exception message that holds a newline (a value
    from a peer) stays on the exception's line, escaped."""
    out: list[str] = []
    for line in text.split("\n"):
        structural = not line or line.startswith((" ", *_TRACEBACK_HEADS))
        follows_message = bool(out) and bool(out[-1]) and not out[-1].startswith((" ", *_TRACEBACK_HEADS))
        if not structural and follows_message:
            out[-1] += "\\n" + escape_controls(line)
        else:
            out.append(escape_controls(line))
    return "\n".join(out)


class JournalHandler(logging.Handler):
    def __init__(self, address: str = JOURNAL_SOCKET, identifier: str = "aftercalld") -> None:
        super().__init__()
        self.address = address
        self.identifier = identifier
        self.instance = ""  # set by `show_instance`: which of the instances sharing an outbox
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._fallback = logging.StreamHandler(sys.stderr)
        self._fallback.setFormatter(EscapingFormatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # Values in the message came from callers and peers: escaped, so a caller id
            # with a newline cannot forge an entry. Only our own traceback spans lines.
            message = escape_controls(record.getMessage())
            if record.exc_info:
                message += "\n" + escape_traceback(logging.Formatter().formatException(record.exc_info))
            parts = [
                _field("MESSAGE", message),
                _field("PRIORITY", _PRIORITY.get(record.levelno, 6)),
                _field("SYSLOG_IDENTIFIER", self.identifier),
                _field("LOGGER", record.name),
                _field("CODE_FUNC", record.funcName),
                _field("CODE_LINE", record.lineno),
            ]
            if self.instance:
                parts.append(_field("INSTANCE", self.instance))
            for key, value in (getattr(record, "journal_fields", None) or {}).items():
                parts.append(_field(key, escape_controls(value)))
            self.sock.sendto(b"".join(parts), self.address)
        except OSError:
            self._fallback.emit(record)  # journald gone or entry too big: keep the line
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        self.sock.close()
        super().close()


def under_journal() -> bool:
    """True when stderr is connected to the journal (systemd sets JOURNAL_STREAM)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    if not stream or ":" not in stream:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    dev, _, ino = stream.partition(":")
    return f"{st.st_dev}" == dev and f"{st.st_ino}" == ino


def show_instance(name: str) -> None:
    """Instances sharing a PostgreSQL outbox log which one speaks: a journal field INSTANCE
    (`journalctl INSTANCE=sms1`), and in plain text lines after the level."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, JournalHandler):
            handler.instance = name
        elif isinstance(handler.formatter, EscapingFormatter):
            handler.setFormatter(EscapingFormatter(
                f"%(asctime)s %(levelname)s {name.replace('%', '%%')} %(name)s: %(message)s"))


def setup_logging(level: int = logging.INFO, *, journal: bool | None = None,
                  journal_socket: str = JOURNAL_SOCKET) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    use_journal = under_journal() if journal is None else journal
    if use_journal and os.path.exists(journal_socket):
        root.addHandler(JournalHandler(journal_socket))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(EscapingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)
    # Third-party chatter stays below our lines.
    for noisy in ("asyncio",):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))

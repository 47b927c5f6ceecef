"""Log lines: one record is one line whatever a caller id holds (issue 13, item 4)."""
from __future__ import annotations

import logging
import socket
import struct

import pytest

from aftercalld.logsetup import JournalHandler, setup_logging
from aftercalld.logutil import fields

# What a stranger can put in a caller id: a bare LF (AMI CallerIDNum), %0A decoded from an
# ESL plain event, CR, ANSI escapes for the terminal, a bidi override.
FORGED = "+447400123456\n2026-11-30 12:00:00,000 INFO aftercalld.dispatcher: message 99 to +4474 delivered"
NASTY = FORGED + "\r\x1b[2J\u202e\u2028"


@pytest.fixture
def root_logging():
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        if handler not in saved_handlers:
            handler.close()
    for handler in saved_handlers:
        root.addHandler(handler)
    root.setLevel(saved_level)


def test_text_log_lines_escape_values_in_the_message_and_its_arguments(root_logging, capsys):
    setup_logging(logging.INFO, journal=False)
    log = logging.getLogger("aftercalld.test.forged")
    log.info("missed call from %s", NASTY)
    log.warning("caller " + NASTY)  # a value already merged into the format string
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("handling %s failed", NASTY)
    err = capsys.readouterr().err
    lines = err.splitlines()
    records = [line for line in lines if " aftercalld.test.forged: " in line]
    assert len(records) == 3
    assert not any(line.startswith("2026-11-30 12:00:00,000 INFO aftercalld.dispatcher") for line in lines)
    assert "\x1b" not in err and "\u202e" not in err and "\u2028" not in err and "\r" not in err
    assert "+447400123456\\n2026-11-30" in records[0] and "\\r\\x1b[2J\\u202e\\u2028" in records[0]
    assert "Traceback (most recent call last):" in lines  # our own traceback keeps its lines
    assert lines[-1] == "ValueError: boom"


def test_journal_entries_carry_escaped_messages_and_fields(tmp_path):
    path = str(tmp_path / "journal.sock")
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(path)
    logger = logging.getLogger("aftercalld.test.journal.forged")
    logger.propagate = False
    handler = JournalHandler(path)
    logger.addHandler(handler)
    try:
        logger.warning("missed call from %s", NASTY, extra=fields(recipient=NASTY, call_id="main/1\n2"))
        entry = _parse_entry(journal.recv(65536))
    finally:
        logger.removeHandler(handler)
        handler.close()
        journal.close()
    for key in ("MESSAGE", "RECIPIENT", "CALL_ID"):
        assert "\n" not in entry[key] and "\x1b" not in entry[key] and "\u202e" not in entry[key], key
    assert entry["MESSAGE"].startswith("missed call from +447400123456\\n2026-11-30")
    assert entry["RECIPIENT"].endswith("\\r\\x1b[2J\\u202e\\u2028")
    assert entry["CALL_ID"] == "1\\n2"


def _parse_entry(data: bytes) -> dict[str, str]:
    out, pos = {}, 0
    while pos < len(data):
        end = data.index(b"\n", pos)
        line = data[pos:end]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            out[key.decode()] = value.decode()
            pos = end + 1
        else:  # binary form: KEY\n<u64 length><value>\n
            size = struct.unpack("<Q", data[end + 1:end + 9])[0]
            out[line.decode()] = data[end + 9:end + 9 + size].decode()
            pos = end + 9 + size + 1
    return out


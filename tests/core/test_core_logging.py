"""Log lines: one record is one line whatever a caller id holds (issue 13, item 4)."""
from __future__ import annotations

import logging
import socket

import pytest
from journal_wire import parse_entry

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


def test_an_exception_message_with_a_newline_stays_on_the_exception_line(root_logging, capsys):
    setup_logging(logging.INFO, journal=False)
    log = logging.getLogger("aftercalld.test.forged")
    try:
        try:
            raise KeyError("inner")
        except KeyError as inner:
            raise ValueError(f"bad caller {FORGED}") from inner
    except ValueError:
        log.exception("event skipped")
    lines = capsys.readouterr().err.splitlines()
    assert not any(line.startswith("2026-11-30 12:00:00,000 INFO aftercalld.dispatcher") for line in lines)
    assert lines[-1].startswith("ValueError: bad caller +447400123456\\n2026-11-30 12:00:00,000 INFO")
    assert "The above exception was the direct cause of the following exception:" in lines
    assert sum(line == "Traceback (most recent call last):" for line in lines) == 2


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
        entry = parse_entry(journal.recv(65536))
    finally:
        logger.removeHandler(handler)
        handler.close()
        journal.close()
    for key in ("MESSAGE", "RECIPIENT", "CALL_ID"):
        assert "\n" not in entry[key] and "\x1b" not in entry[key] and "\u202e" not in entry[key], key
    assert entry["MESSAGE"].startswith("missed call from +447400123456\\n2026-11-30")
    assert entry["RECIPIENT"].endswith("\\r\\x1b[2J\\u202e\\u2028")
    assert entry["CALL_ID"] == "1\\n2"




# -- end to end: a real `aftercalld run` fed by a test AMI server -----------------------------

DAEMON_CONFIG = """
[general]
timezone = "Asia/Kolkata"
default_region = "IN"
outbox = "{outbox}"

[[pbx]]
name = "main"
type = "asterisk"
host = "127.0.0.1"
port = {ami_port}
username = "aftercalld"
secret = "test"
reconnect_min = 0.05
reconnect_max = 0.2

[transport]
type = "log"

[[rules]]
name = "Missed"
recipients = ["caller"]
when = {{ status = ["missed", "voicemail"] }}
caller = {{ text = "Sorry we missed you.", sender = "ACME" }}
"""


async def test_a_caller_id_with_a_bare_lf_cannot_forge_a_daemon_log_line(tmp_path, traces):
    """Issue 13 item 4: AMI frames on CRLF, so a bare LF stays inside CallerIDNum and reached
    the log as a line of its own."""
    import asyncio
    import os
    import signal
    import sys as _sys
    from pathlib import Path

    _sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ami"))
    from ami_server import AmiServer

    ami = await AmiServer().start()
    config = tmp_path / "aftercalld.toml"
    config.write_text(DAEMON_CONFIG.format(outbox=tmp_path / "outbox.sqlite3", ami_port=ami.port))
    raw = (traces / "asterisk" / "inbound_missed_noanswer.ami").read_bytes()
    trace = b"\r\n".join(line for line in raw.split(b"\r\n") if not line.startswith(b"#"))
    forged_tail = ("\n" + FORGED.split("\n", 1)[1] + "\x1b[2J").encode()  # a bare LF, then the forgery
    trace = trace.replace(b"CallerIDNum: 9876543210", b"CallerIDNum: 9876543210" + forged_tail)
    proc = await asyncio.create_subprocess_exec(_sys.executable, "-m", "aftercalld", "run", "-c", str(config),
                                                stderr=asyncio.subprocess.PIPE, env={**os.environ})
    lines: list[str] = []
    try:
        async def until(text: str) -> None:
            while not any(text in line for line in lines):
                line = await proc.stderr.readline()
                assert line, "daemon exited:\n" + "".join(lines)
                lines.append(line.decode())

        await asyncio.wait_for(ami.wait_until(lambda: ami.ok_logins >= 1), 20)
        await ami.send(trace)
        await asyncio.wait_for(until(" aftercalld.pipeline: "), 20)
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = await asyncio.wait_for(proc.communicate(), 30)
        await ami.stop()
    log = "".join(lines) + (rest or b"").decode()
    assert "\x1b" not in log
    forged = [line for line in log.splitlines() if "message 99 to +4474 delivered" in line]
    assert forged and all(" aftercalld.pipeline: " in line for line in forged), log
    assert not any(line.startswith("2026-11-30 12:00:00,000 INFO aftercalld.dispatcher") for line in log.splitlines())

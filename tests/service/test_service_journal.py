"""Native journald entries carry the structured fields support staff filter on."""
from __future__ import annotations

import logging
import socket

from journal_wire import parse_entry

from aftercalld.logsetup import JournalHandler
from aftercalld.logutil import fields


def test_journal_entry_has_call_fields_and_survives_newlines(tmp_path):
    path = str(tmp_path / "journal.sock")
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(path)
    logger = logging.getLogger("aftercalld.test.journal")
    logger.propagate = False
    handler = JournalHandler(path)
    logger.addHandler(handler)
    try:
        logger.warning("missed call from +447400123456 → rule 'Missed'\nsecond line",
                       extra=fields(call_id="1796012880.0", pbx="main", rule="Missed",
                                    recipient="+447400123456", state="queued", msg_id=""))
        entry = parse_entry(journal.recv(65536))
    finally:
        logger.removeHandler(handler)
        handler.close()
        journal.close()
    # escaped: a value with a newline cannot forge a second line (issue 13)
    assert entry["MESSAGE"] == "missed call from +447400123456 → rule 'Missed'\\nsecond line"
    assert entry["PRIORITY"] == "4"
    assert entry["SYSLOG_IDENTIFIER"] == "aftercalld"
    assert (entry["CALL_ID"], entry["PBX"], entry["RULE"], entry["RECIPIENT"], entry["STATE"]) == (
        "1796012880.0", "main", "Missed", "+447400123456", "queued")
    assert "MSG_ID" not in entry  # empty fields are left out


def test_message_lines_carry_the_bare_call_id_and_pbx():
    # Message log lines know their call by the outbox's "pbx/call id" key.
    assert fields(call_id="main/1796012880.0", rule="R")["journal_fields"] == {
        "CALL_ID": "1796012880.0", "PBX": "main", "RULE": "R"}
    assert fields(call_id="1796012880.0")["journal_fields"] == {"CALL_ID": "1796012880.0"}

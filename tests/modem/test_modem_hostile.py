"""A modem (or what pretends to be one on the port) that sends numbers no modem would:
thousands of digits, or digits that are not ASCII. Issue 13 item 10: each gave a ValueError
(int() refuses > 4,300 digits; '²'.isdigit() is true but int('²') fails) in +CMTI, +CMGS,
+CREG, +CSQ and a +CMT/+CDS length — a traceback per line, or a modem that never became
ready. Now such a number is not a number."""
from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from modem_helpers import message, running
from modem_sim import ModemSim

from aftercalld.model import OutcomeKind
from aftercalld.modem import pdu
from aftercalld.modem.at import Urc, number
from aftercalld.modem.inbox import ModemInbox
from aftercalld.modem.link import _reg_from_query, _reg_from_urc

HUGE = "9" * 5000


@pytest.fixture
async def sim(tmp_path):
    s = ModemSim(tmp_path / "ttyUSB-gsm")
    s.plug()
    yield s
    s.close()


# Over the pty such lines are usually longer than the AT channel's 4 KiB line buffer and
# dropped there, but a modem's burst can arrive in one read: so the parsers themselves
# are fed the lines too, as the channel would hand them over.
@pytest.mark.parametrize("text", [HUGE, "²", "", "-1", "1.5", " 7"])
def test_number_takes_only_short_ascii_digits(text):
    assert number(text) is None


def test_registration_and_length_fields_that_are_no_numbers_are_ignored():
    assert _reg_from_query(f"+CREG: 0,{HUGE}") is None
    assert _reg_from_query("+CREG: ²,1") is None
    assert _reg_from_urc(f"+CREG: {HUGE}") is None
    assert _reg_from_query("+CREG: 0,5") == 5


def test_inbox_skips_announcements_with_impossible_numbers(caplog):
    inbox = ModemInbox("gsm1")
    assert inbox.take(Urc(f'+CMTI: "SM",{HUGE}'))
    assert not inbox.take(Urc('+CMTI: "SM",²'))  # not an index at all: the link logs it at debug
    t = datetime.now(UTC).replace(microsecond=0)
    hex_pdu, _ = pdu.build_status_report(7, "+447700900123", 0, t, t)
    reports = []
    inbox.events = type("Events", (), {"delivery_report": reports.append, "inbound_message": None})()
    assert inbox.take(Urc(f"+CDS: {HUGE}", hex_pdu))  # a junk length; the PDU is fine
    assert inbox.announced.empty()
    assert [r.message_id for r in reports] == ["7"]
    assert "ignoring +CMTI with an impossible index (5000 digits)" in caplog.text


async def test_a_burst_of_huge_numbers_on_the_port_leaves_the_modem_working(sim, caplog):
    async with running(sim) as (modem, events):
        sim.emit(f'+CMTI: "SM",{HUGE}')
        sim.emit(f"+CREG: {HUGE}")
        index = sim.deliver_sms("+447700900123", "STOP", notify=False)
        sim.emit(f'+CMTI: "SM",{index}')  # a sane one after them is still read
        reply = await asyncio.wait_for(events.inbound.get(), 5)
        assert (await modem.send(message("still here"))).kind is OutcomeKind.SUBMITTED
    assert reply.text == "STOP"
    assert "Traceback" not in caplog.text and "handling unsolicited line" not in caplog.text


@pytest.mark.parametrize("reference", [HUGE, "300"])
async def test_a_message_reference_that_is_no_octet_counts_as_sent_without_a_reference(sim, reference, caplog):
    sim.cmgs_reference = reference
    async with running(sim) as (modem, _):
        outcome = await modem.send(message("hello"))
    assert outcome.kind is OutcomeKind.SUBMITTED
    assert outcome.message_ids[0].startswith("noref-")
    assert "delivery report cannot be matched" in caplog.text
    assert sim.texts() == ["hello"]

"""The modem transport against the pty modem simulator: what arrives at the network side
is decoded there and compared with what the dispatcher asked for."""
from __future__ import annotations

import asyncio
import logging
from datetime import UTC

import pytest
from modem_helpers import message, running
from modem_sim import ModemSim

from aftercalld.model import Encoding, OutcomeKind, ReportState


@pytest.fixture
async def sim(tmp_path):
    s = ModemSim(tmp_path / "ttyUSB-gsm")
    s.plug()
    yield s
    s.close()


async def test_gsm7_with_extension_characters_arrives_intact(sim):
    text = "Sorry we missed you: 5€ off [code {A~B}] ^|\\ call 020 7946 0000 @ £ ¥ è"
    async with running(sim) as (modem, _):
        outcome = await modem.send(message(text))
    assert outcome.kind is OutcomeKind.SUBMITTED, outcome
    assert len(outcome.message_ids) == 1
    (got,) = sim.received
    assert got.decoded.text == text
    assert got.decoded.encoding is Encoding.GSM7
    assert got.decoded.destination == "+447700900123"
    assert got.decoded.status_report is True
    assert got.decoded.concat is None
    assert outcome.message_ids == (str(got.mr),)
    # the init sequence the issue asks for
    for cmd in ("ATZ", "ATE0", "AT+CMEE=1", "AT+CPIN?", "AT+CREG?", "AT+CMGF=0"):
        assert cmd in sim.commands
    assert sim.cnmi.endswith(",1,0")  # +CDS straight to us


async def test_ucs2_with_emoji(sim):
    text = "Мы пропустили ваш звонок 📞 — перезвоним!"
    async with running(sim) as (modem, _):
        outcome = await modem.send(message(text))
    assert outcome.kind is OutcomeKind.SUBMITTED
    (got,) = sim.received
    assert got.decoded.encoding is Encoding.UCS2
    assert got.decoded.text == text


async def test_three_part_message_is_concatenated(sim):
    text = ("We are sorry we missed your call. " * 12).strip()  # ~ 400 septets
    assert 306 < len(text) <= 459
    async with running(sim) as (modem, _):
        outcome = await modem.send(message(text))
    assert outcome.kind is OutcomeKind.SUBMITTED
    assert len(outcome.message_ids) == 3 == len(set(outcome.message_ids))
    parts = [r.decoded for r in sim.received]
    assert [p.concat.sequence for p in parts] == [1, 2, 3]
    assert {p.concat.total for p in parts} == {3}
    assert len({p.concat.reference for p in parts}) == 1
    assert "".join(p.text for p in parts) == text
    assert outcome.message_ids == tuple(str(r.mr) for r in sim.received)


async def test_three_part_ucs2_never_splits_an_emoji(sim):
    text = "Привет 👋 " * 20  # 180 UTF-16 units
    async with running(sim) as (modem, _):
        outcome = await modem.send(message(text))
    assert outcome.kind is OutcomeKind.SUBMITTED
    assert len(sim.received) == 3
    assert "".join(r.decoded.text for r in sim.received) == text
    assert all("\ufffd" not in r.decoded.text for r in sim.received)


async def test_status_reports_match_by_message_reference(sim):
    async with running(sim) as (modem, events):
        first = await modem.send(message("one"))
        second = await modem.send(message("two", destination="+447700900456"))
        sim.status_report(int(second.message_ids[0]), status=0x00)
        sim.status_report(int(first.message_ids[0]), status=0x41)  # incompatible destination
        sim.cds_with_sca = False  # some modems leave the SMSC address out
        sim.status_report(int(first.message_ids[0]), status=0x21)  # still trying
        r1 = await asyncio.wait_for(events.reports.get(), 5)
        r2 = await asyncio.wait_for(events.reports.get(), 5)
        r3 = await asyncio.wait_for(events.reports.get(), 5)
    assert (r1.message_id, r1.state, r1.transport) == (second.message_ids[0], ReportState.DELIVERED, "gsm1")
    assert (r2.message_id, r2.state) == (first.message_ids[0], ReportState.UNDELIVERABLE)
    assert "incompatible destination" in r2.error
    assert (r3.message_id, r3.state) == (first.message_ids[0], ReportState.ENROUTE)


async def test_status_reports_off_means_no_srr_and_no_ds(sim):
    async with running(sim, status_reports=False) as (modem, _):
        await modem.send(message("hi"))
    assert sim.received[0].decoded.status_report is False
    assert sim.cnmi.endswith(",0,0")


async def test_stored_status_report_via_cdsi(sim):
    sim.cnmi_reject = {"2,1,0,1,0"}  # a modem that only stores reports (+CDSI)
    async with running(sim) as (modem, events):
        assert sim.cnmi == "2,1,0,2,0"
        outcome = await modem.send(message("hello"))
        # the modem stores the report and announces it
        from datetime import datetime

        from modem_sim import Stored

        from aftercalld.modem import pdu

        now = datetime.now(UTC).replace(microsecond=0)
        hex_pdu, length = pdu.build_status_report(int(outcome.message_ids[0]), "+447700900123", 0, now, now)
        sim.storage[7] = Stored(0, hex_pdu, length)
        sim.emit('+CDSI: "SR",7')
        report = await asyncio.wait_for(events.reports.get(), 5)
        await sim.wait_for(lambda: 7 not in sim.storage)
    assert report.message_id == outcome.message_ids[0]
    assert report.state is ReportState.DELIVERED


async def test_incoming_sms_is_read_deleted_and_passed_on(sim):
    async with running(sim) as (modem, events):
        sim.deliver_sms("+447700900123", "STOP")
        reply = await asyncio.wait_for(events.inbound.get(), 5)
        await sim.wait_for(lambda: not sim.storage)
        sim.deliver_sms("+447700900999", "Arrêtez s'il vous plaît ✋")
        reply2 = await asyncio.wait_for(events.inbound.get(), 5)
    assert (reply.sender, reply.text, reply.transport) == ("+447700900123", "STOP", "gsm1")
    assert reply2.text == "Arrêtez s'il vous plaît ✋"


async def test_concatenated_reply_is_reassembled(sim):
    from aftercalld.modem.pdu import Concat

    async with running(sim) as (modem, events):
        sim.deliver_sms("+447700900123", "world", concat=Concat(9, 2, 2))
        sim.deliver_sms("+447700900123", "hello ", concat=Concat(9, 2, 1))
        reply = await asyncio.wait_for(events.inbound.get(), 5)
    assert reply.text == "hello world"


async def test_messages_stored_while_away_are_read_at_start(sim):
    sim.deliver_sms("+447700900123", "STOP", notify=False)
    async with running(sim) as (modem, events):
        reply = await asyncio.wait_for(events.inbound.get(), 5)
    assert reply.text == "STOP"
    assert not sim.storage


async def test_sim_pin_is_entered_and_never_logged(sim, caplog):
    sim.pin = "4711"
    sim.pin_ok = False
    caplog.set_level(logging.DEBUG)
    async with running(sim, pin="4711") as (modem, _):
        outcome = await modem.send(message("hi"))
        status = modem.status()
    assert outcome.kind is OutcomeKind.SUBMITTED
    assert sim.pin_attempts == ["4711"]
    assert "4711" not in caplog.text
    assert "4711" not in repr(modem.settings)
    assert "4711" not in str(status)


async def test_sim_pin_required_but_missing_holds_messages(sim):
    sim.pin = "4711"
    sim.pin_ok = False
    async with running(sim, wait_ready=False) as (modem, _):
        outcome = await modem.send(message("hi"))
        assert modem.status()["state"] == "SIM locked"
    assert outcome.kind is OutcomeKind.TRANSIENT
    assert "PIN" in outcome.reason
    assert sim.pin_attempts == []


async def test_wrong_pin_is_tried_only_once(sim):
    sim.pin = "4711"
    sim.pin_ok = False
    async with running(sim, pin="0000", wait_ready=False) as (modem, _):
        assert modem.status()["state"] == "SIM locked"
        assert "rejected" in modem.status()["last_error"]
    assert sim.pin_attempts == ["0000"]


async def test_not_registered_then_registered(sim):
    sim.registration = 2  # searching
    async with running(sim, wait_ready=False) as (modem, _):
        outcome = await modem.send(message("hi"))
        assert outcome.kind is OutcomeKind.TRANSIENT
        assert "network" in outcome.reason
        sim.registration = 5  # roaming will do
        assert await modem.wait_ready(5)
        outcome = await modem.send(message("hi"))
    assert outcome.kind is OutcomeKind.SUBMITTED


async def test_losing_the_network_pauses_sending(sim):
    async with running(sim) as (modem, _):
        sim.registration = 0
        await sim.wait_for(lambda: not modem.status()["ready"] and sim.commands[-1] == "AT+CREG?")
        outcome = await modem.send(message("hi"))
        assert outcome.kind is OutcomeKind.TRANSIENT
        sim.registration = 1
        assert await modem.wait_ready(5)


@pytest.mark.parametrize("code, kind, meaning", [
    (38, OutcomeKind.TRANSIENT, "network out of order"),
    (1, OutcomeKind.PERMANENT, "unassigned (unallocated) number"),
    (500, OutcomeKind.TRANSIENT, "unknown error"),
])
async def test_cms_error_on_send(sim, caplog, code, kind, meaning):
    sim.cms_errors.append(code)
    async with running(sim) as (modem, _):
        outcome = await modem.send(message("hi"))
        assert outcome.kind is kind
        assert f"+CMS ERROR: {code} ({meaning})" in outcome.reason
        assert meaning in caplog.text
        # the modem is fine afterwards
        assert (await modem.send(message("again"))).kind is OutcomeKind.SUBMITTED


async def test_transient_error_on_a_later_part_retries_only_that_part(sim):
    text = "x" * 400
    async with running(sim) as (modem, _):
        sim.cms_errors.extend([])  # part 1 fine
        original = sim._submit

        calls = []

        def flaky(hex_pdu, length):
            calls.append(hex_pdu)
            if len(calls) == 2:
                sim._error(42)  # congestion on part 2, once
                return
            original(hex_pdu, length)

        sim._submit = flaky
        outcome = await modem.send(message(text))
    assert outcome.kind is OutcomeKind.SUBMITTED
    assert [r.decoded.concat.sequence for r in sim.received] == [1, 2, 3]
    assert "".join(sim.texts()) == text


async def test_permanent_error_on_a_later_part_is_not_retried_whole(sim):
    async with running(sim) as (modem, _):
        original = sim._submit
        calls = []

        def failing(hex_pdu, length):
            calls.append(hex_pdu)
            if len(calls) == 2:
                sim._error(96)
                return
            original(hex_pdu, length)

        sim._submit = failing
        outcome = await modem.send(message("y" * 400))
    assert outcome.kind is OutcomeKind.PERMANENT
    assert "only 1 of 3 parts sent" in outcome.reason
    assert len(sim.received) == 1


async def test_silent_modem_is_reset_and_reinitialised(sim):
    async with running(sim) as (modem, _):
        sim.silent = True
        outcome = await modem.send(message("into the void"))
        assert outcome.kind is OutcomeKind.TRANSIENT
        n_atz = sim.commands.count("ATZ")
        sim.silent = False
        await sim.wait_for(lambda: sim.commands.count("ATZ") > n_atz)
        assert await modem.wait_ready(5)
        assert modem.status()["resets"] >= 1
        outcome = await modem.send(message("back again"))
    assert outcome.kind is OutcomeKind.SUBMITTED
    assert sim.texts() == ["back again"]


async def test_silent_while_idle_is_noticed_by_polling(sim):
    async with running(sim) as (modem, _):
        sim.silent = True
        n = len(sim.commands)
        await sim.wait_for(lambda: len(sim.commands) > n + 1, timeout=5)  # a poll, then a retry
        sim.silent = False
        await sim.wait_for(lambda: "ATZ" in sim.commands[n:], timeout=5)
        assert await modem.wait_ready(5)
        assert (await modem.send(message("ok"))).kind is OutcomeKind.SUBMITTED


async def test_garbage_lines_are_ignored(sim):
    sim.garbage = True
    async with running(sim) as (modem, _):
        outcome = await modem.send(message("through the noise"))
    assert outcome.kind is OutcomeKind.SUBMITTED
    assert sim.texts() == ["through the noise"]


async def test_unsolicited_lines_mid_response(sim):
    sim.urcs_mid_answer = ["RING", "+CREG: 1", '+CLIP: "+441234",145']
    async with running(sim) as (modem, events):
        outcome = await modem.send(message("hello"))
        assert outcome.kind is OutcomeKind.SUBMITTED
        assert modem.status()["registration"] == "registered (home)"
        # a new text announced in the middle of the next answer is still picked up
        index = sim.deliver_sms("+447700900123", "STOP", notify=False)
        sim.urcs_mid_answer = [f'+CMTI: "SM",{index}', "RING"]
        outcome = await modem.send(message("second"))
        assert outcome.kind is OutcomeKind.SUBMITTED
        sim.urcs_mid_answer = []
        reply = await asyncio.wait_for(events.inbound.get(), 5)
    assert reply.text == "STOP"
    assert sim.texts() == ["hello", "second"]


async def test_status_report_arriving_mid_command(sim):
    async with running(sim) as (modem, events):
        first = await modem.send(message("one"))
        sim.cds_with_sca = True
        now_mr = int(first.message_ids[0])
        # a +CDS and its PDU line between the AT+CMGS prompt answer and OK
        from datetime import datetime

        from aftercalld.modem import pdu

        t = datetime.now(UTC).replace(microsecond=0)
        hex_pdu, length = pdu.build_status_report(now_mr, "+447700900123", 0, t, t)
        sim.urcs_mid_answer = [f"+CDS: {length}\r\n{hex_pdu}"]
        second = await modem.send(message("two"))
        report = await asyncio.wait_for(events.reports.get(), 5)
    assert second.kind is OutcomeKind.SUBMITTED
    assert report.message_id == first.message_ids[0]
    assert report.state is ReportState.DELIVERED


async def test_usb_replug(sim):
    async with running(sim) as (modem, _):
        sim.unplug()
        # whether or not the transport has noticed yet, the send cannot go out
        outcome = await modem.send(message("nobody home"))
        assert outcome.kind is OutcomeKind.TRANSIENT
        sim.plug()
        assert await modem.wait_ready(5), modem.status()
        outcome = await modem.send(message("welcome back"))
        assert outcome.kind is OutcomeKind.SUBMITTED
        assert modem.status()["resets"] >= 1
    assert sim.texts() == ["welcome back"]


async def test_device_missing_at_start_then_plugged(tmp_path):
    sim = ModemSim(tmp_path / "ttyUSB-late")
    async with running(sim, wait_ready=False) as (modem, _):
        assert modem.status()["state"] == "device unavailable"
        assert "No such file" in modem.status()["last_error"]
        outcome = await modem.send(message("early"))
        assert outcome.kind is OutcomeKind.TRANSIENT
        sim.plug()
        try:
            assert await modem.wait_ready(5)
            assert (await modem.send(message("late"))).kind is OutcomeKind.SUBMITTED
        finally:
            sim.close()


async def test_send_rate_is_respected(sim):
    async with running(sim, rate_per_minute=600.0) as (modem, _):  # one part per 0.1 s
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await modem.send(message("a"))
        await modem.send(message("b"))
        await modem.send(message("c"))
        elapsed = loop.time() - t0
    assert elapsed >= 0.2


async def test_smsc_from_config(sim):
    async with running(sim, smsc="+447785016005") as (modem, _):
        pass
    assert sim.csca == '"+447785016005",145'


async def test_bad_destination_is_permanent(sim):
    async with running(sim) as (modem, _):
        outcome = await modem.send(message("hi", destination="+44 abc"))
    assert outcome.kind is OutcomeKind.PERMANENT
    assert not sim.received


async def test_lte_modem_registered_only_on_eps(sim):
    sim.registration = 0  # no 2G/3G service
    sim.cereg = 6  # registered for "SMS only", home network
    async with running(sim) as (modem, _):
        assert (await modem.send(message("over LTE"))).kind is OutcomeKind.SUBMITTED
    assert "AT+CEREG?" in sim.commands


async def test_modem_that_keeps_echoing_and_prompts_on_its_own_line(sim):
    sim.ignore_ate0 = True
    sim.prompt = b"\r\n>\r\n"
    async with running(sim) as (modem, _):
        outcome = await modem.send(message("echo echo"))
        assert sim.echo
    assert outcome.kind is OutcomeKind.SUBMITTED
    assert sim.texts() == ["echo echo"]


async def test_second_user_of_the_port_is_told_who_holds_it(sim):
    async with running(sim) as (first, _):
        async with running(sim, wait_ready=False) as (second, _):
            status = second.status()
            assert status["state"] == "device unavailable"
            assert "another program holds the port" in status["last_error"]
            outcome = await second.send(message("hi"))
            assert outcome.kind is OutcomeKind.TRANSIENT
            assert "another program holds the port" in outcome.reason
        assert (await first.send(message("still mine"))).kind is OutcomeKind.SUBMITTED


async def test_port_that_never_answers_says_what_to_check(sim):
    sim.silent = True  # e.g. the modem's diagnostics port instead of its AT port
    async with running(sim, wait_ready=False) as (modem, _):
        status = modem.status()
        assert status["state"] == "not answering"
        assert "AT port" in status["last_error"]
        sim.silent = False
        assert await modem.wait_ready(5)


async def test_metrics_from_the_transport_state(sim):
    from prometheus_client import CollectorRegistry, generate_latest

    from aftercalld.modem import register_metrics

    registry = CollectorRegistry()
    async with running(sim) as (modem, _):
        register_metrics(registry, modem)
        await modem.send(message("count me"))
        text = generate_latest(registry).decode()
    assert 'aftercalld_modem_signal_dbm{transport="gsm1"} -71.0' in text
    assert 'aftercalld_modem_registered{transport="gsm1"} 1.0' in text
    assert 'aftercalld_modem_ready{transport="gsm1"} 1.0' in text
    assert 'aftercalld_modem_parts_sent_total{transport="gsm1"} 1.0' in text
    assert 'aftercalld_modem_resets_total{transport="gsm1"} 0.0' in text


async def test_hang_after_the_message_reference_counts_as_sent(sim):
    async with running(sim) as (modem, _):
        sim.hang_after_cmgs = True
        outcome = await modem.send(message("out before the hang"))
        assert outcome.kind is OutcomeKind.SUBMITTED  # not retried: that would be a double text
        assert outcome.message_ids == (str(sim.received[0].mr),)
        sim.hang_after_cmgs = False
        n_atz = sim.commands.count("ATZ")
        sim.silent = False
        await sim.wait_for(lambda: sim.commands.count("ATZ") > n_atz)
        assert await modem.wait_ready(5)
    assert sim.texts() == ["out before the hang"]


async def test_slow_sim_after_the_pin_gets_no_second_pin(sim):
    sim.pin = "4711"
    sim.pin_ok = False
    sim.pin_delay_polls = 1
    async with running(sim, pin="4711") as (modem, _):
        assert (await modem.send(message("hi"))).kind is OutcomeKind.SUBMITTED
    assert sim.pin_attempts == ["4711"]


async def test_text_routed_straight_to_us_with_cmt(sim):
    from datetime import datetime

    from aftercalld.modem import pdu

    async with running(sim) as (modem, events):
        hex_pdu = pdu.build_deliver("+447700900123", "START", Encoding.GSM7, datetime.now(UTC))
        raw = bytes.fromhex(hex_pdu)
        sim.emit(f",{len(raw) - 1 - raw[0]}".join(["+CMT: ", ""]) + "\r\n" + hex_pdu)
        reply = await asyncio.wait_for(events.inbound.get(), 5)
    assert (reply.sender, reply.text) == ("+447700900123", "START")


async def test_text_stored_in_phone_memory_selects_that_memory(sim):
    async with running(sim) as (modem, events):
        index = sim.deliver_sms("+447700900123", "STOP", notify=False)
        sim.urcs_mid_answer = ["^RSSI:14", "^MODE:5,4", "+QIND: \"csq\",15,99"]  # vendor chatter
        sim.emit(f'+CMTI: "ME",{index}')
        reply = await asyncio.wait_for(events.inbound.get(), 5)
        await sim.wait_for(lambda: not sim.storage)
    assert reply.text == "STOP"
    assert 'AT+CPMS="ME"' in sim.commands


async def test_replug_mid_message_sends_the_rest_under_the_same_reference(sim):
    text = "z" * 400  # three parts
    async with running(sim) as (modem, _):
        original = sim._submit
        calls = []

        def unplug_on_part_two(hex_pdu, length):
            calls.append(hex_pdu)
            if len(calls) == 2:
                sim.unplug()  # the USB cable comes out as part 2 goes in ...
                asyncio.get_running_loop().call_later(0.1, sim.plug)  # ... and back
                return
            original(hex_pdu, length)

        sim._submit = unplug_on_part_two
        outcome = await modem.send(message(text))
    assert outcome.kind is OutcomeKind.SUBMITTED, outcome
    parts = [r.decoded for r in sim.received]
    assert [p.concat.sequence for p in parts] == [1, 2, 3]
    assert len({p.concat.reference for p in parts}) == 1
    assert "".join(p.text for p in parts) == text
    assert modem.status()["resets"] >= 1


async def test_modem_restart_announced_is_reinitialised(sim):
    async with running(sim) as (modem, _):
        assert (await modem.send(message("before"))).kind is OutcomeKind.SUBMITTED
        sim.reboot()
        await sim.wait_for(lambda: sim.cmgf == 0 and sim.cnmi != "")
        assert await modem.wait_ready(5)
        assert (await modem.send(message("after"))).kind is OutcomeKind.SUBMITTED
    assert sim.texts() == ["before", "after"]


async def test_silent_restart_never_sends_in_text_mode(sim):
    async with running(sim) as (modem, _):
        assert (await modem.send(message("before"))).kind is OutcomeKind.SUBMITTED
        sim.reboot(announce=False)
        cmgs_before = sum(c.startswith("AT+CMGS") for c in sim.commands)
        outcome = await modem.send(message("after"))
        assert outcome.kind is OutcomeKind.TRANSIENT
        assert "restarted" in outcome.reason
        assert sum(c.startswith("AT+CMGS") for c in sim.commands) == cmgs_before
        await sim.wait_for(lambda: sim.cmgf == 0)
        assert await modem.wait_ready(5)
        assert (await modem.send(message("after"))).kind is OutcomeKind.SUBMITTED
    assert sim.texts() == ["before", "after"]

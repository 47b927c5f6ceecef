"""The outbox: idempotency, retries, receipts, and surviving a killed process."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from core_helpers import NOW, call, write_config

from aftercalld.config import load
from aftercalld.dispatcher import Dispatcher
from aftercalld.model import CallRecord, DeliveryReport, InboundMessage, MessageState, ReportState, SubmitOutcome
from aftercalld.pipeline import CallHandler
from aftercalld.store import Outbox, OutcomeRecord
from aftercalld.store import sqlite as store
from aftercalld.transport import Transport


class ScriptedTransport(Transport):
    """A stand-in SMSC for dispatcher tests: answers each send from a script."""

    max_in_flight = 4

    def __init__(self, script):
        super().__init__("scripted")
        self.script = list(script)
        self.sent = []
        self.events = None

    async def start(self, events):
        self.events = events

    async def send(self, message):
        self.sent.append(message)
        outcome = self.script.pop(0) if self.script else SubmitOutcome.submitted(f"id{message.id}")
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def close(self):
        pass


async def settle(dispatcher, outbox):
    """Until nothing is queued or retrying. Retries are scheduled in the future, so between
    rounds this waits until the next one is due (the dispatcher's own timer fires it)."""
    while True:
        await dispatcher.wait_idle()
        due = outbox.next_due()
        if due is None:
            return
        await asyncio.sleep(max(0.0, due - time.time()))


@pytest.fixture
def setup(tmp_path):
    config = load(write_config(tmp_path))
    outbox = Outbox.open(config.outbox_path)
    yield config, outbox
    outbox.close()


def test_same_call_twice_queues_one_message(setup):
    config, outbox = setup
    handler = CallHandler(config, outbox)
    first = handler.handle(call(call_id="dup"))
    second = handler.handle(call(call_id="dup", status="connected"))
    assert not first.duplicate and second.duplicate
    assert outbox.counts_by_state() == {"queued": 1}
    assert len(outbox.calls()) == 1


def test_same_call_twice_in_one_write_queues_one_message(setup):
    config, outbox = setup
    decisions = CallHandler(config, outbox).handle_many(
        [call(call_id="a"), call(call_id="twice"), call(call_id="twice", status="connected"), call(call_id="b")])
    assert [d.duplicate for d in decisions] == [False, False, True, False]
    assert outbox.counts_by_state() == {"queued": 3}
    assert [c["call_id"] for c in outbox.calls()].count("twice") == 1


def test_the_outbox_keeps_every_field_of_the_call_for_support(setup):
    config, outbox = setup
    full = call(call_id="all-fields", caller_name="Zoë «Ω»", department="support", queue="q1",
                agent_extension="201", agent_name="Alice", agent_number="+447400123201",
                answer_time=datetime(2026, 11, 30, 10, 0, 4, tzinfo=UTC), ring_seconds=3.5, talk_seconds=0.0,
                hangup_cause="NO_ANSWER",
                voicemail_box="100@default", variables={"CRM_ID": "42", "note": "a \"quoted\" {value}"})
    CallHandler(config, outbox).handle(full)
    (stored,) = outbox.calls(call_key="main/all-fields")
    assert CallRecord.from_json(stored["record"]) == full


async def test_retries_transient_then_submits_and_permanent_fails(setup):
    config, outbox = setup
    handler = CallHandler(config, outbox)
    transport = ScriptedTransport([
        SubmitOutcome.transient("throttled", retry_after=0.01),
        RuntimeError("transport bug"),
        SubmitOutcome.submitted("A1"),
        SubmitOutcome.permanent("invalid destination (ESME_RINVDSTADR)"),
    ])
    dispatcher = Dispatcher(outbox, transport, config.dispatch)
    await dispatcher.start()
    handler.on_queued = dispatcher.wake
    handler.handle(call(call_id="x1"))
    await settle(dispatcher, outbox)
    handler.handle(call(call_id="x2", caller_number="+447400123457"))
    await settle(dispatcher, outbox)
    await dispatcher.stop()
    rows = {m["call_key"]: m for m in outbox.messages()}
    assert rows["main/x1"]["state"] == "submitted" and rows["main/x1"]["transport_ids"] == "A1"
    assert rows["main/x1"]["attempts"] == 3
    assert rows["main/x2"]["state"] == "failed"
    assert rows["main/x2"]["reason"] == "invalid destination (ESME_RINVDSTADR)"


async def test_transient_failures_give_up_after_ttl(tmp_path):
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace("ttl_seconds = 60", "ttl_seconds = 1"))
    config = load(path)
    outbox = Outbox.open(config.outbox_path)
    transport = ScriptedTransport([SubmitOutcome.transient("SMSC down")] * 100)
    dispatcher = Dispatcher(outbox, transport, config.dispatch)
    await dispatcher.start()
    CallHandler(config, outbox, on_queued=dispatcher.wake).handle(call())
    await settle(dispatcher, outbox)
    await dispatcher.stop()
    [row] = outbox.messages()
    assert row["state"] == "failed"
    assert "time-to-live 1s: SMSC down" in row["reason"]
    outbox.close()


async def test_delivery_reports_match_tolerantly_and_wait_for_all_parts(setup):
    config, outbox = setup
    handler = CallHandler(config, outbox)
    transport = ScriptedTransport([SubmitOutcome.submitted("0000FF", "00000100"), SubmitOutcome.submitted("7")])
    dispatcher = Dispatcher(outbox, transport, config.dispatch)
    dispatcher.orphan_grace = 0.0  # loose (other base, lost zeros) matches at once
    await dispatcher.start()
    handler.on_queued = dispatcher.wake
    # a receipt that arrives before its submit response has been recorded
    dispatcher.delivery_report(DeliveryReport("scripted", "7", ReportState.UNDELIVERABLE, "err:001"))
    handler.handle(call(call_id="two-parts"))
    handler.handle(call(call_id="one-part", caller_number="+447400123457"))
    await dispatcher.wait_idle()
    dispatcher.delivery_report(DeliveryReport("scripted", "255", ReportState.DELIVERED))  # decimal of 0xFF
    await asyncio.sleep(0)
    await dispatcher.wait_idle()
    rows = {m["call_key"]: m for m in outbox.messages()}
    assert rows["main/two-parts"]["state"] == "submitted"  # one part still out
    dispatcher.delivery_report(DeliveryReport("scripted", "100", ReportState.DELIVERED))  # leading zeros lost
    dispatcher.delivery_report(DeliveryReport("scripted", "nope", ReportState.DELIVERED))
    await dispatcher.stop()
    rows = {m["call_key"]: m for m in outbox.messages()}
    assert rows["main/two-parts"]["state"] == "delivered"
    assert rows["main/one-part"]["state"] == "undeliverable"
    assert rows["main/one-part"]["reason"] == "err:001"
    assert [o["transport_id"] for o in outbox.orphan_reports()] == ["nope"]


def test_a_receipt_racing_its_submit_is_not_matched_to_another_message_by_base(setup):
    """Hex "22" is decimal 34: a receipt for id "34" that arrives before message B's submit
    response is recorded must wait for B, not settle message A (SMPP review finding)."""
    config, outbox = setup
    now = NOW.timestamp()
    handler = CallHandler(config, outbox, clock=lambda: now)
    handler.handle(call(call_id="A"))
    handler.handle(call(call_id="B", caller_number="+447400123457"))
    a, b = outbox.claim_due(10, now)
    outbox.record_outcomes([OutcomeRecord(a, MessageState.SUBMITTED, transport_ids=("22",))], now)
    outbox.apply_reports([DeliveryReport("smpp", "34", ReportState.UNDELIVERABLE, "err:001")], now)
    outbox.record_outcomes([OutcomeRecord(b, MessageState.SUBMITTED, transport_ids=("34",))], now)
    outbox.apply_reports([DeliveryReport("smpp", "22", ReportState.DELIVERED)], now)
    states = {m["call_key"]: m["state"] for m in outbox.messages()}
    assert states == {"main/A": "delivered", "main/B": "undeliverable"}
    assert outbox.resolve_orphans(received_before=now + 1, now=now) == []


async def test_stop_reply_opts_out_and_dispatcher_honours_it(setup):
    config, outbox = setup
    transport = ScriptedTransport([])
    dispatcher = Dispatcher(outbox, transport, config.dispatch, optout=config.optout, default_region="GB")
    await dispatcher.start()
    dispatcher.inbound_message(InboundMessage("scripted", "07400123456", " stop. "))
    handler = CallHandler(config, outbox, on_queued=dispatcher.wake)
    handler.handle(call(call_id="after-stop"))
    await dispatcher.wait_idle()
    [row] = outbox.messages()
    assert (row["state"], row["reason"]) == ("suppressed", "opt-out")
    assert transport.sent == []
    dispatcher.inbound_message(InboundMessage("scripted", "+447400123456", "START"))
    handler.handle(call(call_id="after-start"))
    await dispatcher.wait_idle()
    await dispatcher.stop()
    assert [m["state"] for m in outbox.messages()] == ["suppressed", "submitted"]


KILLER = textwrap.dedent('''
    import os, signal, sys, time
    from aftercalld.config import load
    from aftercalld.pipeline import CallHandler
    from aftercalld.store import OutcomeRecord, Outbox
    sys.path.insert(0, sys.argv[2])
    from core_helpers import call
    config = load(sys.argv[1])
    outbox = Outbox.open(config.outbox_path)
    handler = CallHandler(config, outbox)
    for i in range(20):
        handler.handle(call(call_id=f"k{i}", caller_number=f"+4474001234{i:02d}"))
    outbox.claim_due(5, time.time())   # five are "on the wire" when the process dies
    os.kill(os.getpid(), signal.SIGKILL)
''')


def test_killed_process_loses_nothing_and_restart_sends_each_once(tmp_path):
    path = write_config(tmp_path)
    killed = subprocess.run([sys.executable, "-c", KILLER, str(path), os.path.dirname(__file__)])
    assert killed.returncode == -signal.SIGKILL
    with sqlite3.connect(tmp_path / "outbox.sqlite3") as db:
        assert dict(db.execute("SELECT state, COUNT(*) FROM messages GROUP BY state")) == {"queued": 15, "sending": 5}
    daemon = subprocess.Popen([sys.executable, "-m", "aftercalld.cli", "run", "-c", str(path)],
                              stderr=subprocess.PIPE, text=True)
    submitted = 0
    lines = []
    for line in daemon.stderr:  # wait for the events, not for time
        lines.append(line)
        submitted += " submitted (id " in line
        if submitted == 20:
            break
    daemon.send_signal(signal.SIGTERM)
    _, rest = daemon.communicate(timeout=30)
    lines += rest.splitlines()
    assert daemon.returncode == 0, "".join(lines)
    assert any("5 message(s) were being sent when the last run stopped" in line for line in lines)
    with sqlite3.connect(tmp_path / "outbox.sqlite3") as db:
        states = dict(db.execute("SELECT state, COUNT(*) FROM messages GROUP BY state"))
        parts = db.execute("SELECT COUNT(*), COUNT(DISTINCT message_id) FROM parts").fetchone()
    assert states == {"submitted": 20}
    assert parts == (20, 20)
    assert sum("dry run: would send" in line for line in lines) == 20


async def test_handler_with_metrics_and_quiet_logging(setup, caplog):
    """Regression: with info logging off, the per-call metric still found its record."""
    import logging

    from aftercalld.metrics import Metrics

    config, outbox = setup
    metrics = Metrics()
    handler = CallHandler(config, outbox, metrics=metrics)
    with caplog.at_level(logging.WARNING, logger="aftercalld"):
        logging.getLogger("aftercalld.pipeline").setLevel(logging.WARNING)
        try:
            await handler(call(call_id="quiet"))
            handler.flush()
        finally:
            logging.getLogger("aftercalld.pipeline").setLevel(logging.NOTSET)
    assert outbox.counts_by_state() == {"queued": 1}
    assert metrics.calls.labels("main", "missed", "inbound")._value.get() == 1


def test_messages_suppressed_when_the_call_is_handled_are_counted(setup):
    """The outbox said 7 suppressed while aftercalld_messages_total said 1: texts suppressed
    at rendering (landline, anonymous caller) never reach the dispatcher that counted."""
    from aftercalld.metrics import Metrics

    config, outbox = setup
    metrics = Metrics()
    handler = CallHandler(config, outbox, metrics=metrics)
    handler.handle_many([call(call_id="ok"), call(call_id="anon", caller_number="anonymous"),
                         call(call_id="fixed", caller_number="+442071234567")])
    handler.handle(call(call_id="ok"))  # a replayed event changes nothing
    assert outbox.counts_by_state() == {"queued": 1, "suppressed": 2}
    assert metrics.messages.labels("queued")._value.get() == 1
    assert metrics.messages.labels("suppressed")._value.get() == 2
    assert metrics.outcomes.labels("Missed", "suppressed")._value.get() == 2


async def test_a_call_that_breaks_the_pipeline_is_logged_whole_and_the_rest_go_on(setup, caplog):
    config, outbox = setup
    handler = CallHandler(config, outbox)
    broken = call(call_id="broken")
    object.__setattr__(broken, "status", "not-a-status")  # what a tracker bug could emit
    await handler(call(call_id="good-1"))
    await handler(broken)
    await handler(call(call_id="good-2", caller_number="+447400123457"))
    handler.flush()
    assert sorted(m["call_key"] for m in outbox.messages()) == ["main/good-1", "main/good-2"]
    assert any("call broken from main could not be handled; record for replay" in r.message
               for r in caplog.records)
    assert handler._pending == []


def test_the_wal_starts_over_under_sustained_writes(tmp_path, monkeypatch):
    # Under constant writes the background checkpointer never catches up at the moment a
    # transaction begins, so SQLite alone would never start the WAL over: it grew to
    # gigabytes on bench/pipeline.py.
    monkeypatch.setattr(store, "WAL_RESTART_FRAMES", 256)
    config = load(write_config(tmp_path))
    outbox = Outbox.open(config.outbox_path)
    outbox.checkpoint_in_background(interval=0.005)
    handler = CallHandler(config, outbox)
    wal = Path(config.outbox_path + "-wal")
    limit = 256 * outbox.conn.execute("PRAGMA page_size").fetchone()[0]
    restarts = largest = size = 0
    try:
        for batch in range(2000):
            handler.handle_many([call(call_id=f"c{batch}.{i}") for i in range(50)])
            previous, size = size, wal.stat().st_size
            largest = max(largest, size)
            # Starting over cuts a WAL that grew past the limit back to it.
            restarts += size < previous
            if restarts == 3:
                break
    finally:
        outbox.close()
    assert restarts == 3, f"the WAL never started over; it grew to {largest:,} bytes"
    assert largest < 16 * limit


async def test_every_reply_is_stored_with_the_text_it_answers_and_why_shows_it(setup):
    from io import StringIO

    from aftercalld.report import why

    config, outbox = setup
    transport = ScriptedTransport([])
    dispatcher = Dispatcher(outbox, transport, config.dispatch, optout=config.optout, default_region="GB")
    handler = CallHandler(config, outbox, on_queued=dispatcher.wake)
    await dispatcher.start()
    handler.handle(call(call_id="answered"))
    await dispatcher.wait_idle()
    dispatcher.inbound_message(InboundMessage("scripted", "07400123456", "Please call me after 5"))
    dispatcher.inbound_message(InboundMessage("scripted", "+447400123999", "who is this?"))  # never texted
    dispatcher.inbound_message(InboundMessage("scripted", "+447400123456", "STOP"))
    await dispatcher.stop()
    first, stranger, stop = outbox.replies()
    assert (first["number"], first["text"], first["call_key"], first["keyword"]) == (
        "+447400123456", "Please call me after 5", "main/answered", "")
    assert first["message_id"] == outbox.messages()[0]["id"]
    assert (stranger["call_key"], stranger["message_id"]) == (None, None)
    assert stop["keyword"] == "STOP"
    shown = StringIO()
    assert why(outbox, config, "07400 123456", shown) == 0
    assert "reply from +447400123456" in shown.getvalue()
    assert "to the text about call main/answered: 'Please call me after 5'" in shown.getvalue()
    assert "(STOP): 'STOP'" in shown.getvalue()


async def test_no_flush_runs_after_stop_on_a_closed_outbox(setup, caplog):
    """SIGTERM shortly after receipts: the receipts' grace timer fired after outbox.close()
    and logged 'Cannot operate on a closed database' with a traceback."""
    config, outbox = setup
    dispatcher = Dispatcher(outbox, ScriptedTransport([]), config.dispatch)
    dispatcher.orphan_grace = 0.05
    await dispatcher.start()
    dispatcher.delivery_report(DeliveryReport("scripted", "no-such-id", ReportState.DELIVERED))
    await asyncio.sleep(0)  # the flush that schedules the grace timer
    await dispatcher.stop()
    outbox.close()
    # Every timer the dispatcher had set would have fired by now.
    await asyncio.sleep(0.05 + 0.05 + 0.1)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_the_decision_line_names_the_call_for_plain_text_logs(setup, caplog):
    """Asterisk calls never showed their call id in a plain log line (only in journal
    fields), so support staff reading a log file could not find them with `why`."""
    config, outbox = setup
    caplog.set_level(logging.INFO, logger="aftercalld.pipeline")
    CallHandler(config, outbox).handle(call(call_id="1796012880.0"))
    (line,) = [r.getMessage() for r in caplog.records if r.name == "aftercalld.pipeline"]
    assert line.startswith("call 1796012880.0 [main]: missed inbound call from +447400123456 → rule 'Missed'")


# -- one bad receipt never blocks the others (issue 13, item 1) --------------------------------


def _receipt_pdu(text: bytes):
    from aftercalld.smpp import pdu

    return pdu.ShortMessage(command_id=pdu.DELIVER_SM, service_type="", source_ton=1, source_npi=1,
                            source="447400123456", dest_ton=5, dest_npi=0, destination="Acme",
                            esm_class=pdu.ESM_DELIVERY_RECEIPT, data_coding=0, short_message=text)


@pytest.mark.parametrize("digit", [b"\xb2", b"\xb3", b"\xb9"])
async def test_a_receipt_with_a_superscript_digit_id_does_not_stall_later_outcomes(setup, digit):
    """'²'.isdigit() is true but int('²') raises: the loose match raised on every flush, so
    every later outcome batch was retried forever and later sends stayed 'submitted'."""
    from aftercalld.smpp.receipts import parse_receipt

    config, outbox = setup
    handler = CallHandler(config, outbox)
    transport = ScriptedTransport([SubmitOutcome.submitted("41"), SubmitOutcome.submitted("42")])
    settled = asyncio.get_running_loop().create_future()

    def on_transition(t):
        if t.state is MessageState.DELIVERED and not settled.done():
            settled.set_result(t.message_id)

    dispatcher = Dispatcher(outbox, transport, config.dispatch, on_transition=on_transition)
    dispatcher.orphan_grace = 0.0  # loose matches at once: the poisoned row is tried every flush
    await dispatcher.start()
    handler.on_queued = dispatcher.wake
    try:
        receipt = parse_receipt(_receipt_pdu(b"id:" + digit + b" sub:001 dlvrd:001 stat:DELIVRD err:000"))
        dispatcher.delivery_report(DeliveryReport("smpp", receipt.message_id, receipt.state, receipt.error,
                                                  receipt.raw))
        await asyncio.sleep(0)
        handler.handle(call(call_id="after"))
        await asyncio.wait_for(dispatcher.wait_idle(), 5)
        dispatcher.delivery_report(DeliveryReport("smpp", "41", ReportState.DELIVERED))
        await asyncio.wait_for(settled, 5)
    finally:
        await asyncio.wait_for(dispatcher.stop(), 5)  # a stalled writer never drains
    assert {m["call_key"]: m["state"] for m in outbox.messages()} == {"main/after": "delivered"}
    [orphan] = outbox.orphan_reports()
    assert orphan["transport_id"] == digit.decode("latin-1") and orphan["matched"] == -1


def test_a_receipt_row_that_breaks_matching_is_set_aside_and_survives_no_restart(tmp_path):
    """A stored receipt that cannot be read (here: a state this version does not know) is
    marked unmatchable with the reason, in the same batch that settles the good ones; after
    a restart it is not tried again."""
    config = load(write_config(tmp_path))
    now = NOW.timestamp()
    outbox = Outbox.open(config.outbox_path)
    handler = CallHandler(config, outbox, clock=lambda: now)
    handler.handle(call(call_id="A"))
    handler.handle(call(call_id="B", caller_number="+447400123457"))
    a, b = outbox.claim_due(10, now)
    outbox.record_outcomes([OutcomeRecord(a, MessageState.SUBMITTED, transport_ids=("ff",)),
                            OutcomeRecord(b, MessageState.SUBMITTED, transport_ids=("1f",))], now)
    # decimal forms of the hex ids: matched only by the loose pass, after the grace period
    outbox.apply_reports([DeliveryReport("smpp", "255", ReportState.DELIVERED),
                          DeliveryReport("smpp", "31", ReportState.DELIVERED)], now)
    outbox.close()
    with sqlite3.connect(config.outbox_path) as conn:
        conn.execute("UPDATE orphan_reports SET state = 'bogus' WHERE transport_id = '255'")
    conn.close()

    outbox = Outbox.open(config.outbox_path)
    try:
        outbox.resolve_orphans(received_before=now + 1, now=now + 1)
        assert {m["call_key"]: m["state"] for m in outbox.messages()} == {"main/A": "submitted",
                                                                           "main/B": "delivered"}
        [bad] = outbox.orphan_reports()
        assert bad["transport_id"] == "255" and bad["matched"] == -1
        assert bad["error"].startswith("unmatchable: ValueError") and "bogus" in bad["error"]
        assert not outbox.has_pending_orphans(received_before=now + 2)
    finally:
        outbox.close()


def test_an_adhoc_text_is_queued_once_per_idempotency_key(setup):
    from aftercalld.model import RecipientKind
    from aftercalld.rules.render import render_adhoc

    config, outbox = setup
    ctx = config.render
    first = render_adhoc("api/order-17", "api", RecipientKind.FIXED, "+447400123456", "Table ready", "Cafe", ctx)
    again = render_adhoc("api/order-17", "api", RecipientKind.FIXED, "+447400123456", "changed text", "Cafe", ctx)
    refused = render_adhoc("api/bad", "api", RecipientKind.FIXED, "12", "hello", "Cafe", ctx)
    [(first_id, new)] = outbox.queue_messages([("", first)], ttl_seconds=60, now=NOW.timestamp())
    [(again_id, new_again), (refused_id, _)] = outbox.queue_messages(
        [("", again), ("", refused)], ttl_seconds=60, now=NOW.timestamp())
    assert new and not new_again and again_id == first_id
    assert outbox.counts_by_state() == {"queued": 1, "suppressed": 1}
    assert [m["text"] for m in outbox.messages() if m["id"] == first_id] == ["Table ready"]
    assert [m["state"] for m in outbox.messages() if m["id"] == refused_id] == ["suppressed"]

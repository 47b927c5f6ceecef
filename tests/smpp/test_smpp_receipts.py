"""Delivery receipts and replies over the wire, and end to end through the real outbox and
dispatcher: ids in other bases, receipts racing the submit_sm_resp, multi-part messages,
unknown ids, data_sm, STOP/START."""
from __future__ import annotations

import asyncio
import collections

import pytest
from smpp_util import Events, enqueue, message, settings, start_bound
from smsc_sim import SmscSim

from aftercalld.config import DispatchConfig
from aftercalld.dispatcher import Dispatcher
from aftercalld.model import MessageState, OutcomeKind, ReportState
from aftercalld.smpp import make_transport
from aftercalld.smpp.receipts import same_message_id
from aftercalld.store import Outbox


async def run(sim: SmscSim, **overrides):
    await sim.start()
    events = Events()
    t = make_transport(settings(sim.port, **overrides))
    await start_bound(t, events)
    return t, events


@pytest.mark.parametrize("mode,resp_id,receipt_id", [
    ("tlv", lambda n: format(n + 5000, "X"), lambda n: str(n + 5000)),  # hex resp, decimal receipt
    ("text", lambda n: str(n + 5000), lambda n: format(n + 5000, "x")),  # decimal resp, hex receipt
    ("tlv_only", lambda n: f"{n:010d}", lambda n: str(n)),  # leading zeros lost
    ("text", lambda n: f"ab{n:04x}CD", lambda n: f"AB{n:04X}cd"),  # case differs
])
async def test_receipts_match_submitted_ids(mode, resp_id, receipt_id):
    sim = SmscSim(receipts=mode, resp_id=resp_id, receipt_id=receipt_id)
    t, events = await run(sim)
    try:
        outcomes = [await t.send(message(f"hello {i}")) for i in range(5)]
        await events.wait_until(lambda: len(events.reports) == 5)
        for outcome, report in zip(outcomes, events.reports, strict=True):
            assert outcome.kind is OutcomeKind.SUBMITTED
            assert same_message_id(outcome.message_ids[0], report.message_id)
            assert report.state is ReportState.DELIVERED and report.transport == "smpp"
        await sim.wait_until(lambda: len(sim.deliver_resps) == 5)
        assert sim.deliver_resps == [0] * 5  # every deliver_sm answered OK
    finally:
        await t.close()
        await sim.stop()


async def test_receipt_states_and_errors():
    stats = {"447700900001": ("UNDELIV", "001"), "447700900002": ("EXPIRED", "000"),
             "447700900003": ("REJECTD", "034"), "447700900004": ("DELETED", "000")}
    sim = SmscSim(receipts="text", receipt_stat=lambda s: stats.get(s.destination, ("DELIVRD", "000")))
    t, events = await run(sim)
    try:
        for dest in stats:
            await t.send(message(destination="+" + dest))
        await events.wait_until(lambda: len(events.reports) == 4)
        got = [(r.state, r.error) for r in events.reports]
        assert got == [(ReportState.UNDELIVERABLE, "err:001"), (ReportState.EXPIRED, ""),
                       (ReportState.REJECTED, "err:034"), (ReportState.DELETED, "")]
        assert all("stat:" in r.raw for r in events.reports)
    finally:
        await t.close()
        await sim.stop()


async def test_unknown_ids_and_odd_receipts_are_forwarded_and_answered():
    sim = SmscSim()
    t, events = await run(sim)
    try:
        # an id we never submitted: forwarded (the store keeps it), answered OK
        assert await sim.send_deliver(source="447700900123", esm_class=0x04,
                                      short_message=b"id:DEADBEEF sub:001 dlvrd:001 stat:DELIVRD err:000") == 0
        # a data_sm receipt with TLVs only
        assert await sim.send_deliver(source="447700900123", esm_class=0x04, use_data_sm=True,
                                      tlvs={0x001E: b"77\x00", 0x0427: b"\x08"}) == 0
        # a receipt with no id at all: logged, answered OK, not forwarded
        assert await sim.send_deliver(source="447700900123", esm_class=0x04,
                                      short_message=b"stat:DELIVRD") == 0
        # an unknown TLV (a vendor's) does not break parsing
        assert await sim.send_deliver(source="447700900123", esm_class=0x04,
                                      short_message=b"id:12 stat:DELIVRD err:000",
                                      tlvs={0x1601: b"\x01\x02"}) == 0
        assert [(r.message_id, r.state) for r in events.reports] == [
            ("DEADBEEF", ReportState.DELIVERED), ("77", ReportState.REJECTED), ("12", ReportState.DELIVERED)]
    finally:
        await t.close()
        await sim.stop()


async def test_replies_reach_the_core():
    sim = SmscSim()
    t, events = await run(sim)
    try:
        assert await sim.send_mo("447700900123", "STOP") == 0
        assert await sim.send_mo("447700900124", "Стоп 😀", data_coding=8) == 0
        assert await sim.send_mo("12345", "START", source_ton=3) == 0
        assert [(m.sender, m.text) for m in events.inbound] == [
            ("+447700900123", "STOP"), ("+447700900124", "Стоп 😀"), ("12345", "START")]
    finally:
        await t.close()
        await sim.stop()


async def test_events_failure_asks_the_smsc_to_redeliver():
    class Broken(Events):
        def inbound_message(self, message):
            raise RuntimeError("disk full")

    sim = SmscSim()
    await sim.start()
    t = make_transport(settings(sim.port))
    await start_bound(t, Broken())
    try:
        assert await sim.send_mo("447700900123", "STOP") == 0x64  # ESME_RX_T_APPN
    finally:
        await t.close()
        await sim.stop()


# -- end to end through the real outbox and dispatcher ----------------------------------------


async def dispatch_all(sim: SmscSim, tmp_path, texts, on_transition=None, **overrides):
    outbox = Outbox.open(tmp_path / "outbox.sqlite3")
    enqueue(outbox, texts)
    await sim.start()
    transport = make_transport(settings(sim.port, **overrides))
    dispatcher = Dispatcher(outbox, transport, DispatchConfig(retry_initial_seconds=0.05,
                                                              retry_max_seconds=0.2),
                            on_transition=on_transition)
    await dispatcher.start()
    assert await transport.until_bound(10)
    return outbox, dispatcher


async def test_receipts_before_the_submit_response_still_settle_messages(tmp_path):
    # The SMSC sends the receipt *before* the submit_sm_resp: the report reaches the core
    # before the submit outcome is recorded.
    # Realistic ids (hex in the response, decimal in the receipt, as Nexmo does), with
    # msg_id_type saying so: small ids such as "12" would be ambiguous (decimal 12, or
    # another message's hex 0x12) whatever the matching.
    sim = SmscSim(receipts="tlv", receipt_before_resp=True,
                  resp_id=lambda n: format(0x3B9ACA00 + n, "X"),
                  receipt_id=lambda n: str(0x3B9ACA00 + n))
    texts = [f"race {i}" for i in range(200)] + ["long " * 80]
    delivered = collections.Counter()
    all_delivered = asyncio.get_running_loop().create_future()

    def on_transition(t):
        delivered[t.state] += 1
        if delivered[MessageState.DELIVERED] == len(texts) and not all_delivered.done():
            all_delivered.set_result(None)

    outbox, dispatcher = await dispatch_all(sim, tmp_path, texts, on_transition, window=20, sessions=2,
                                            msg_id_type="hex_dec")
    try:
        await asyncio.wait_for(all_delivered, 10)
        assert outbox.counts_by_state() == {"delivered": len(texts)}
        assert outbox.orphan_reports() == [] or all(o["matched"] for o in outbox.orphan_reports())
        assert sim.receipts_sent_before_resp == len(texts) + 2
        rows = outbox.messages()
        assert max(r["segments"] for r in rows) == 3
        assert collections.Counter(len(r["transport_ids"].split()) for r in rows)[3] == 1
    finally:
        await dispatcher.stop()
        outbox.close()
        await sim.stop()


async def test_stop_reply_puts_the_sender_on_the_opt_out_list(tmp_path):
    sim = SmscSim()
    outbox, dispatcher = await dispatch_all(sim, tmp_path, [])
    try:
        assert await sim.send_mo("447700900123", "Stop.") == 0
        assert outbox.is_opted_out("+447700900123")
        assert await sim.send_mo("447700900123", "start") == 0
        assert not outbox.is_opted_out("+447700900123")
    finally:
        await dispatcher.stop()
        outbox.close()
        await sim.stop()


async def test_no_receipt_overtakes_the_outcome_of_its_send():
    # Each part's receipt follows its submit_sm_resp in the same read, so parts 1 and 2 are
    # receipted while part 3 is still being submitted. (A receipt that precedes its own
    # response cannot be recognised yet; the store keeps those until the outcome arrives,
    # see test_receipts_before_the_submit_response_still_settle_messages.)
    sim = SmscSim(receipts="tlv")
    t, events = await run(sim)
    try:
        for _ in range(3):
            out = await t.send(message("three parts " * 30))
            assert len(out.message_ids) == 3
            seen = {r.message_id for r in events.reports}
            assert not seen & set(out.message_ids[:2])  # held until the outcome is out
            await events.wait_until(lambda out=out: set(out.message_ids) <= {r.message_id for r in events.reports})
    finally:
        await t.close()
        await sim.stop()


async def test_receipts_of_a_long_message_that_failed_half_way_are_not_held_forever():
    sim = SmscSim(receipts="tlv", fail_nth={3: 0x0B})  # the third submit: ESME_RINVDSTADR
    t, events = await run(sim)
    try:
        out = await t.send(message("four parts " * 50))
        assert out.kind is OutcomeKind.PERMANENT and out.reason == "ESME_RINVDSTADR part 3/4"
        # the two accepted parts' receipts still reach the core
        await events.wait_until(lambda: len(events.reports) == 2)
    finally:
        await t.close()
        await sim.stop()


async def test_a_long_message_takes_its_worst_receipt_whatever_the_order(tmp_path):
    # Every ordered pair of final receipts for the two parts: part 1's receipt arrives
    # first. The worst one decides (rejected > undeliverable > expired > delivered).
    worst_first = [("REJECTD", "rejected"), ("UNDELIV", "undeliverable"), ("EXPIRED", "expired"),
                   ("DELIVRD", "delivered")]
    pairs = [(a, b) for a in worst_first for b in worst_first]
    sim = SmscSim(receipts="text",
                  receipt_stat=lambda s: (pairs[int(s.destination[-3:])][s.short_message[5] - 1][0], "000"))
    finals = []
    all_settled = asyncio.get_running_loop().create_future()

    def on_transition(t):
        if t.state.final:
            finals.append(t)
            if len(finals) == len(pairs) and not all_settled.done():
                all_settled.set_result(None)

    outbox, dispatcher = await dispatch_all(sim, tmp_path, ["two parts " * 20] * len(pairs), on_transition)
    try:
        await asyncio.wait_for(all_settled, 10)
        got = {r["destination"]: r["state"] for r in outbox.messages()}
        for i, (a, b) in enumerate(pairs):
            expected = min(a, b, key=worst_first.index)[1]
            assert got[f"+447700900{i:03d}"] == expected, (a, b)
        assert len(finals) == len(pairs)  # each message settles once
    finally:
        await dispatcher.stop()
        outbox.close()
        await sim.stop()

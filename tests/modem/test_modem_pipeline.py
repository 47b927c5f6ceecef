"""End to end through the real outbox and dispatcher: texts queued, sent through the pty
modem, settled by its status reports; a STOP reply reaches the opt-out list; a modem
that vanishes mid-queue loses nothing."""
from __future__ import annotations

import asyncio

import pytest
from modem_helpers import enqueue, fast_settings
from modem_sim import ModemSim

from aftercalld.config import DispatchConfig
from aftercalld.dispatcher import Dispatcher
from aftercalld.modem import make_transport
from aftercalld.store import Outbox


@pytest.fixture
async def sim(tmp_path):
    s = ModemSim(tmp_path / "ttyUSB-gsm")
    s.plug()
    yield s
    s.close()


@pytest.fixture
async def pipeline(sim, tmp_path):
    outbox = Outbox.open(tmp_path / "outbox.sqlite3")
    transitions: list = []
    changed = asyncio.Event()

    def on_transition(t):
        transitions.append(t)
        changed.set()

    transport = make_transport(fast_settings(sim.link))
    dispatcher = Dispatcher(outbox, transport, DispatchConfig(retry_initial_seconds=0.05, retry_max_seconds=0.2),
                            on_transition=on_transition)
    await dispatcher.start()

    async def wait_states(expected: dict[str, int], timeout: float = 10.0) -> None:
        async def until() -> None:
            while outbox.counts_by_state() != expected:
                changed.clear()
                await changed.wait()
        await asyncio.wait_for(until(), timeout)

    try:
        yield outbox, dispatcher, wait_states
    finally:
        await dispatcher.stop()
        outbox.close()


async def test_queued_texts_go_out_and_reports_settle_them(sim, pipeline):
    outbox, dispatcher, wait_states = pipeline
    long_text = "Sorry we missed your call, we will ring you back shortly. " * 6
    enqueue(outbox, ["Missed you - ring back? 5€", long_text, "Перезвоним вам"])
    dispatcher.wake()
    await sim.wait_for(lambda: len(sim.received) == 1 + 3 + 1)
    await wait_states({"submitted": 3})
    for r in sim.received:
        sim.status_report(r.mr, 0x00)
    await wait_states({"delivered": 3})
    texts = sim.texts()
    assert sorted([texts[0], "".join(texts[1:4]), texts[4]]) == sorted(
        ["Missed you - ring back? 5€", long_text, "Перезвоним вам"])
    assert [len(r["transport_ids"].split()) for r in outbox.messages()].count(3) == 1


async def test_failed_report_marks_the_message(sim, pipeline):
    outbox, dispatcher, wait_states = pipeline
    enqueue(outbox, ["hello"])
    dispatcher.wake()
    await sim.wait_for(lambda: len(sim.received) == 1)
    await wait_states({"submitted": 1})
    sim.status_report(sim.received[0].mr, 0x46)  # validity period expired
    await wait_states({"expired": 1})


async def test_stop_reply_opts_the_sender_out(sim, pipeline):
    outbox, dispatcher, _ = pipeline
    sim.deliver_sms("+447700900555", "Stop")
    await sim.wait_for(lambda: not sim.storage)
    assert outbox.is_opted_out("+447700900555")


async def test_permanent_cms_error_fails_the_message(sim, pipeline):
    outbox, dispatcher, wait_states = pipeline
    sim.cms_errors.append(1)
    enqueue(outbox, ["to nowhere"])
    dispatcher.wake()
    await wait_states({"failed": 1})
    (row,) = outbox.messages()
    assert "unassigned" in str(row)


async def test_modem_gone_while_texts_are_queued(sim, pipeline):
    outbox, dispatcher, wait_states = pipeline
    sim.unplug()
    enqueue(outbox, ["one", "two"])
    dispatcher.wake()
    await wait_states({"retrying": 2})
    sim.plug()
    await sim.wait_for(lambda: len(sim.received) == 2, timeout=10)
    await wait_states({"submitted": 2})
    assert sorted(sim.texts()) == ["one", "two"]

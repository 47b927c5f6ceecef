"""A modem as one of several transports: it takes the texts of an SMPP provider that is
down, and hands a number it cannot text (a permanent +CMS ERROR) to the SMSC."""
from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable

import pytest
from modem_helpers import enqueue, fast_settings
from modem_sim import ModemSim
from smsc_sim import SmscSim

from aftercalld.config import DispatchConfig
from aftercalld.dispatcher import Dispatcher
from aftercalld.modem import make_transport as make_modem
from aftercalld.routing import RoutedTransport
from aftercalld.smpp import SmppSettings
from aftercalld.smpp import make_transport as make_smpp
from aftercalld.store import Outbox, Transition

FAILOVER_AFTER = 0.3


def smpp_settings(port: int) -> SmppSettings:
    return SmppSettings(hosts=(("127.0.0.1", port),), system_id="esme", password="secret", response_timeout=1.0,
                        connect_timeout=1.0, reconnect_min=0.05, reconnect_max=0.2, probe_interval=0.05)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def sim(tmp_path) -> AsyncIterator[ModemSim]:
    s = ModemSim(tmp_path / "ttyUSB-gsm")
    s.plug()
    yield s
    s.close()


@pytest.fixture
async def dispatch(tmp_path) -> AsyncIterator[Callable]:
    running: list[tuple[Dispatcher, Outbox]] = []

    async def start(transport: RoutedTransport) -> tuple[Outbox, Callable, Callable]:
        outbox = Outbox.open(tmp_path / "outbox.sqlite3")
        settled: list[Transition] = []
        changed = asyncio.Event()

        def seen(t: Transition) -> None:
            settled.append(t)
            changed.set()

        dispatcher = Dispatcher(outbox, transport, DispatchConfig(retry_initial_seconds=0.05, retry_max_seconds=0.2),
                                on_transition=seen)
        await dispatcher.start()
        running.append((dispatcher, outbox))

        async def until(count: int, timeout: float = 10.0) -> None:
            async def wait() -> None:
                while len(settled) < count:
                    changed.clear()
                    await changed.wait()
            await asyncio.wait_for(wait(), timeout)

        return outbox, until, dispatcher.wake

    yield start
    for dispatcher, outbox in running:
        await dispatcher.stop(timeout=2)
        outbox.close()


async def test_the_modem_takes_the_texts_of_a_provider_that_is_down(sim, dispatch):
    transport = RoutedTransport([(make_smpp(smpp_settings(closed_port()), "provider"), FAILOVER_AFTER),
                                 (make_modem(fast_settings(sim.link), "gsm1"), FAILOVER_AFTER)])
    outbox, until, wake = await dispatch(transport)
    enqueue(outbox, ["Sorry we missed your call", "We will ring you back"])
    wake()
    await until(2)
    assert {(m["state"], m["transport"]) for m in outbox.messages()} == {("submitted", "gsm1")}
    # Both waited for the provider and move on together: the modem takes them in either order.
    assert sorted(sim.texts()) == ["Sorry we missed your call", "We will ring you back"]
    provider = transport.members[0]
    assert provider.passed_over and provider.failed_over == 2


async def test_a_number_the_modem_cannot_text_goes_to_the_smsc(sim, dispatch):
    smsc = SmscSim()
    await smsc.start()
    try:
        transport = RoutedTransport([(make_modem(fast_settings(sim.link), "gsm1"), FAILOVER_AFTER),
                                     (make_smpp(smpp_settings(smsc.port), "provider"), FAILOVER_AFTER)])
        outbox, until, wake = await dispatch(transport)
        await sim.wait_for(lambda: transport.members[0].transport.is_up())
        sim.cms_errors.append(1)  # "unassigned (unallocated) number": permanent, about this number
        enqueue(outbox, ["Sorry we missed your call"])
        wake()
        await until(1)
        [row] = outbox.messages()
        assert (row["state"], row["transport"]) == ("submitted", "provider")
        assert [s.destination for s in smsc.accepted] == ["447700900123"] and sim.texts() == []
    finally:
        await smsc.stop()

"""A dispatcher on a shared (PostgreSQL) outbox keeps the leases of the texts it is sending,
however long the SMSC takes to answer: another instance never claims them meanwhile.

Real pieces throughout: two PgOutbox instances on one database, the dispatcher, the SMPP
transport and the SMSC simulator holding its answers for as long as the test wants. The
dispatcher's clock is the test's, so a lease runs out when the test says, not after a wait.
"""
from __future__ import annotations

import asyncio
import logging

import pytest
from smpp_util import settings
from smsc_sim import SmscSim
from test_store_contract import T0, TTL, entry, record

from aftercalld.config import DispatchConfig
from aftercalld.dispatcher import RENEWALS_PER_LEASE, Dispatcher
from aftercalld.model import MessageState
from aftercalld.smpp.transport import SmppTransport
from aftercalld.store import Transition

LEASE = 0.3  # wall seconds between renewals: a third of it


class Clock:
    """The test's clock: moved by hand, past a lease in one step."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Instance:
    """A dispatcher on the shared outbox, sending over SMPP to the simulator."""

    def __init__(self, outbox, sim: SmscSim, clock: Clock, lease_seconds: float) -> None:
        self.outbox = outbox
        self.states: list[MessageState] = []
        self._changed = asyncio.Event()
        transport = SmppTransport(settings(sim.port, response_timeout=60.0))
        self.dispatcher = Dispatcher(outbox, transport, DispatchConfig(), clock=clock,
                                     lease_seconds=lease_seconds, on_transition=self._seen)

    def _seen(self, t: Transition) -> None:
        self.states.append(t.state)
        self._changed.set()

    async def until(self, state: MessageState) -> None:
        async with asyncio.timeout(10):
            while state not in self.states:
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
async def two(pg_dsn):
    """host-a and host-b on one database, an SMSC that holds its answers, and a clock."""
    from aftercalld.store.postgres import PgOutbox

    sim = SmscSim()
    await sim.start()
    sim.holding = True
    a = await PgOutbox.open(pg_dsn, instance="host-a")
    b = await PgOutbox.open(pg_dsn, instance="host-b")
    yield a, b, sim, Clock(T0)
    sim.release()
    await sim.stop()
    await a.close()
    await b.close()


async def lease_of(outbox, message_id: int) -> tuple[str, float]:
    row = next(r for r in await outbox.messages() if r["id"] == message_id)
    return row["claimed_by"], row["lease_until"]


async def lease_reaches(outbox, message_id: int, until: float) -> None:
    """Until the renewal that runs every third of a lease has pushed the lease to `until`."""
    async with asyncio.timeout(10):
        while (await lease_of(outbox, message_id))[1] < until:
            await asyncio.sleep(LEASE / RENEWALS_PER_LEASE / 2)


async def test_a_send_slower_than_its_lease_is_not_claimed_by_another_instance(two):
    a, b, sim, clock = two
    await a.record_calls([entry(record("c1"))], ttl_seconds=TTL, now=T0)
    sending = Instance(a, sim, clock, LEASE)
    await sending.dispatcher.start()
    try:
        await sim.wait_until(lambda: len(sim.held) == 1)  # submit_sm taken, not answered
        (row,) = await b.messages()
        assert (row["state"], row["claimed_by"], row["lease_until"]) == ("sending", "host-a", T0 + LEASE)
        # Half a lease at a time, each within the lease the last renewal gave (host-a's own
        # claim loop would take back a lapsed one), and together far past the first.
        for _ in range(10):
            clock.now += LEASE / 2
            await lease_reaches(b, row["id"], clock.now + LEASE)
            assert await b.claim_due(10, clock.now, lease_seconds=LEASE) == []
        assert clock.now > T0 + 4 * LEASE
        sim.release()
        await sending.until(MessageState.SUBMITTED)
        assert sim.accepted_count == 1 and sim.held == []
        assert await b.claim_due(10, clock.now + 100 * LEASE) == []
        (row,) = await b.messages()
        assert (row["state"], row["claimed_by"], row["attempts"]) == ("submitted", "host-a", 1)
    finally:
        await sending.dispatcher.stop(timeout=2)


async def sending_past_its_lease(a, sim, clock) -> Instance:
    """host-a sending one text the SMSC holds, with renewals 20 s apart, and the clock
    moved past the text's 60 s lease before the next renewal."""
    await a.record_calls([entry(record("c1"))], ttl_seconds=TTL, now=T0)
    sending = Instance(a, sim, clock, 60.0)
    await sending.dispatcher.start()
    try:
        await sim.wait_until(lambda: len(sim.held) == 1)
    except BaseException:
        await sending.dispatcher.stop(timeout=2)
        raise
    clock.now += 61
    return sending


async def test_a_lease_another_instance_took_is_logged_once_and_the_text_recorded_once(two, caplog):
    a, b, sim, clock = two
    # host-b claims between two renewals, as after a stall of host-a's.
    sending = await sending_past_its_lease(a, sim, clock)
    try:
        (taken,) = await b.claim_due(10, clock.now)
        with caplog.at_level(logging.WARNING, logger="aftercalld.dispatcher"):
            await sending.dispatcher._renew_once()
            await sending.dispatcher._renew_once()  # renewed no more, and not told twice
        lost = [r.getMessage() for r in caplog.records if "lease ran out" in r.getMessage()]
        assert lost == [f"message {taken.id} to +447400123456: lease ran out while sending; "
                        "another instance may send it too"]
        assert (await lease_of(b, taken.id)) == ("host-b", clock.now + 60)
        sim.release()
        await sending.until(MessageState.SUBMITTED)
        assert sim.accepted_count == 1  # host-b has no transport here: it never sends
    finally:
        await sending.dispatcher.stop(timeout=2)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


class LogWatch(logging.Handler):
    """The dispatcher's log records, and a way to await one."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []
        self._changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self._changed.set()

    def lines(self, part: str) -> list[str]:
        return [r.getMessage() for r in self.records if part in r.getMessage()]

    async def until(self, part: str) -> None:
        async with asyncio.timeout(10):
            while not self.lines(part):
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
def watch():
    handler = LogWatch()
    logger = logging.getLogger("aftercalld.dispatcher")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


async def test_renewals_failing_while_the_outbox_is_unreachable_are_logged_once(two, pg_dsn, watch):
    a, b, sim, clock = two
    await a.record_calls([entry(record("c1"))], ttl_seconds=TTL, now=T0)
    sending = Instance(a, sim, clock, LEASE)
    await sending.dispatcher.start()
    try:
        await sim.wait_until(lambda: len(sim.held) == 1)
        await a.conn.close()
        a._dsn = "postgresql://aftercalld@127.0.0.1:1/aftercalld"  # refused: as a server gone away
        await watch.until("cannot renew the leases")
        await asyncio.sleep(5 * LEASE / RENEWALS_PER_LEASE)  # what is awaited: renewals failing again
        assert len(watch.lines("cannot renew the leases")) == 1
        a._dsn = pg_dsn
        await watch.until("renewed again")
        clock.now += LEASE / 2  # within the lease: the claim loop must not take it back
        await lease_reaches(b, (await b.messages())[0]["id"], clock.now + LEASE)
        sim.release()
        await sending.until(MessageState.SUBMITTED)
        assert sim.accepted_count == 1
        assert len(watch.lines("cannot renew the leases")) == 1 and not watch.lines("lease ran out")
    finally:
        await sending.dispatcher.stop(timeout=2)


async def test_a_lapsed_lease_the_claim_loop_takes_back_is_not_sent_twice(two, watch):
    a, b, sim, clock = two
    # The lease lapses before the next renewal, as after an outage.
    sending = await sending_past_its_lease(a, sim, clock)
    try:
        sending.dispatcher.wake()
        await watch.until("claimed back, not sent twice")
        (row,) = await b.messages()
        assert (row["claimed_by"], row["attempts"], row["lease_until"]) == ("host-a", 2, clock.now + 60)
        sim.release()
        await sending.until(MessageState.SUBMITTED)
        await sending.dispatcher.wait_idle()
        assert sim.accepted_count == 1 and sim.submits_seen == 1
        (row,) = await b.messages()
        assert row["state"] == "submitted"
    finally:
        await sending.dispatcher.stop(timeout=2)

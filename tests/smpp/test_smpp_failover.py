"""Routes and failover between two SMSC simulators over real sockets: the outbox, the
dispatcher, routing and two SMPP transports as the daemon wires them."""
from __future__ import annotations

import asyncio
import socket
from collections import Counter
from pathlib import Path

import pytest
from smpp_util import LogWaiter, enqueue
from smsc_sim import SmscSim

from aftercalld.config import Config, load
from aftercalld.daemon import make_transport
from aftercalld.dispatcher import Dispatcher
from aftercalld.model import MessageState
from aftercalld.routing import RoutedTransport
from aftercalld.store import Outbox, Transition

FAILOVER_AFTER = 0.4

CONFIG = '''
[general]
timezone = "UTC"
default_region = "GB"
allowed_countries = ["*"]
outbox = "{outbox}"

[dispatch]
retry_initial_seconds = 0.05
retry_max_seconds = 0.2

[[transport]]
name = "primary"
type = "smpp"
hosts = ["127.0.0.1:{primary}"]
system_id = "esme"
password = "secret"
response_timeout = 1.0
connect_timeout = 1.0
reconnect_min = 0.05
reconnect_max = 0.2
probe_interval = 0.05
failover_after = {failover_after}

[[transport]]
name = "secondary"
type = "smpp"
hosts = ["127.0.0.1:{secondary}"]
system_id = "esme"
password = "secret"
response_timeout = 1.0
reconnect_min = 0.05
reconnect_max = 0.2

[[rules]]
name = "missed"
recipients = ["caller"]
when = {{ status = "missed" }}
caller = {{ text = "Sorry we missed your call", sender = "ACME" }}
{routes}
'''


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Run:
    """An outbox, the daemon's transport for the config, and a dispatcher between them."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.outbox = Outbox.open(config.outbox_path)
        self.transport = make_transport(config)
        assert isinstance(self.transport, RoutedTransport)
        self.settled: Counter[MessageState] = Counter()
        self._watchers: list[tuple[int, MessageState, asyncio.Future]] = []
        self.dispatcher = Dispatcher(self.outbox, self.transport, config.dispatch, on_transition=self._seen)

    def _seen(self, t: Transition) -> None:
        self.settled[t.state] += 1
        for count, state, fut in self._watchers:
            if not fut.done() and self.settled[state] >= count:
                fut.set_result(None)

    async def until(self, count: int, state: MessageState = MessageState.SUBMITTED, timeout: float = 15.0) -> None:
        if self.settled[state] >= count:
            return
        fut = asyncio.get_running_loop().create_future()
        self._watchers.append((count, state, fut))
        await asyncio.wait_for(fut, timeout)

    def queue(self, count: int, destination: str = "+447700900{:03d}") -> None:
        enqueue(self.outbox, ["Sorry we missed your call"] * count, destination=destination)
        self.dispatcher.wake()

    def rows(self) -> list[dict]:
        return sorted(self.outbox.messages(), key=lambda m: m["id"])

    def member(self, name: str):
        return next(m for m in self.transport.members if m.name == name)


@pytest.fixture
async def run_for(tmp_path: Path):
    runs: list[Run] = []

    async def start(primary: int, secondary: int, routes: str = "", failover_after: float = FAILOVER_AFTER) -> Run:
        path = tmp_path / "aftercalld.toml"
        path.write_text(CONFIG.format(outbox=tmp_path / "outbox.sqlite3", primary=primary, secondary=secondary,
                                      routes=routes, failover_after=failover_after))
        run = Run(load(path))
        await run.dispatcher.start()
        runs.append(run)
        return run

    yield start
    for run in runs:
        await run.dispatcher.stop(timeout=2)
        run.outbox.close()


@pytest.fixture
async def sims():
    started: list[SmscSim] = []

    async def make(**kw) -> SmscSim:
        sim = SmscSim(**kw)
        await sim.start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        await sim.stop()


async def test_primary_down_at_start_texts_go_via_the_secondary_once_failover_after_passed(run_for, sims):
    secondary = await sims()
    run = await run_for(closed_port(), secondary.port)
    loop = asyncio.get_running_loop()
    queued_at = loop.time()
    run.queue(10)
    await run.until(10)
    # Not before the primary has been down for failover_after (counted from the start).
    assert loop.time() - queued_at >= FAILOVER_AFTER * 0.9
    assert {r["transport"] for r in run.rows()} == {"secondary"}
    assert secondary.accepted_count == 10
    primary = run.member("primary")
    assert primary.passed_over and primary.failed_over == 10 and primary.submitted == 0
    assert run.member("secondary").submitted == 10
    status = {t["name"]: t for t in run.transport.status()["transports"]}
    assert status["primary"]["up"] is False and status["primary"]["passed_over"] is True
    assert status["secondary"]["up"] is True and status["secondary"]["state"] == "bound"


async def test_primary_killed_mid_run_then_back(run_for, sims):
    primary = await sims()
    secondary = await sims()
    run = await run_for(primary.port, secondary.port)
    await primary.wait_until(lambda: len(primary.bound()) == 1)
    run.queue(20)
    await run.until(20)
    assert {r["transport"] for r in run.rows()} == {"primary"} and primary.accepted_count == 20

    await primary.stop()  # the SMSC dies: its links drop, its port refuses
    run.queue(20, destination="+447700901{:03d}")
    await run.until(40)
    later = run.rows()[20:]
    assert {r["transport"] for r in later} == {"secondary"} and secondary.accepted_count == 20
    assert run.member("primary").passed_over

    back = SmscSim()  # the primary comes back on its address: its texts return to it
    up_again = LogWaiter("transport primary is up again")
    await back.start(port=primary.port)
    try:
        await up_again.wait()
        run.queue(5, destination="+447700902{:03d}")
        await run.until(45)
        assert {r["transport"] for r in run.rows()[40:]} == {"primary"} and back.accepted_count == 5
    finally:
        await back.stop()
    states = Counter(r["state"] for r in run.rows())
    assert states == {"submitted": 45}


async def test_a_destination_the_primary_rejects_goes_via_the_secondary(run_for, sims):
    primary = await sims(fail_destinations={"447700900003": 0x0B, "447700900004": 0x0B})
    secondary = await sims(fail_destinations={"447700900004": 0x0B})
    run = await run_for(primary.port, secondary.port)
    await primary.wait_until(lambda: len(primary.bound()) == 1)
    await secondary.wait_until(lambda: len(secondary.bound()) == 1)
    run.queue(5)
    await run.until(4)
    await run.until(1, MessageState.FAILED)
    by_destination = {r["destination"]: r for r in run.rows()}
    assert by_destination["+447700900003"]["transport"] == "secondary"
    assert by_destination["+447700900003"]["state"] == "submitted"
    failed = by_destination["+447700900004"]
    assert failed["state"] == "failed" and failed["transport"] == "secondary"
    assert failed["reason"] == "primary: ESME_RINVDSTADR; secondary: ESME_RINVDSTADR"
    assert [by_destination[f"+44770090000{i}"]["transport"] for i in (0, 1, 2)] == ["primary"] * 3
    assert run.member("primary").failed_over == 2


async def test_transient_errors_retry_on_the_same_transport_and_part_sent_texts_never_fail_over(run_for, sims):
    # Submit 1: ESME_RSYSERR (transient; 2 is its retry); submit 4: the second part of a long text, rejected.
    primary = await sims(fail_nth={1: 0x08, 4: 0x0B})
    secondary = await sims()
    run = await run_for(primary.port, secondary.port)
    await primary.wait_until(lambda: len(primary.bound()) == 1)
    await secondary.wait_until(lambda: len(secondary.bound()) == 1)
    run.queue(1)
    await run.until(1)
    [short] = run.rows()
    assert (short["transport"], short["attempts"]) == ("primary", 1)  # retried within the transport
    enqueue(run.outbox, ["Sorry we missed your call. " * 8], destination="+447700900777")  # two parts
    run.dispatcher.wake()
    await run.until(1, MessageState.FAILED)
    long = run.rows()[1]
    assert long["state"] == "failed" and long["transport"] == "primary"
    assert long["reason"] == "ESME_RINVDSTADR part 2/2"
    assert secondary.accepted_count == 0  # the first part is out: another SMSC would text it twice


async def test_route_by_prefix_and_country(run_for, sims):
    routes = '''
[[route]]
name = "US by the secondary"
prefixes = ["+1"]
transports = ["secondary"]

[[route]]
name = "Ireland"
countries = ["IE"]
transports = ["secondary", "primary"]
'''
    primary = await sims()
    secondary = await sims()
    run = await run_for(primary.port, secondary.port, routes=routes)
    await primary.wait_until(lambda: len(primary.bound()) == 1)
    await secondary.wait_until(lambda: len(secondary.bound()) == 1)
    run.queue(3, destination="+12025550{:03d}")
    run.queue(3, destination="+447700900{:03d}")
    run.queue(3, destination="+353861234{:03d}")
    await run.until(9)
    by_transport = Counter((r["destination"][:3], r["transport"]) for r in run.rows())
    assert by_transport == {("+12", "secondary"): 3, ("+44", "primary"): 3, ("+35", "secondary"): 3}
    assert sorted(s.destination[:2] for s in secondary.accepted) == ["12"] * 3 + ["35"] * 3
    assert {s.destination[:2] for s in primary.accepted} == {"44"}


async def test_receipts_and_replies_from_either_smsc_settle_their_own_messages(run_for, sims):
    # Both SMSCs number their message ids from 1. The secondary's receipts come after the
    # primary has taken newer texts under the same ids: each must settle its own SMSC's text.
    primary = await sims(receipts="tlv")
    secondary = await sims(receipt_stat=lambda s: ("UNDELIV", "001"))
    routes = '[[route]]\nprefixes = ["+1"]\ntransports = ["secondary"]\n'
    run = await run_for(primary.port, secondary.port, routes=routes)
    await primary.wait_until(lambda: len(primary.bound()) == 1)
    await secondary.wait_until(lambda: len(secondary.bound()) == 1)
    run.queue(3, destination="+12025550{:03d}")
    await run.until(3)
    run.queue(3)
    await run.until(3, MessageState.DELIVERED)
    secondary.receipts = "tlv"
    for submit in secondary.accepted:
        secondary._send_receipt(submit)
    await run.until(3, MessageState.UNDELIVERABLE)
    states = Counter((r["transport"], r["state"]) for r in run.rows())
    assert states == {("primary", "delivered"): 3, ("secondary", "undeliverable"): 3}
    assert await secondary.send_mo("12025550001", "STOP") == 0  # answered once it is recorded
    assert run.outbox.opted_out_among(["+12025550001"]) == {"+12025550001"}

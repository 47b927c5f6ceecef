"""Re-binding after the SMSC went away, against the simulator over real sockets.

An SMSC that cannot be reached at all (connection refused) is probed every `probe_interval`,
so a re-bind follows within about that long once it is back, however long it was down; an
SMSC that answers binds with an error meets the growing backoff up to `reconnect_max`, and
its refusal is logged once, not on every try.
"""
from __future__ import annotations

import asyncio
import logging

import pytest
from smpp_util import Events, settings, start_bound
from smsc_sim import SmscSim

from aftercalld.smpp import make_transport

PROBE = 0.1  # seconds between connects while the SMSC is unreachable
CAP = 1.0  # the backoff's ceiling (reconnect_max); the SMSC stays down for longer


def attempts(caplog) -> list[float]:
    """When the transport tried to connect and failed (each try logs, repeats at debug)."""
    return [r.created for r in caplog.records if "cannot bind to" in r.getMessage()]


async def until(predicate, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def test_an_smsc_back_after_a_long_outage_is_bound_within_the_probe_interval(caplog):
    caplog.set_level(logging.DEBUG, logger="aftercalld")
    sim = SmscSim()
    port = await sim.start()
    transport = make_transport(settings(port, reconnect_min=0.05, reconnect_max=CAP, probe_interval=PROBE))
    try:
        await start_bound(transport, Events())
        await sim.stop()  # the SMSC goes down: its port refuses connections
        # Down for 2.5 times the backoff's ceiling: the old backoff would have grown to it.
        await until(lambda: len(attempts(caplog)) >= 1)
        down_since = attempts(caplog)[0]
        await until(lambda: attempts(caplog)[-1] - down_since >= 2.5 * CAP)
        tries = attempts(caplog)
        gaps = [b - a for a, b in zip(tries, tries[1:], strict=False)]
        assert max(gaps) < PROBE + 0.35, gaps  # never the growing backoff (at its cap: 0.5 s to 1 s)
        await sim.start(port=port)
        loop = asyncio.get_running_loop()
        back = loop.time()
        await sim.wait_until(lambda: len(sim.bound()) == 1, timeout=CAP * 5)
        assert loop.time() - back < PROBE + 0.4
        assert await transport.until_bound(5)
        # One warning for the outage, not one per probe.
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "cannot bind to" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert f"trying to connect every {PROBE:g}s" in warnings[0].getMessage()
    finally:
        await transport.close()
        await sim.stop()


@pytest.mark.parametrize("status,name", [(0x0D, "ESME_RBINDFAIL"), (0x0E, "ESME_RINVPASWD")])
async def test_an_smsc_refusing_binds_sees_them_no_more_often_than_the_backoff_allows(caplog, status, name):
    caplog.set_level(logging.DEBUG, logger="aftercalld")
    sim = SmscSim(bind_statuses=[status] * 1000)
    port = await sim.start()
    # A probe interval far below reconnect_min: refusals must not be retried at its pace.
    transport = make_transport(settings(port, reconnect_min=0.05, reconnect_max=0.4, probe_interval=0.01))
    try:
        await transport.start(Events())
        await asyncio.sleep(2.0)  # the window over which binds are counted
        binds = len(sim.binds)
    finally:
        await transport.close()
        await sim.stop()
    # Backoff with jitter (half to full delay): 0.05, 0.1, 0.2, then 0.4 at most; in 2 s that
    # is at most 1 + 3 + (2 - 0.175) / 0.2 = 13 binds. Probing at 0.01 s would be ~200.
    assert 3 <= binds <= 13, binds
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and "refused" in r.getMessage()]
    assert len(errors) == 1, [r.getMessage() for r in errors]  # once per state change
    assert name in errors[0].getMessage() and "retrying with backoff (up to 0.4s)" in errors[0].getMessage()

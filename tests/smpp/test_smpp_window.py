"""Window, throughput and submit outcomes against the simulator: throttling, a link dropped
mid-window, rate limits, response timeouts, and the status → outcome mapping."""
from __future__ import annotations

import asyncio
import collections
import time

import pytest
from smpp_util import Events, message, settings, start_bound
from smsc_sim import SmscSim, reassemble

from aftercalld.model import OutcomeKind
from aftercalld.smpp import make_transport


async def send_all(transport, messages):
    """What the dispatcher does: keep up to max_in_flight sends outstanding."""
    gate = asyncio.Semaphore(transport.max_in_flight)

    async def one(m):
        async with gate:
            return await transport.send(m)

    return await asyncio.gather(*(one(m) for m in messages))


async def with_transport(sim: SmscSim, **overrides):
    await sim.start()
    t = make_transport(settings(sim.port, **overrides))
    await start_bound(t, Events())
    return t


async def test_thousand_messages_one_in_seven_throttled_each_submitted_once():
    sim = SmscSim(throttle=lambda n: n % 7 == 0)
    t = await with_transport(sim, sessions=2, window=10)
    try:
        texts = [f"Thanks for calling, ref {i}" + (" and more" * 30 if i % 10 == 0 else "")
                 for i in range(1000)]
        outcomes = await send_all(t, [message(x) for x in texts])
        assert [o.kind for o in outcomes] == [OutcomeKind.SUBMITTED] * 1000
        assert sim.throttled > 100
        shown = collections.Counter(r.text for r in reassemble(sim.accepted))
        assert shown == collections.Counter(texts)  # every text exactly once
        # the ids handed back are the SMSC's ids for the right parts
        by_id = {s.message_id: s for s in sim.accepted}
        assert len(by_id) == len(sim.accepted)
        for text, outcome in zip(texts, outcomes, strict=True):
            parts = [by_id[mid] for mid in outcome.message_ids]
            assert b"".join(p.short_message[6:] if p.esm_class & 0x40 else p.short_message
                           for p in parts).decode("gsm03.38") == text
        assert t.status()["throttled"] == sim.throttled
    finally:
        await t.close()
        await sim.stop()


async def test_link_dropped_mid_window_loses_nothing():
    sim = SmscSim(response_delay=0.02, drop_after=25)
    t = await with_transport(sim, sessions=1, window=10)
    try:
        texts = [f"message {i}" for i in range(100)]
        outcomes = await send_all(t, [message(x) for x in texts])
        assert all(o.kind is OutcomeKind.SUBMITTED for o in outcomes), outcomes
        assert len(sim.binds) == 2  # dropped once, re-bound
        assert sim.submits_seen > 100  # the unanswered window was sent again
        shown = collections.Counter(r.text for r in reassemble(sim.accepted))
        assert shown == collections.Counter(texts)
        assert t.status()["link_retries"] >= 1
    finally:
        await t.close()
        await sim.stop()


async def test_window_is_filled_and_never_exceeded():
    sim = SmscSim(response_delay=0.02)
    t = await with_transport(sim, sessions=1, window=5)
    try:
        outcomes = await send_all(t, [message(f"m{i}") for i in range(40)])
        assert all(o.kind is OutcomeKind.SUBMITTED for o in outcomes)
        assert sim.max_inflight == 5
    finally:
        await t.close()
        await sim.stop()


async def test_transport_window_holds_even_with_more_senders_than_slots():
    # The dispatcher may over-commit (multi-part messages take a slot per part in turn).
    sim = SmscSim(response_delay=0.01)
    t = await with_transport(sim, sessions=2, window=3)
    try:
        outcomes = await asyncio.gather(*(t.send(message("p" * 300)) for _ in range(20)))
        assert all(o.kind is OutcomeKind.SUBMITTED for o in outcomes)
        assert sim.max_inflight <= 3
    finally:
        await t.close()
        await sim.stop()


@pytest.mark.parametrize("limits", [{"session_rate": 50.0}, {"account_rate": 50.0, "sessions": 2}])
async def test_rate_limits(limits):
    sim = SmscSim()
    t = await with_transport(sim, **limits)
    try:
        started = time.monotonic()
        outcomes = await send_all(t, [message(f"r{i}") for i in range(30)])
        elapsed = time.monotonic() - started
        assert all(o.kind is OutcomeKind.SUBMITTED for o in outcomes)
        # 30 submits at 50/s with a burst of 5: at least 25 intervals of 20 ms
        assert elapsed >= 0.45, elapsed
    finally:
        await t.close()
        await sim.stop()


def copies(sim: SmscSim) -> collections.Counter:
    """How many times the SMSC took each part: (destination, part number) → submits."""
    return collections.Counter(
        (s.destination, s.short_message[5] if s.esm_class & 0x40 else 1) for s in sim.accepted)


async def test_a_slow_smsc_is_waited_for_not_flooded_with_copies():
    # The SMSC answers after 2.5 × response_timeout: each submit is still taken once, its
    # late ESME_ROK settles the part, and the window is never exceeded.
    sim = SmscSim(response_delay=0.5)
    t = await with_transport(sim, response_timeout=0.2, window=10)
    try:
        texts = [f"slow {i} " + ("and long " * 20 if i % 2 else "") for i in range(20)]
        outcomes = await send_all(t, [message(x, destination=f"+447700900{i:03d}")
                                      for i, x in enumerate(texts)])
        assert [o.kind for o in outcomes] == [OutcomeKind.SUBMITTED] * 20
        assert sum(len(o.message_ids) for o in outcomes) == 30
        assert set(copies(sim).values()) == {1}
        assert sim.accepted_count == 30
        # the ids handed back are those the SMSC gave in its late answers
        assert {m for o in outcomes for m in o.message_ids} == {s.message_id for s in sim.accepted}
        assert sim.max_inflight <= 10
        assert len(sim.binds) == 1
        status = t.status()
        assert status["late_responses"] == status["response_timeouts"] == 30
    finally:
        await t.close()
        await sim.stop()


async def test_a_submit_never_answered_reaches_the_smsc_at_most_twice():
    # The SMSC takes every submit to one number and never answers: the link is dropped
    # after OVERDUE_LIMIT × response_timeout, the part goes once more on the next bind,
    # and then the message fails instead of being sent a third time.
    sim = SmscSim(silent_destinations={"447700900999"})
    t = await with_transport(sim, response_timeout=0.1, part_attempts=5)
    try:
        out = await t.send(message("lost answers", destination="+447700900999"))
        assert out.kind is OutcomeKind.PERMANENT
        assert out.reason.startswith("2 submits never answered") and "may have taken them" in out.reason
        assert copies(sim) == {("447700900999", 1): 2}
        assert t.status()["unanswered_given_up"] == 1
        # the link is re-bound and works for everyone else
        assert (await t.send(message())).kind is OutcomeKind.SUBMITTED
    finally:
        await t.close()
        await sim.stop()


async def test_smsc_unbind_with_a_full_window_waits_for_the_answers():
    # The SMSC unbinds while it holds a full window of submits it has taken. Answering the
    # unbind at once closes the link before their responses: each would be sent again.
    sim = SmscSim(response_delay=0.3, keep_unanswered=True)
    t = await with_transport(sim, window=10)
    try:
        texts = [f"unbind {i}" for i in range(30)]
        sending = asyncio.ensure_future(send_all(t, [message(x, destination=f"+447700900{i:03d}")
                                                     for i, x in enumerate(texts)]))
        await sim.wait_until(lambda: sim.bound() and sim.bound()[0].inflight == 10)
        await sim.unbind_all()  # returns with our unbind_resp
        outcomes = await sending
        assert all(o.kind is OutcomeKind.SUBMITTED for o in outcomes)
        assert len(sim.binds) == 2
        assert copies(sim) == {(f"447700900{i:03d}", 1): 1 for i in range(30)}
    finally:
        await t.close()
        await sim.stop()


async def test_status_mapping_to_outcomes():
    sim = SmscSim(fail_destinations={"447700900001": 0x0B, "447700900002": 0x08,
                                     "447700900003": 0x0A, "447700900004": 0x401,
                                     "447700900005": 0x14},
                  nack_destinations={"447700900006"})
    t = await with_transport(sim, part_attempts=3, transient_statuses=frozenset({0x401}))
    try:
        invalid_dest = await t.send(message(destination="+447700900001"))
        assert invalid_dest.kind is OutcomeKind.PERMANENT and invalid_dest.reason == "ESME_RINVDSTADR"
        syserr = await t.send(message(destination="+447700900002"))
        assert syserr.kind is OutcomeKind.TRANSIENT and syserr.reason == "ESME_RSYSERR"
        assert sim.submits_seen == 1 + 3  # retried part_attempts times
        invalid_src = await t.send(message(destination="+447700900003"))
        assert invalid_src.kind is OutcomeKind.PERMANENT and invalid_src.reason == "ESME_RINVSRCADR"
        vendor = await t.send(message(destination="+447700900004"))
        assert vendor.kind is OutcomeKind.TRANSIENT and vendor.reason == "0x00000401"
        queue_full = await t.send(message(destination="+447700900005"))
        assert queue_full.kind is OutcomeKind.TRANSIENT and queue_full.reason == "ESME_RMSGQFUL"
        assert queue_full.retry_after == pytest.approx(0.01)
        nack = await t.send(message(destination="+447700900006"))
        assert nack.kind is OutcomeKind.PERMANENT and nack.reason == "generic_nack ESME_RINVCMDLEN"
        # the session survived all of that
        assert (await t.send(message())).kind is OutcomeKind.SUBMITTED
        assert len(sim.binds) == 1
    finally:
        await t.close()
        await sim.stop()


async def test_permanent_failure_names_the_part():
    sim = SmscSim(throttle=None)
    t = await with_transport(sim)
    try:
        sim.fail_destinations = {}
        out = await t.send(message("z" * 400, destination="+447700900009"))
        assert out.kind is OutcomeKind.SUBMITTED and len(out.message_ids) == 3
        sim.fail_destinations = {"447700900009": 0x0B}
        out = await t.send(message("z" * 400, destination="+447700900009"))
        assert out.kind is OutcomeKind.PERMANENT and out.reason == "ESME_RINVDSTADR part 1/3"
    finally:
        await t.close()
        await sim.stop()


async def test_status_and_prometheus_metrics():
    from prometheus_client import CollectorRegistry, generate_latest

    from aftercalld.smpp.metrics import register_metrics

    sim = SmscSim(throttle=lambda n: n == 2)
    t = await with_transport(sim, sessions=2)
    try:
        await sim.wait_until(lambda: len(sim.bound()) == 2)
        assert t.status()["state"] == "bound"
        for i in range(3):
            await t.send(message(f"m{i}"))
        registry = CollectorRegistry()
        register_metrics(registry, t)
        text = generate_latest(registry).decode()
        assert 'aftercalld_smpp_sessions_bound{transport="smpp"} 2.0' in text
        assert 'aftercalld_smpp_parts_submitted_total{transport="smpp"} 3.0' in text
        assert 'aftercalld_smpp_throttled_total{transport="smpp"} 1.0' in text
        assert 'aftercalld_smpp_binds_total{transport="smpp"} 2.0' in text
        # Errors by command_status, what a provider's support desk asks for.
        assert 'aftercalld_smpp_submit_errors_total{command_status="ESME_RTHROTTLED",transport="smpp"} 1.0' in text
    finally:
        await t.close()
        await sim.stop()
    assert t.status()["state"] == "closed"


async def test_parallel_sessions_share_the_load():
    sim = SmscSim(response_delay=0.01)
    t = await with_transport(sim, sessions=3, window=2)
    try:
        await sim.wait_until(lambda: len(sim.bound()) == 3)
        assert t.max_in_flight == 6
        outcomes = await send_all(t, [message(f"s{i}") for i in range(60)])
        assert all(o.kind is OutcomeKind.SUBMITTED for o in outcomes)
        per_conn = collections.Counter(s.conn for s in sim.accepted)
        assert len(per_conn) == 3 and min(per_conn.values()) >= 10, per_conn
        assert sim.max_inflight <= 2
    finally:
        await t.close()
        await sim.stop()


async def test_invalid_bind_status_rebinds_and_the_part_goes_through():
    sim = SmscSim(fail_nth={1: 0x04})  # ESME_RINVBNDSTS: "you are not bound"
    t = await with_transport(sim)
    try:
        out = await t.send(message())
        assert out.kind is OutcomeKind.SUBMITTED
        assert len(sim.binds) == 2 and len(sim.accepted) == 1
    finally:
        await t.close()
        await sim.stop()

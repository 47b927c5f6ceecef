"""The live source against a real event socket over TCP (tests/esl/esl_server.py)."""
from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import replace
from pathlib import Path

import pytest
from esl_server import TRACES, EslServer, trace_events

from aftercalld.esl import make_source
from aftercalld.esl.config import EslSettings
from aftercalld.esl.source import EslSource
from aftercalld.model import CallRecord, CallStatus
from aftercalld.pbxconfig import default_pbx

FAST = dict(reconnect_min=0.02, reconnect_max=0.1, connect_timeout=2.0)


def make(server: EslServer, **kw) -> EslSource:
    settings = EslSettings(port=server.port, password=kw.pop("password", "s3cret"), **{**FAST, **kw})
    return EslSource(replace(default_pbx("freeswitch", name="fs1"), settings=settings))


class Collector:
    def __init__(self) -> None:
        self.calls: list[CallRecord] = []
        self._changed = asyncio.Event()

    async def __call__(self, record: CallRecord) -> None:
        self.calls.append(record)
        self._changed.set()

    async def wait_for(self, n: int, timeout: float = 10.0) -> list[CallRecord]:
        async def wait() -> None:
            while len(self.calls) < n:
                self._changed.clear()
                await self._changed.wait()
        await asyncio.wait_for(wait(), timeout)
        return self.calls


@pytest.fixture
async def server():
    srv = await EslServer(password="s3cret").start()
    yield srv
    await srv.stop()


async def run_source(source: EslSource, sink: Collector) -> asyncio.Task:
    return asyncio.create_task(source.run(sink))


async def stop(task: asyncio.Task) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_replays_concurrent_trace_over_tcp(server: EslServer) -> None:
    source, sink = make(server), Collector()
    task = await run_source(source, sink)
    session = await server.session(0)
    assert session.commands[0] == "auth s3cret"
    assert session.format == "plain"
    assert "CHANNEL_HANGUP_COMPLETE" in session.subscription and "vm::maintenance" in session.subscription
    for raw in trace_events(TRACES / "mixed_concurrent.esl"):
        await session.send(raw)
    calls = await sink.wait_for(6)
    assert sorted(c.status.value for c in calls) == ["connected"] * 3 + ["missed"] * 2 + ["voicemail"]
    assert len({c.call_id for c in calls}) == 6
    assert source.status()["state"] == "connected"
    await stop(task)


async def test_json_subscription_and_filters(server: EslServer) -> None:
    filters = (("Core-UUID", "abc"), ("variable_domain_name", "a.test"))
    source, sink = make(server, events_format="json", filters=filters), Collector()
    task = await run_source(source, sink)
    session = await server.session(0)
    assert session.format == "json"
    assert session.filters == ["Core-UUID abc", "variable_domain_name a.test"]
    for raw in trace_events(TRACES / "inbound_voicemail.json.esl"):
        await session.send(raw)
    (call,) = await sink.wait_for(1)
    assert call.status is CallStatus.VOICEMAIL and call.voicemail_box == "1002@aftercall.test"
    await stop(task)


async def test_wrong_password_is_reported_once_and_retried(server: EslServer, caplog: pytest.LogCaptureFixture) -> None:
    source, sink = make(server, password="wrong"), Collector()
    with caplog.at_level(logging.INFO, logger="aftercalld.esl"):
        task = await run_source(source, sink)
        for _ in range(200):
            if server.auth_failures >= 3:
                break
            await asyncio.sleep(0.02)  # polling the peer's counter; no event to await here
        assert server.auth_failures >= 3
        status = source.status()
        assert status["state"] in ("reconnecting", "connecting")
        assert "password rejected" in status["last_error"]
        errors = [r for r in caplog.records if "password rejected" in r.getMessage()]
        assert len(errors) == 1 and errors[0].levelno == logging.ERROR
        assert "wrong" not in caplog.text  # the password itself never reaches the log
        # The admin fixes FreeSWITCH's side: the next attempt gets in.
        server.password = "wrong"
        session = await server.session(len(server.sessions), timeout=5)
        for raw in trace_events(TRACES / "ivr_abandon.esl"):
            await session.send(raw)
        await sink.wait_for(1)
    assert "connected to" in caplog.text and "was: password rejected" in caplog.text
    await stop(task)


async def test_server_restart_mid_call_gives_the_call_once(server: EslServer) -> None:
    events = trace_events(TRACES / "inbound_connected.esl")
    half = len(events) // 2
    source, sink = make(server), Collector()
    task = await run_source(source, sink)
    session = await server.session(0)
    for raw in events[:half]:
        await session.send(raw)
    port = server.port
    await server.stop()  # FreeSWITCH's event socket goes away mid-call (disconnect notice)
    restarted = await EslServer(password="s3cret", port=port).start()
    try:
        session = await restarted.session(0)
        # The same FreeSWITCH (same Core-UUID) carries on; a few events during the gap are lost.
        for raw in events[half + 3:]:
            await session.send(raw)
        for raw in events:  # a replayed stream must not produce a second record
            await session.send(raw)
        # Events are handled in order: once the next call is out, the duplicates are behind us.
        for raw in trace_events(TRACES / "ivr_abandon.esl"):
            await session.send(raw)
        call, after = await sink.wait_for(2)
        assert call.call_id == "8ce581dd-ae3c-47ac-9521-9e2fc6a157b8" and call.status is CallStatus.CONNECTED
        assert after.call_id == "93aeb987-659a-4902-b458-59b30ab54b20"
        assert len(sink.calls) == 2
        assert source.status()["connects"] == 2
    finally:
        await stop(task)
        await restarted.stop()


async def test_rude_rejection_names_the_acl(server: EslServer, caplog: pytest.LogCaptureFixture) -> None:
    server.reject = True
    source, sink = make(server), Collector()
    with caplog.at_level(logging.ERROR, logger="aftercalld.esl"):
        task = await run_source(source, sink)
        while "apply-inbound-acl" not in source.status()["last_error"]:
            await asyncio.sleep(0.01)
    assert "apply-inbound-acl" in caplog.text
    await stop(task)


async def test_nothing_listening_then_server_appears(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = EslSettings(port=port, password="s3cret", **FAST)
    source, sink = EslSource(replace(default_pbx("freeswitch"), settings=settings)), Collector()
    with caplog.at_level(logging.WARNING, logger="aftercalld.esl"):
        task = await run_source(source, sink)
        while source.status()["state"] != "reconnecting":
            await asyncio.sleep(0.01)
        server = await EslServer(password="s3cret", port=port).start()
        try:
            await server.session(0)
        finally:
            await stop(task)
            await server.stop()
    refused = [r for r in caplog.records if "cannot connect" in r.getMessage()]
    assert len(refused) == 1  # logged once, not once per retry


async def test_body_cut_short_then_reconnect(server: EslServer) -> None:
    events = trace_events(TRACES / "ivr_abandon.esl")
    source, sink = make(server), Collector()
    task = await run_source(source, sink)
    session = await server.session(0)
    # A message whose body stops half-way, then the connection drops.
    await session.send(events[0][: len(events[0]) // 2])
    await session.disconnect(notice=False)
    session = await server.session(1)
    for raw in events:
        await session.send(raw)
    (call,) = await sink.wait_for(1)
    assert call.status is CallStatus.MISSED
    await stop(task)


async def test_lying_content_length_is_survived(server: EslServer, caplog: pytest.LogCaptureFixture) -> None:
    good = trace_events(TRACES / "outbound_connected.esl")
    victim = trace_events(TRACES / "ivr_abandon.esl")
    source, sink = make(server), Collector()
    task = await run_source(source, sink)
    session = await server.session(0)
    head, body = victim[5].split(b"\n\n", 1)
    length = len(body)
    # Too long: swallows the start of the next message. Too short: the rest is out of step.
    await session.send(head.replace(f"Content-Length: {length}".encode(), f"Content-Length: {length + 40}".encode())
                       + b"\n\n" + body)
    await session.send(victim[6])
    await session.send(head.replace(f"Content-Length: {length}".encode(), f"Content-Length: {length - 300}".encode())
                       + b"\n\n" + body)
    await session.send(b"Content-Length: 99999999999\nContent-Type: text/event-plain\n\n")
    session = await server.session(1)  # the impossible length made the client reconnect
    for raw in good:
        await session.send(raw)
    (call,) = await sink.wait_for(1)
    assert call.call_id == "d2a23454-311a-42c8-b6fc-4dee4c4a5892"
    assert "out of range" in caplog.text
    await stop(task)


async def test_heartbeat_silence_means_dead_connection(server: EslServer) -> None:
    source = make(server)
    source.settings = replace(source.settings, heartbeat_timeout=0.2)
    task = await run_source(source, Collector())
    await server.session(0)
    await server.session(1, timeout=5)  # silent server: the client gave up on it and came back
    assert "nothing received" in source.status()["last_error"] or source.status()["connects"] >= 2
    await stop(task)


async def test_make_source_uses_pbx_settings(server: EslServer) -> None:
    settings = EslSettings(port=server.port, password="s3cret", **FAST)
    source = make_source(replace(default_pbx("freeswitch", name="pbx-a"), settings=settings))
    assert source.name == "pbx-a"
    sink = Collector()
    task = asyncio.create_task(source.run(sink))
    await server.session(0)
    await stop(task)


def test_settings_repr_hides_password() -> None:
    assert "s3cret" not in repr(EslSettings(password="s3cret"))
    assert "s3cret" not in EslSettings(password="s3cret").describe()


def test_traces_dir_found() -> None:
    assert Path(TRACES).is_dir()


async def test_call_already_up_at_connect_is_settled_by_the_idle_tick(server: EslServer) -> None:
    # aftercalld connects while a call is up; its agent leg ended before we were there.
    # No further events come, yet the call is reported once the short wait is over.
    events = trace_events(TRACES / "outbound_connected.esl")
    call_leg_end = next(raw for raw in events if b"CHANNEL_HANGUP_COMPLETE" in raw
                        and b"d2a23454-311a-42c8-b6fc-4dee4c4a5892" in raw.split(b"Unique-ID: ", 1)[1][:40])
    source, sink = make(server), Collector()
    source.tracker.PARTIAL_GRACE_SECONDS = 0.2
    task = await run_source(source, sink)
    session = await server.session(0)
    await session.send(call_leg_end)
    (call,) = await sink.wait_for(1, timeout=5)
    assert call.call_id == "d2a23454-311a-42c8-b6fc-4dee4c4a5892" and call.status is CallStatus.CONNECTED
    await stop(task)


# ---------------------------------------------------------------- issue 12: reconciliation

def before_first_end(events: list[bytes]) -> int:
    return next(i for i, raw in enumerate(events) if b"CHANNEL_HANGUP_COMPLETE" in raw)


async def test_call_begun_while_nobody_listened_is_adopted_and_needs_no_grace(server: EslServer, caplog) -> None:
    """A fresh process (after kill -9 or a restart) joined calls mid-way and held them 5 s
    in memory waiting for legs it never saw: a kill in that window lost them."""
    events = trace_events(TRACES / "inbound_connected.esl")
    cut = before_first_end(events)
    server.advance(events[:cut])  # the caller talks to 1001; nobody listens
    caplog.set_level(logging.INFO)
    source, sink = make(server), Collector()
    source.tracker.PARTIAL_GRACE_SECONDS = 60.0  # a joined call would wait that long
    task = await run_source(source, sink)
    try:
        session = await server.session(0)
        await asyncio.wait_for(_until(lambda: source.tracker.stats["adopted"] == 4), 5)  # two loopback halves, two legs
        for raw in events[cut:]:
            await session.send(raw)
        (record,) = await sink.wait_for(1, timeout=5)
        assert record.call_id == "8ce581dd-ae3c-47ac-9521-9e2fc6a157b8"
        assert (record.status, record.caller_number, record.dialled_number, record.agent_extension) == (
            CallStatus.CONNECTED, "9876543210", "18005550100", "1001")
        assert "adopted from FreeSWITCH's list of live channels" in caplog.text
        assert source.status()["calls_adopted"] == 4
    finally:
        await stop(task)


async def test_call_that_ended_while_the_link_was_down_is_recorded_with_what_is_known(server: EslServer) -> None:
    events = trace_events(TRACES / "inbound_connected.esl")
    cut = before_first_end(events)
    source, sink = make(server), Collector()
    task = await run_source(source, sink)
    try:
        session = await server.session(0)
        for raw in events[:cut]:
            await session.send(raw)
        await asyncio.wait_for(_until(lambda: source.tracker.active_calls() == 1), 5)
        await server.stop()  # the link is down ...
        server.advance(events[cut:])  # ... while the call ends
        await server.start()
        (record,) = await sink.wait_for(1, timeout=5)
        assert record.call_id == "8ce581dd-ae3c-47ac-9521-9e2fc6a157b8" and record.status is CallStatus.CONNECTED
        assert record.hangup_cause == "unknown (ended while aftercalld was not connected)"
        assert source.tracker.active_calls() == 0 and source.status()["calls_ended_unseen"] == 1
    finally:
        await stop(task)


async def _until(predicate) -> None:
    while not predicate():
        await asyncio.sleep(0.005)  # a state of the source that no event announces

"""The live source against a real AMI peer over TCP on 127.0.0.1."""
from __future__ import annotations

import asyncio
import logging
import random
from zoneinfo import ZoneInfo

import pytest
from ami_expected import EXPECTED, TRACES, check_record
from ami_server import AmiServer

from aftercalld.ami import make_source
from aftercalld.ami.config import AmiSettings
from aftercalld.ami.trace import stream_bytes
from aftercalld.pbxconfig import PbxConfig

SECRET = "s3cr3t-Never-Logged"


def stream(name: str) -> bytes:
    """The trace's byte stream as an Asterisk with ``timestampevents = yes`` sends it: each
    event carries its ``Timestamp`` (the recorded receive time) after ``Privilege``. A test
    server sends a trace in milliseconds; talk and ring times must still come out as
    recorded, from the PBX's clock rather than the arrival times."""
    raw = (TRACES / name).read_bytes()
    out: list[bytes] = []
    ts = b""
    for line in raw.split(b"\r\n"):
        if line.startswith(b"# ts="):
            ts = line[5:].split(None, 1)[0]
        elif line.startswith(b"Privilege: ") and ts:
            out += [line, b"Timestamp: " + ts]
            continue
        out.append(line)
    return stream_bytes(b"\r\n".join(out))


def without_fullybooted(data: bytes) -> bytes:
    """Trace streams start with the recording session's FullyBooted; the test server sends
    its own after each login, so drop the recorded one."""
    head = b"Event: FullyBooted"
    assert data.startswith(head)
    return data[data.index(b"\r\n\r\n") + 4:]


class Harness:
    def __init__(self, server: AmiServer, secret: str = SECRET, **overrides) -> None:
        settings = AmiSettings(host=server.host, port=server.port, username="aftercalld",
                               secret=secret, reconnect_min=0.02, reconnect_max=0.2,
                               ping_interval=overrides.pop("ping_interval", 30.0),
                               ping_timeout=overrides.pop("ping_timeout", 5.0), **overrides)
        self.pbx = PbxConfig(name="pbx-test", type="asterisk", timezone=ZoneInfo("UTC"),
                             variables=("DEPARTMENT",), settings=settings)
        self.source = make_source(self.pbx)
        self.calls: asyncio.Queue = asyncio.Queue()
        self.task: asyncio.Task | None = None

    async def on_call(self, record) -> None:
        await self.calls.put(record)

    def start(self) -> Harness:
        self.task = asyncio.create_task(self.source.run(self.on_call))
        return self

    async def next_call(self, timeout: float = 10.0):
        return await asyncio.wait_for(self.calls.get(), timeout)

    async def stop(self) -> None:
        assert self.task is not None
        assert not self.task.done(), "the source must never end by itself"
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


async def until(predicate, timeout: float = 10.0) -> None:
    """Wait for a state of the source that no event announces (checked every 5 ms)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


@pytest.fixture
async def server():
    srv = await AmiServer(secret=SECRET).start()
    yield srv
    await srv.stop()


async def test_replays_concurrent_trace_over_tcp(server):
    h = Harness(server).start()
    await server.wait_until(lambda: server.clients == 1)
    await server.send(without_fullybooted(stream("mixed_concurrent.ami")), chunk=1000)
    got = {}
    for _ in range(6):
        record = await h.next_call()
        assert record.call_id not in got
        got[record.call_id] = record
    assert set(got) == set(EXPECTED["mixed_concurrent.ami"])
    for call_id, record in got.items():
        check_record(record, EXPECTED["mixed_concurrent.ami"][call_id])
        assert record.pbx == "pbx-test"
    assert h.source.status()["state"] == "connected"
    assert h.source.status()["calls_emitted"] == 6
    await h.stop()


async def test_utf8_name_split_across_reads_survives(server):
    h = Harness(server).start()
    await server.wait_until(lambda: server.clients == 1)
    data = without_fullybooted(stream("inbound_connected.ami")).replace(
        b"John Caller", "Zoë Ünal 😀".encode())
    await server.send(data, chunk=7)  # many writes; multi-byte characters cut in the middle
    record = await h.next_call()
    assert record.caller_name == "Zoë Ünal 😀"
    await h.stop()


async def test_wrong_secret_clear_error_backoff_secret_never_logged(server, caplog):
    caplog.set_level(logging.DEBUG)
    h = Harness(server, secret="wrong-" + SECRET).start()
    await server.wait_until(lambda: len(server.login_attempts) >= 5)
    refused = [r for r in caplog.records if "login refused" in r.getMessage()]
    assert len([r for r in refused if r.levelno == logging.ERROR]) == 1, "logged once, not per retry"
    assert "aftercalld" in refused[0].getMessage() and "secret" in refused[0].getMessage()
    times = [t for t, _, _ in server.login_attempts]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert gaps[3] > gaps[0], f"backoff grows: {gaps}"
    assert h.source.status()["state"] == "login refused"
    # the admin fixes the secret: the next attempt gets in and calls flow
    server.secret = "wrong-" + SECRET
    await server.wait_until(lambda: server.clients == 1)
    await server.send(without_fullybooted(stream("ivr_abandon.ami")))
    record = await h.next_call()
    check_record(record, EXPECTED["ivr_abandon.ami"][record.call_id])
    await h.stop()
    assert SECRET not in caplog.text
    assert all(SECRET not in str(r.args) for r in caplog.records)


async def test_server_restart_mid_call(server, caplog):
    h = Harness(server).start()
    await server.wait_until(lambda: server.clients == 1)
    first = without_fullybooted(stream("inbound_connected.ami"))
    await server.send(first[: len(first) // 2])  # call in progress
    with caplog.at_level(logging.WARNING):
        await server.restart()
        await server.wait_until(lambda: server.clients == 1)
        await server.send(without_fullybooted(stream("outbound_connected.ami")))
        # (in either order: the new Asterisk's events may come before its CoreStatus answer)
        got = {r.call_id: r for r in [await h.next_call(), await h.next_call()]}
        cut, record = got["1796012880.0"], got["1796012927.12"]
    # The call the restart cut is recorded, as interrupted (not texted by default).
    assert cut.call_id == "1796012880.0" and cut.status == "interrupted"
    assert h.source.status()["calls_interrupted"] == 1
    assert cut.caller_number == EXPECTED["inbound_connected.ami"]["1796012880.0"]["caller_number"]
    assert record.call_id == "1796012927.12"
    check_record(record, EXPECTED["outbound_connected.ami"][record.call_id])
    assert h.calls.empty()
    assert "restarted; 1 call(s) in progress recorded as interrupted" in caplog.text
    assert h.source.tracker.active_calls == 0
    await h.stop()


async def test_stream_cut_in_the_middle_of_an_event_block(server, caplog):
    h = Harness(server).start()
    await server.wait_until(lambda: server.clients == 1)
    await server.send(without_fullybooted(stream("inbound_voicemail.ami")))
    vm = await h.next_call()
    assert vm.status == "voicemail"
    mixed = without_fullybooted(stream("mixed_concurrent.ami"))
    cut = mixed.index(b"Event: Hangup", len(mixed) // 2) + 20  # inside a Hangup block
    with caplog.at_level(logging.WARNING):
        before = h.source.events_received
        await server.send(mixed[:cut])
        # No event lost: the link drops once the daemon has read what was sent (a reset
        # discards what is still in flight, which is the other fault, events lost).
        await until(lambda: h.source.events_received >= before + mixed[:cut].count(b"\r\n\r\n"))
        server.drop_clients()
        await server.wait_until(lambda: server.clients == 1)
        # A plain reconnect to the same Asterisk keeps the calls that were live across the
        # cut: with no event lost, they are classified as recorded.
        await server.send(mixed[cut:])
        await server.send(without_fullybooted(stream("ivr_abandon.ami")))
        emitted = []
        while not emitted or emitted[-1].call_id != "1796012938.16":
            emitted.append(await h.next_call())
    check_record(emitted[-1], EXPECTED["ivr_abandon.ami"]["1796012938.16"])
    mixed_calls = {r.call_id: r for r in emitted[:-1]}
    assert set(mixed_calls) <= set(EXPECTED["mixed_concurrent.ami"]) and len(mixed_calls) == len(emitted) - 1
    # The block cut in half is a HangupRequest, which the tracker does not read: every call
    # of the trace is recorded as if the link had never dropped (it used to lose 5 of 6).
    assert len(mixed_calls) == len(EXPECTED["mixed_concurrent.ami"])
    for call_id, record in mixed_calls.items():
        check_record(record, EXPECTED["mixed_concurrent.ami"][call_id])
    assert "not classified" not in caplog.text
    await h.stop()


async def test_missing_pong_is_a_dead_link(server, caplog):
    server.answer_pings = False
    h = Harness(server, ping_interval=0.05, ping_timeout=0.1).start()
    with caplog.at_level(logging.WARNING):
        await server.wait_until(lambda: len(server.login_attempts) >= 2)
    assert "no answer to Ping" in caplog.text
    server.answer_pings = True
    await server.wait_until(lambda: server.pings >= len(server.login_attempts) + 2)
    await h.stop()


async def test_a_link_busy_with_events_is_alive_while_its_pong_is_late(server, caplog):
    """A burst puts the Pong behind every event sent before it: bytes still arriving prove the
    link alive. Only when they stop too is it dead."""
    server.answer_pings = False
    h = Harness(server, ping_interval=0.05, ping_timeout=0.15).start()
    await server.wait_until(lambda: server.ok_logins >= 1)
    event = b"Event: VarSet\r\nChannel: PJSIP/x-1\r\nVariable: X\r\nValue: 1\r\nUniqueid: 1.1\r\n\r\n"
    with caplog.at_level(logging.WARNING):
        for _ in range(40):  # 0.8 s of traffic, over five ping timeouts
            await server.send(event)
            await asyncio.sleep(0.02)
        assert "no answer to Ping" not in caplog.text and len(server.login_attempts) == 1
        await server.wait_until(lambda: len(server.login_attempts) >= 2)  # silence: dead
    assert "no answer to Ping" in caplog.text
    server.answer_pings = True
    await h.stop()


class _LogEvent(logging.Handler):
    """Sets an asyncio.Event when a matching record is logged: lets a test await a log line."""

    def __init__(self, needle: str) -> None:
        super().__init__(logging.DEBUG)
        self.needle = needle
        self.event = asyncio.Event()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if self.needle in record.getMessage():
            self.count += 1
            if self.count >= 3:
                self.event.set()


async def test_unreachable_pbx_logged_once_then_connects(caplog):
    srv = AmiServer(secret=SECRET)
    await srv.start()
    await srv.stop()  # nothing listens on that port now
    caplog.set_level(logging.DEBUG)
    attempts = _LogEvent("attempt")
    logging.getLogger("aftercalld.ami.source").addHandler(attempts)
    try:
        h = Harness(srv).start()
        await asyncio.wait_for(attempts.event.wait(), 10)  # three failed attempts
        assert h.source.status()["state"] == "unreachable"
        await srv.start()
        await srv.wait_until(lambda: srv.clients == 1)
    finally:
        logging.getLogger("aftercalld.ami.source").removeHandler(attempts)
    cannot = [r for r in caplog.records if "cannot connect" in r.getMessage()
              and r.levelno == logging.WARNING]
    assert len(cannot) == 1
    await h.stop()
    await srv.stop()


async def test_fuzzed_stream_never_breaks_the_source(server):
    rng = random.Random(4242)
    h = Harness(server).start()
    await server.wait_until(lambda: server.clients == 1)
    good = without_fullybooted(stream("ivr_abandon.ami"))
    # Truncated events come from another trace: bits of the call we then check would
    # (rightly) make it a different call.
    other = without_fullybooted(stream("inbound_connected.ami"))
    junk = bytearray()
    for _ in range(300):
        kind = rng.random()
        if kind < 0.3:
            junk += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        elif kind < 0.6:
            block = other[rng.randrange(len(other)):]
            junk += block[: rng.randrange(1, 400)]  # a truncated event
        elif kind < 0.8:
            junk += b"Event: Hangup\r\nUniqueid: \xff\xfe\r\nLinkedid\r\nCause: x\r\n\r\n"
        else:
            junk += b"\r\n\r\n: : :\r\nEvent: \r\n\r\n"
    await server.send(bytes(junk) + b"\r\n\r\n" + good)
    record = await h.next_call()
    assert record.call_id == "1796012938.16"
    assert h.source.status()["state"] == "connected"
    await h.stop()


async def test_two_pbxs_two_named_sources():
    a = await AmiServer(secret=SECRET).start()
    b = await AmiServer(secret=SECRET).start()
    try:
        ha, hb = Harness(a), Harness(b)
        hb.pbx = PbxConfig(name="pbx-b", type="asterisk", timezone=ZoneInfo("UTC"),
                           settings=hb.pbx.settings)
        hb.source = make_source(hb.pbx)
        ha.start(), hb.start()
        await a.wait_until(lambda: a.clients == 1)
        await b.wait_until(lambda: b.clients == 1)
        await a.send(without_fullybooted(stream("inbound_connected.ami")))
        await b.send(without_fullybooted(stream("inbound_connected.ami")))  # same ids, other PBX
        ra, rb = await ha.next_call(), await hb.next_call()
        assert (ra.pbx, rb.pbx) == ("pbx-test", "pbx-b")
        assert ra.call_id == rb.call_id == "1796012880.0"
        await ha.stop()
        await hb.stop()
    finally:
        await a.stop()
        await b.stop()


# Hypothesis drives the real source over a real socket; each example is its own event loop
# (asyncio.run), so this test is synchronous.
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_OTHER = without_fullybooted(stream("inbound_connected.ami"))
_GOOD = without_fullybooted(stream("ivr_abandon.ami"))


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.one_of(
    st.binary(min_size=1, max_size=200),
    st.tuples(st.integers(0, len(_OTHER) - 1), st.integers(1, 500)).map(
        lambda a: _OTHER[a[0]:a[0] + a[1]]),
), min_size=1, max_size=20), st.integers(1, 300))
def test_hypothesis_fuzzed_stream_over_tcp_never_raises_out_of_the_source(chunks, write_size):
    async def scenario() -> None:
        srv = await AmiServer(secret=SECRET).start()
        try:
            h = Harness(srv).start()
            await srv.wait_until(lambda: srv.clients == 1)
            await srv.send(b"".join(chunks) + b"\r\n\r\n" + _GOOD, chunk=write_size)
            record = await h.next_call()
            assert record.call_id == "1796012938.16" and record.status == "missed"
            await h.stop()
        finally:
            await srv.stop()

    asyncio.run(scenario())


# ---------------------------------------------------------------- issue 12: reconciliation

def plain(name: str) -> bytes:
    """A trace as an Asterisk without ``timestampevents`` sends it: times are arrival times,
    on the same clock as the answer to CoreShowChannels."""
    return without_fullybooted(stream_bytes((TRACES / name).read_bytes()))


def after_last(data: bytes, marker: bytes) -> int:
    """Where the event block holding the last ``marker`` ends."""
    return data.index(b"\r\n\r\n", data.rindex(marker)) + 4


async def test_call_begun_while_nobody_listened_is_adopted_and_classified(server, caplog):
    """A fresh process (after kill -9 or a restart) used to drop every call in progress."""
    call = plain("inbound_connected.ami")
    talking = after_last(call, b"Event: BridgeEnter")
    server.advance(call[:talking])  # the caller is talking to agent 201; nobody listens
    caplog.set_level(logging.INFO)
    h = Harness(server).start()
    await server.wait_until(lambda: server.clients == 1)
    await until(lambda: h.source.tracker.stats["adopted"] == 1)
    await server.send(call[talking:])
    record = await h.next_call()
    assert record.call_id == "1796012880.0"
    want = EXPECTED["inbound_connected.ami"]["1796012880.0"]
    # (Channel variables set before the adoption, such as the department, are not in the list.)
    for key in ("status", "direction", "caller_number", "caller_name", "dialled_number", "agent_extension",
                "hangup_cause"):
        assert getattr(record, key) == want[key], key
    assert "adopted from Asterisk's list of live channels" in caplog.text
    assert "not classified" not in caplog.text
    status = h.source.status()
    assert (status["calls_adopted"], status["calls_unclassified"]) == (1, 0)
    await h.stop()


async def test_call_that_ended_while_the_link_was_down_is_recorded_with_what_is_known(server, caplog):
    call = plain("inbound_connected.ami")
    talking = after_last(call, b"Event: BridgeEnter")
    caplog.set_level(logging.INFO)
    h = Harness(server).start()
    await server.wait_until(lambda: server.clients == 1)
    await server.send(call[:talking])
    await until(lambda: h.source.tracker.active_calls == 1)
    await server.stop()  # the link is down ...
    server.advance(call[talking:])  # ... while the call ends
    await server.start()
    record = await h.next_call()
    assert record.call_id == "1796012880.0" and record.status == "connected"
    assert record.caller_number == "9876543210" and record.agent_extension == "201"
    assert record.hangup_cause == "unknown (ended while aftercalld was not connected)"
    assert h.source.tracker.active_calls == 0 and h.source.status()["calls_ended_unseen"] == 1
    assert "ended while aftercalld was not connected" in caplog.text
    await h.stop()


async def test_refused_reconciliation_is_one_clear_error_and_calls_still_flow(server, caplog):
    """The README's manager.conf user once had `write =` empty: Asterisk answers
    "Permission denied" to CoreStatus and CoreShowChannels."""
    server.refused = {"corestatus", "coreshowchannels"}
    caplog.set_level(logging.INFO)
    h = Harness(server).start()
    await server.wait_until(lambda: server.clients == 1)
    await server.send(plain("inbound_voicemail.ami"))
    assert (await h.next_call()).status == "voicemail"

    def errors() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]

    await until(lambda: len(errors()) == 2)
    server.drop_clients()
    await server.wait_until(lambda: server.ok_logins == 2 and server.clients == 1)
    await server.send(plain("outbound_connected.ami"))
    assert (await h.next_call()).call_id == "1796012927.12"
    await until(lambda: server.actions[-1].get("Action") == "CoreShowChannels")
    logged = errors()
    assert len(logged) == 2, logged  # once per action, not once per connect
    assert all("write = reporting" in e and "Permission denied" in e for e in logged)
    assert any("CoreShowChannels" in e for e in logged) and any("CoreStatus" in e for e in logged)
    assert h.source.status()["state"] == "connected"
    await h.stop()

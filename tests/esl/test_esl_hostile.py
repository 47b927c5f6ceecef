"""An event socket peer that sends what FreeSWITCH never would, over real TCP: unpaired
surrogates in caller names (issue 13 item 5) and JSON nested thousands deep (item 8)."""
from __future__ import annotations

import asyncio
import json
import logging

import pytest
from esl_calls import inbound_call
from esl_server import EslServer, frame, plain_event
from test_esl_source import Collector, make, run_source, stop

from aftercalld.esl.protocol import MAX_JSON_DEPTH, MalformedEvent, parse_json_event, too_deep


@pytest.fixture
async def server():
    srv = await EslServer(password="s3cret").start()
    yield srv
    await srv.stop()


async def test_a_lone_surrogate_in_a_json_caller_name_is_replaced_and_the_call_kept(server):
    source, sink = make(server, events_format="json"), Collector()
    task = await run_source(source, sink)
    session = await server.session(0)
    _, events = inbound_call("noanswer")
    for event in events:
        if "Caller-Caller-ID-Name" in event:
            event["Caller-Caller-ID-Name"] = "Zo\ud800"
        await session.send(frame({"Content-Type": "text/event-json"}, json.dumps(event).encode()))
    (call,) = await sink.wait_for(1)
    assert call.caller_name == "Zo\ufffd"
    call.caller_name.encode("utf-8")  # what SQLite, the journal and the SMS encoder do
    call.to_json()
    await stop(task)


async def test_surrogate_bytes_in_a_plain_event_never_become_surrogates(server):
    source, sink = make(server), Collector()
    task = await run_source(source, sink)
    session = await server.session(0)
    _, events = inbound_call("noanswer")
    for event in events:
        body = plain_event(event).split(b"\n\n", 1)[1]
        # %ED%A0%80 is U+D800 encoded as if UTF-8 allowed it
        body = body.replace(b"Caller-Caller-ID-Name: Jane%20Doe", b"Caller-Caller-ID-Name: Zo%ED%A0%80")
        await session.send(frame({"Content-Type": "text/event-plain"}, body))
    (call,) = await sink.wait_for(1)
    assert call.caller_name.startswith("Zo") and "\ud800" not in call.caller_name
    call.caller_name.encode("utf-8")
    await stop(task)


async def test_deeply_nested_json_is_skipped_with_one_clear_line_and_the_link_stays_up(server, caplog):
    caplog.set_level(logging.WARNING)
    source, sink = make(server, events_format="json"), Collector()
    task = await run_source(source, sink)
    session = await server.session(0)
    nested = b'{"Event-Name":"CHANNEL_CREATE","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    await session.send(frame({"Content-Type": "text/event-json"}, nested))
    _, events = inbound_call("noanswer")
    for event in events:
        await session.send(frame({"Content-Type": "text/event-json"}, json.dumps(event).encode()))
    (call,) = await sink.wait_for(1)
    assert call.status.value == "missed"
    assert len(server.sessions) == 1  # no reconnect: only that event was lost
    line = next(r.getMessage() for r in caplog.records if "malformed event skipped" in r.getMessage())
    assert f"JSON nested deeper than {MAX_JSON_DEPTH} levels (200036 bytes, starting b'{{" in line
    assert len(line) < 400
    assert "Traceback" not in caplog.text and "unexpected error" not in caplog.text
    await stop(task)


def test_nesting_is_measured_outside_strings_only():
    flat = json.dumps({"Event-Name": "X", "Caller-Caller-ID-Name": "[" * 500 + "{" * 500}).encode()
    assert not too_deep(flat)
    assert parse_json_event(flat)["Caller-Caller-ID-Name"].startswith("[[[")
    assert too_deep(b"[" * 40 + b"]" * 40)
    assert not too_deep(b'{"a":[["x"]]}')
    with pytest.raises(MalformedEvent, match="nested deeper"):
        parse_json_event(b'{"Event-Name":"X","y":' + b'{"a":' * 50 + b"1" + b"}" * 50 + b"}")


def test_nested_values_under_the_limit_are_not_turned_into_text():
    event = parse_json_event(b'{"Event-Name":"X","a":[[1,2]],"b":{"c":"d"},"c":[true],"d":5}')
    assert event == {"Event-Name": "X", "c": "True", "d": "5"}


# --- reconnects (issue 13 item 15, issue 12) ---------------------------------------------

async def test_junk_after_the_subscription_backs_off_instead_of_a_reconnect_storm(server, caplog):
    caplog.set_level(logging.DEBUG)
    source, sink = make(server, reconnect_min=0.05, reconnect_max=0.4), Collector()
    task = await run_source(source, sink)
    loop = asyncio.get_running_loop()
    times = []
    for n in range(6):
        session = await server.session(n)
        times.append(loop.time())
        # A 4 GB length field: the stream cannot be in step any more.
        await session.send(b"Content-Length: 4000000000\nContent-Type: text/event-plain\n\n")
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert gaps[0] >= 0.02 and gaps[3] >= 0.1 and gaps[3] > gaps[0], gaps
    lost = [r.getMessage() for r in caplog.records if "connection lost" in r.getMessage()
            and r.levelno >= logging.WARNING]
    assert 1 <= len(lost) <= 2, lost  # the first loss, then the streak: not one per retry
    assert "Content-Length 4000000000 out of range" in lost[0]
    connected = [r for r in caplog.records if "connected to" in r.getMessage() and r.levelno >= logging.INFO]
    assert len(connected) == 1
    await stop(task)


async def test_the_first_reconnect_after_a_healthy_session_is_immediate(server):
    """Issue 12: after a link loss the ESL source slept reconnect_min (0.5 s by default)
    before reconnecting, while FreeSWITCH went on with its calls."""
    source, sink = make(server, reconnect_min=1.0, reconnect_max=1.0), Collector()
    task = await run_source(source, sink)
    session = await server.session(0)
    await asyncio.sleep(1.05)  # the session's age is what is under test: healthy after 1 s
    await session.disconnect()
    dropped = asyncio.get_running_loop().time()
    await server.session(1)
    assert asyncio.get_running_loop().time() - dropped < 0.5  # not reconnect_min (1 s)
    await stop(task)

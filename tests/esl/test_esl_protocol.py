"""ESL framing and event decoding, config parsing, and fuzzed bytes on a live connection."""
from __future__ import annotations

import asyncio
import random
from dataclasses import replace

import pytest
from esl_server import TRACES, EslServer, frame, plain_event, trace_events
from hypothesis import given, settings
from hypothesis import strategies as st

from aftercalld.configreader import ConfigError, Section
from aftercalld.esl.config import EslSettings, parse_settings
from aftercalld.esl.protocol import (
    EslConnection,
    MalformedEvent,
    parse_header_block,
    parse_json_event,
    parse_plain_event,
)
from aftercalld.esl.source import EslSource
from aftercalld.pbxconfig import default_pbx


def test_plain_event_is_url_decoded_with_its_own_body() -> None:
    body = (b"Event-Name: BACKGROUND_JOB\nJob-UUID: 1\nCaller-Caller-ID-Name: Jos%C3%A9%20Garc%C3%ADa\n"
            b"Content-Length: 8\n\n+OK 42\n\n")
    ev = parse_plain_event(body)
    assert ev["Caller-Caller-ID-Name"] == "José García"
    assert ev["_body"] == "+OK 42\n\n"[:8]


def test_plain_event_cut_short_is_refused() -> None:
    with pytest.raises(MalformedEvent):
        parse_plain_event(b"Event-Name: CHANNEL_CREATE\nUnique-ID: abc")  # no closing blank line
    with pytest.raises(MalformedEvent):
        parse_plain_event(b"Event-Name: API\nContent-Length: 50\n\nshort")
    with pytest.raises(MalformedEvent):
        parse_plain_event(b"Unique-ID: abc\n\n")


def test_json_event_values_become_strings() -> None:
    ev = parse_json_event(b'{"Event-Name":"CUSTOM","Event-Sequence":5,"X":["a","b"],"_body":"hi"}')
    assert ev == {"Event-Name": "CUSTOM", "Event-Sequence": "5", "X": "a", "_body": "hi"}
    for bad in (b"[1]", b"{", b'{"a":"b"}', b"\xff\xfe"):
        with pytest.raises(MalformedEvent):
            parse_json_event(bad)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_decoders_raise_only_malformed(data: bytes) -> None:
    for parser in (parse_plain_event, parse_json_event):
        try:
            ev = parser(data)
        except MalformedEvent:
            continue
        assert isinstance(ev, dict) and "Event-Name" in ev
    parse_header_block(data)


def _section(data: dict) -> Section:
    return Section(data, "pbx[0]", "/etc/aftercalld/aftercalld.toml")


def test_config_defaults_and_values() -> None:
    assert parse_settings(_section({})) == EslSettings()
    s = parse_settings(_section({
        "host": "10.0.0.2", "port": 8022, "password": "pw", "events_format": "json",
        "filters": ["variable_domain_name pbx.example"], "reconnect_min": 1, "reconnect_max": 60,
        "heartbeat_timeout": 0, "direction_variable": "", "inbound_contexts": ["public", "from-carrier"],
        "extension_pattern": r"\d{3}", "agent_variable": "cc_agent", "connect_timeout": 3,
    }))
    assert (s.host, s.port, s.events_format, s.filters) == ("10.0.0.2", 8022, "json",
                                                            (("variable_domain_name", "pbx.example"),))
    assert s.is_extension("123") and not s.is_extension("1234")


@pytest.mark.parametrize("data, key, reason", [
    ({"events_format": "xml"}, "pbx[0].events_format", "unknown value"),
    ({"pasword": "x"}, "pbx[0].pasword", "unknown key"),
    ({"filters": ["Core-UUID"]}, "pbx[0].filters[0]", "is not"),
    ({"reconnect_min": 5, "reconnect_max": 1}, "pbx[0].reconnect_max", "at least"),
    ({"heartbeat_timeout": 10}, "pbx[0].heartbeat_timeout", "HEARTBEAT"),
    ({"password": ""}, "pbx[0].password", "must not be empty"),
    ({"extension_pattern": "("}, "pbx[0].extension_pattern", "regular expression"),
    ({"port": 0}, "pbx[0].port", "at least"),
])
def test_config_errors_name_the_key(data: dict, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings(_section(data))
    assert err.value.key == key and reason in err.value.reason


def test_config_error_does_not_echo_the_password() -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings(_section({"password": 12345}))
    assert "12345" not in str(err.value)


async def test_command_and_api_replies_are_matched_in_order() -> None:
    server = await EslServer(password="pw").start()
    events: list[dict] = []
    try:
        conn = await EslConnection.open("127.0.0.1", server.port, events.append)
        await conn.auth("pw")
        replies = await asyncio.gather(conn.api("status"), conn.command("nonsense"), conn.api("nope"))
        assert "is ready" in replies[0]
        assert replies[1].reply_text == "-ERR command not found"
        assert replies[2].startswith("-ERR nope")
        assert (await conn.command("event plain CHANNEL_CREATE")).ok
        session = server.sessions[0]
        await session.send(plain_event({"Event-Name": "HEARTBEAT", "Core-UUID": "c"}))
        await session.send(frame({"Content-Type": "text/disconnect-notice"}, b"Disconnected, goodbye.\n"))
        await session.disconnect(notice=False)
        reason = await conn.wait_closed()
        assert "Disconnected, goodbye." in str(reason)
        assert events == [{"Event-Name": "HEARTBEAT", "Core-UUID": "c"}]
        await conn.close()
    finally:
        await server.stop()


async def test_fuzzed_bytes_never_stop_the_source() -> None:
    server = await EslServer(password="pw").start()
    settings = EslSettings(port=server.port, password="pw", reconnect_min=0.01, reconnect_max=0.02)
    source = EslSource(replace(default_pbx("freeswitch"), settings=settings))
    got: list = []
    done = asyncio.Event()

    async def sink(record) -> None:
        got.append(record)
        done.set()

    task = asyncio.create_task(source.run(sink))
    rng = random.Random(1234)
    pieces = [b"Content-Length: ", b"Content-Type: text/event-plain\n", b"Content-Type: text/event-json\n",
              b"\n\n", b"\n", b"Event-Name: CHANNEL_HANGUP_COMPLETE\n", b"Unique-ID: x\n", b"%zz", b"\xff",
              b"Content-Type: command/reply\nReply-Text: +OK\n\n", b"{\"Event-Name\": 1}", b"12", b"-5"]
    try:
        for n in range(6):
            session = await server.session(n)
            blob = b"".join(rng.choice(pieces) if rng.random() < 0.7 else bytes([rng.randrange(256)])
                            for _ in range(400))
            await session.send(blob)
            await session.disconnect(notice=rng.random() < 0.5)
        session = await server.session(6)
        for raw in trace_events(TRACES / "outbound_connected.esl"):
            await session.send(raw)
        await asyncio.wait_for(done.wait(), 10)
        assert not task.done()  # run() never raised
        assert got[0].call_id == "d2a23454-311a-42c8-b6fc-4dee4c4a5892"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await server.stop()

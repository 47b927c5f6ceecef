"""AMI framing and the source fed what Asterisk never sends: surrogate bytes, endless
messages, junk after the login."""
from __future__ import annotations

import asyncio
import logging
from zoneinfo import ZoneInfo

import pytest
from ami_server import AmiServer

from aftercalld.ami.config import AmiSettings
from aftercalld.ami.protocol import MAX_MESSAGE_BYTES, AmiParser
from aftercalld.ami.source import AmiSource
from aftercalld.pbxconfig import PbxConfig


def test_surrogate_bytes_in_a_caller_name_never_become_surrogates():
    parser = AmiParser()
    (msg,) = parser.feed(b"Event: Newchannel\r\nCallerIDName: Zo\xed\xa0\x80\r\nLinkedid: 1.1\r\n\r\n")
    assert msg["CallerIDName"].startswith("Zo") and "\ud800" not in msg["CallerIDName"]
    msg["CallerIDName"].encode("utf-8")


def test_a_message_without_an_end_is_dropped_and_counted_and_the_next_one_parsed():
    parser = AmiParser()
    for _ in range(5):
        assert parser.feed(b"X" * 100_000) == []
        assert parser.pending <= MAX_MESSAGE_BYTES
    assert parser.dropped_bytes > 0
    (msg,) = parser.feed(b"\r\n\r\nEvent: Hangup\r\nLinkedid: 1.1\r\n\r\n")
    assert msg["Event"] == "Hangup"


# --- a peer that takes the login and then sends junk (issue 13 item 15) ------------------

def _source(server: AmiServer, **kw) -> AmiSource:
    settings = AmiSettings(host=server.host, port=server.port, username="aftercalld", secret="test",
                           ping_interval=30.0, **kw)
    pbx = PbxConfig(name="pbx-test", type="asterisk", timezone=ZoneInfo("UTC"), settings=settings)
    return AmiSource(pbx)


async def _run(source: AmiSource, calls: list) -> asyncio.Task:
    async def on_call(record) -> None:
        calls.append(record)
    return asyncio.create_task(source.run(on_call))


@pytest.fixture
async def server():
    srv = await AmiServer().start()
    yield srv
    await srv.stop()


async def test_junk_after_login_backs_off_instead_of_a_reconnect_storm(server, caplog):
    caplog.set_level(logging.DEBUG)
    junk = b"\x00\xff garbage \x1b[2J\r\n\r\n"
    server.after_login = [junk] * 6
    source = _source(server, reconnect_min=0.05, reconnect_max=0.4)
    task = await _run(source, [])
    await server.wait_until(lambda: server.ok_logins >= 6)
    times = [t for t, _, ok in server.login_attempts if ok]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    # 0.05 s doubling to 0.4 s, each with up to half off for jitter: the storm was ~1 ms a gap.
    assert gaps[0] >= 0.02 and gaps[3] >= 0.1 and gaps[3] > gaps[0], gaps
    lost = [r for r in caplog.records if "lost" in r.getMessage() and r.levelno >= logging.WARNING]
    assert len(lost) == 1, [r.getMessage() for r in lost]  # once for the streak, not per retry
    assert "count as failures, reconnecting with backoff" in lost[0].getMessage()
    connected = [r for r in caplog.records if "connected to" in r.getMessage() and r.levelno >= logging.INFO]
    assert len(connected) == 1
    await server.wait_until(lambda: server.clients == 1)  # the junk ran out: a session that stays
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_the_first_reconnect_after_a_healthy_session_is_immediate(server):
    source = _source(server, reconnect_min=1.0, reconnect_max=1.0)
    task = await _run(source, [])
    await server.wait_until(lambda: server.clients == 1)
    await asyncio.sleep(1.05)  # the session's age is what is under test: healthy after 1 s
    server.drop_clients()
    dropped = asyncio.get_running_loop().time()
    await server.wait_until(lambda: server.ok_logins >= 2)
    assert asyncio.get_running_loop().time() - dropped < 0.5  # not reconnect_min (1 s)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

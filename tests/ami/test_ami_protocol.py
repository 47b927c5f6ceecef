"""Framing, config and fuzzing of the parse → track path (what the source runs per read)."""
from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest
from ami_expected import TRACES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aftercalld.ami.config import AmiSettings, parse_settings
from aftercalld.ami.protocol import MAX_MESSAGE_BYTES, AmiParser, encode_action, parse_block
from aftercalld.ami.trace import stream_bytes
from aftercalld.ami.tracker import CallTracker
from aftercalld.configreader import ConfigError, Section
from aftercalld.pbxconfig import PbxConfig

PBX = PbxConfig(name="fuzz", type="asterisk", timezone=ZoneInfo("UTC"), variables=("DEPARTMENT",))
MIXED = stream_bytes((TRACES / "mixed_concurrent.ami").read_bytes())


def test_parse_block_edge_cases():
    msg = parse_block(b"Event: X\r\nAccountCode: \r\nEmpty:\r\nAppData: a: b: c\r\njunk line\r\nEvent: Y")
    assert msg == {"Event": "X", "AccountCode": "", "Empty": "", "AppData": "a: b: c"}


def test_parser_any_chunking_gives_the_same_messages():
    whole = AmiParser().feed(MIXED + b"\r\n\r\n")
    assert len(whole) == 628
    for size in (1, 2, 3, 7, 100, 4096):
        p = AmiParser()
        got = []
        for i in range(0, len(MIXED), size):
            got += p.feed(MIXED[i:i + size])
        got += p.feed(b"\r\n\r\n")
        assert got == whole, size


def test_utf8_split_between_reads():
    data = "Event: NewCallerid\r\nCallerIDName: Zoë 😀\r\n\r\n".encode()
    cut = data.index("😀".encode()) + 2
    p = AmiParser()
    assert p.feed(data[:cut]) == []
    assert p.feed(data[cut:]) == [{"Event": "NewCallerid", "CallerIDName": "Zoë 😀"}]


def test_oversized_garbage_is_dropped_and_parsing_recovers():
    p = AmiParser()
    p.feed(b"x" * (MAX_MESSAGE_BYTES + 10))
    assert p.pending == 0 and p.dropped_bytes > MAX_MESSAGE_BYTES
    assert p.feed(b"Event: Ok\r\n\r\n") == [{"Event": "Ok"}]


def test_encode_action_cannot_inject_headers():
    raw = encode_action({"Action": "Login", "Secret": "a\r\nAction: Originate"})
    assert raw.count(b"\r\n") == 3 and raw.endswith(b"\r\n\r\n")


def section(data: dict) -> Section:
    return Section(data, "pbx[0]", "/etc/aftercalld/aftercalld.toml")


def test_parse_settings_defaults_and_errors():
    s = parse_settings(section({"host": "10.0.0.5", "username": "aftercalld", "secret": "hunter2"}))
    assert (s.host, s.port, s.ping_interval, s.reconnect_max) == ("10.0.0.5", 5038, 10.0, 30.0)
    assert "hunter2" not in repr(s)
    assert s.is_extension("201") and not s.is_extension("0612345678")
    with pytest.raises(ConfigError, match=r"pbx\[0\]\.secret: missing"):
        parse_settings(section({"username": "u"}))
    with pytest.raises(ConfigError) as err:
        parse_settings(section({"username": "u", "secret": 12345}))
    assert "12345" not in str(err.value)
    with pytest.raises(ConfigError, match=r"pbx\[0\]\.secrte: unknown key"):
        parse_settings(section({"username": "u", "secret": "x", "secrte": "y"}))
    with pytest.raises(ConfigError, match="reconnect_max"):
        parse_settings(section({"username": "u", "secret": "x", "reconnect_min": 5, "reconnect_max": 1}))
    with pytest.raises(ConfigError, match="extension_pattern"):
        parse_settings(section({"username": "u", "secret": "x", "extension_pattern": "("}))


def _feed_all(tracker: CallTracker, parser: AmiParser, data: bytes, t0: float) -> list:
    out = []
    for i, msg in enumerate(parser.feed(data)):
        if "Event" in msg:
            out += tracker.feed(msg, t0 + i * 0.001)
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(
    st.binary(max_size=300),
    st.tuples(st.integers(0, len(MIXED) - 1), st.integers(1, 600)).map(lambda a: MIXED[a[0]:a[0] + a[1]]),
    st.sampled_from([b"\r\n\r\n", b"Event: Hangup\r\n\r\n", b"Event: BridgeEnter\r\nUniqueid: 1\r\n\r\n",
                     b"Event: Newchannel\r\nUniqueid: 1\r\nLinkedid: 1\r\nChannel: X\r\n\r\n",
                     b"Event: Cdr\r\nUniqueID: 1\r\nBillableSeconds: x\r\nDisposition: ANSWERED\r\n\r\n",
                     b"\xff\xfe\x00Event: \x00\r\n\r\n"]),
), max_size=40), st.integers(1, 64))
def test_fuzzed_stream_never_raises(chunks, size):
    tracker = CallTracker(PBX, AmiSettings())
    parser = AmiParser()
    data = b"".join(chunks)
    for i in range(0, len(data), size):
        for record in _feed_all(tracker, parser, data[i:i + size], 1.8e9):
            assert record.call_id  # whatever comes out is a well-formed record
    # after the junk, a real stream is still tracked correctly
    parser.feed(b"\r\n\r\n")
    out = _feed_all(tracker, parser, MIXED + b"\r\n\r\n", 1.9e9)
    assert tracker.stats["errors"] == 0
    assert {r.call_id for r in out} <= {"1796012946.18", "1796012947.22", "1796012947.26",
                                        "1796012948.30", "1796012948.32", "1796012949.36"}

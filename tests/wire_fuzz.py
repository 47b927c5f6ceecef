"""Fuzz targets for the wire parsers that read what PBXs, SMSCs and modems send.

Each target is a hypothesis strategy and a check. The check feeds one input to our real
parser and returns normally when the parser either took it or refused it the documented
way (the exceptions its callers catch); anything else raised is a bug. The suite runs
every target with a few examples (tests/*/test_*_fuzz.py); bench/fuzz_wire.py runs each
with 100,000 or more.

Inputs are not only random bytes: they are built from real messages (the traces in
tests/data) cut, spliced and sprinkled with the tokens the framers look for, so that most
of them get past the first check and reach the code behind it.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

from hypothesis import strategies as st
from testdata import TRACES

from aftercalld.ami.protocol import MAX_MESSAGE_BYTES, AmiParser, parse_block
from aftercalld.esl import protocol as esl
from aftercalld.model import DeliveryReport, Encoding, InboundMessage
from aftercalld.modem import pdu as modem_pdu
from aftercalld.modem.at import ATChannel, number
from aftercalld.modem.config import ModemSettings
from aftercalld.modem.inbox import ModemInbox
from aftercalld.modem.link import ModemLink
from aftercalld.smpp import pdu as smpp_pdu
from aftercalld.smpp.text import decode_short_message


@dataclass(frozen=True)
class Target:
    name: str
    strategy: st.SearchStrategy
    check: Callable[[Any], None]


def _utf8(text: str) -> None:
    """What every string from the wire must survive: SQLite, the journal, an SMS."""
    text.encode("utf-8")


def _mangled(seeds: list[bytes], tokens: list[bytes]) -> st.SearchStrategy[bytes]:
    """Pieces of real messages, random bytes and framing tokens, joined."""
    seed_cuts = st.builds(lambda s, a, b: s[min(a, b):max(a, b)], st.sampled_from(seeds),
                          st.integers(0, 4096), st.integers(0, 4096))
    piece = st.one_of(seed_cuts, st.sampled_from(seeds), st.binary(max_size=64), st.sampled_from(tokens))
    return st.lists(piece, max_size=12).map(b"".join)


def _chunks(data: st.SearchStrategy[bytes]) -> st.SearchStrategy[list[bytes]]:
    """A stream as the reads that deliver it: cut anywhere, even inside a character."""
    return st.builds(lambda d, cuts: [d[a:b] for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(d)],
                                                             strict=True)],
                     data, st.lists(st.integers(0, 8192), max_size=6))


# --- AMI -----------------------------------------------------------------------------------

def _ami_seeds() -> list[bytes]:
    seeds = []
    for path in sorted((TRACES / "asterisk").glob("*.ami")):
        raw = path.read_bytes()
        seeds += [block + b"\r\n\r\n" for block in raw.split(b"\r\n\r\n")[:40] if block]
    return seeds


AMI_TOKENS = [b"\r\n", b"\r\n\r\n", b": ", b":", b"Event: ", b"Event: VarSet\r\n", b"Variable: ",
              b"Response: Success\r\n", b"ActionID: ", b"\xed\xa0\x80", b"\xff", b"\x00", b"\x1b[31m",
              b"Event: Newchannel\r\n", b"Linkedid: ", b"\n"]


def check_ami_framing(chunks: list[bytes]) -> None:
    for parser in (AmiParser(), AmiParser(events={"Newchannel", "Hangup", "VarSet", "DialEnd"},
                                          variables={"DEPARTMENT", "_X"})):
        for chunk in chunks:
            for msg in parser.feed(chunk):
                assert isinstance(msg, dict)
                for key, value in msg.items():
                    _utf8(key)
                    _utf8(value)
            assert parser.pending <= MAX_MESSAGE_BYTES
    for chunk in chunks:
        for value in parse_block(chunk).values():
            _utf8(value)


# --- ESL -----------------------------------------------------------------------------------

def _esl_seeds() -> list[bytes]:
    seeds = []
    for path in sorted((TRACES / "freeswitch").glob("*.esl")):
        raw = path.read_bytes()
        seeds += [part for part in raw.split(b"\n\n")[:60] if part]
    return seeds


ESL_TOKENS = [b"\n", b"\n\n", b": ", b"Content-Length: ", b"Content-Length: 4000000000\n",
              b"Content-Type: text/event-plain\n", b"Content-Type: text/event-json\n",
              b"Content-Type: command/reply\nReply-Text: +OK\n\n", b"Event-Name: CHANNEL_CREATE\n",
              b"%", b"%ED%A0%80", b"%0A", b"%2", b"\\", b"\\x", b"\xed\xa0\x80", b"{", b"[", b'"', b"\\ud800"]

_loop: asyncio.AbstractEventLoop | None = None


def _run(coro: Any) -> Any:
    global _loop
    if _loop is None or _loop.is_closed():
        _loop = asyncio.new_event_loop()
    return _loop.run_until_complete(coro)


async def _read_all(stream: bytes) -> None:
    reader = asyncio.StreamReader(limit=esl.MAX_HEADER_BYTES)
    reader.feed_data(stream)
    reader.feed_eof()
    for _ in range(10_000):
        try:
            msg = await esl.read_message(reader)
        except (esl.ConnectionLost, esl.ProtocolError):
            return
        if msg is None:
            continue
        parser = esl.EVENT_PARSERS.get(msg.content_type)
        if parser is not None:
            _check_event(parser, msg.body)
    raise AssertionError("read_message never reached the end of a finite stream")


def _check_event(parser: Callable[[bytes], esl.Event], body: bytes) -> None:
    try:
        event = parser(body)
    except esl.MalformedEvent:
        return
    for key in ("Event-Name", "Caller-Caller-ID-Name", "Unique-ID", "_body", "nope"):
        value = event.get(key)
        if value is not None:
            _utf8(value)
    for key, value in event.items():
        _utf8(key)
        _utf8(value)


def check_esl_framing(stream: bytes) -> None:
    _run(_read_all(stream))


def check_esl_plain(body: bytes) -> None:
    _check_event(esl.parse_plain_event, body)


def check_esl_json(body: bytes) -> None:
    _check_event(esl.parse_json_event, body)


def check_esl_url_decoding(data: bytes) -> None:
    # The fast C path must agree with urllib on every input, not only on valid escapes.
    assert esl._percent_decode(data) == unquote_to_bytes(data)


_json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20))
_json_values = st.recursive(_json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                                   st.dictionaries(st.text(max_size=8), inner,
                                                                                   max_size=4)), max_leaves=30)


def _json_event(fields: dict[str, Any], name: str | None) -> bytes:
    if name is not None:
        fields = {"Event-Name": name, **fields}
    return json.dumps(fields).encode()


_json_bodies = st.one_of(
    st.builds(_json_event, st.dictionaries(st.text(max_size=30), _json_values, max_size=8),
              st.one_of(st.none(), st.sampled_from(["CHANNEL_CREATE", "CHANNEL_HANGUP_COMPLETE"]), st.text())),
    st.builds(lambda n, o, c: b'{"Event-Name":"X","a":' + o * n + b"1" + c * n + b"}", st.integers(0, 3000),
              st.sampled_from([b"[", b'{"a":']), st.sampled_from([b"]", b"}"])),
    _mangled([b'{"Event-Name":"CHANNEL_CREATE","Caller-Caller-ID-Name":"Zo\\ud800"}'], ESL_TOKENS),
)


# --- SMPP ----------------------------------------------------------------------------------

def _deliver_body(source: bytes, text: bytes, esm: int, dcs: int, tlvs: bytes) -> bytes:
    return (b"\x00\x01\x01" + source + b"\x00\x05\x00ACME\x00" + bytes((esm, 0, 0)) + b"\x00\x00"
            + bytes((0, 0, dcs, 0, len(text) & 0xFF)) + text + tlvs)


_tlv = st.builds(lambda tag, value, lie: tag.to_bytes(2, "big") + ((len(value) + lie) % 65536).to_bytes(2, "big")
                 + value, st.sampled_from([0x001E, 0x0427, 0x0423, 0x0424, 0x020C, 0x1400, 0xFFFF]),
                 st.binary(max_size=40), st.sampled_from([0, 0, 0, 1, -1, 60000]))
_deliver_bodies = st.one_of(
    st.builds(_deliver_body, st.binary(max_size=24), st.binary(max_size=260), st.integers(0, 255),
              st.sampled_from([0, 1, 3, 4, 8, 0xF0, 0xF4, 0x25, 255]), st.lists(_tlv, max_size=4).map(b"".join)),
    st.binary(max_size=300),
)


def check_smpp_frames(chunks: list[bytes]) -> None:
    frames = smpp_pdu.FrameBuffer()
    for chunk in chunks:
        try:
            decoded = frames.feed(chunk)
        except smpp_pdu.PduError:
            return  # the session drops the link: documented
        for command_id, _status, _seq, body in decoded:
            if command_id & smpp_pdu.RESP:
                _utf8(smpp_pdu.parse_message_id(body))
            elif command_id in (smpp_pdu.DELIVER_SM, smpp_pdu.DATA_SM):
                check_smpp_body((command_id, body))


def check_smpp_body(item: tuple[int, bytes]) -> None:
    command_id, body = item
    parse = smpp_pdu.parse_deliver_sm if command_id == smpp_pdu.DELIVER_SM else smpp_pdu.parse_data_sm
    try:
        message = parse(body)
    except smpp_pdu.PduError:
        return
    for text in (message.source, message.destination, message.service_type, decode_short_message(message)):
        _utf8(text)


_smpp_stream = st.lists(st.one_of(
    st.builds(lambda c, s, q, b: smpp_pdu.frame(c, s, q, b),
              st.sampled_from([smpp_pdu.DELIVER_SM, smpp_pdu.DATA_SM, smpp_pdu.SUBMIT_SM | smpp_pdu.RESP,
                               smpp_pdu.BIND_TRANSCEIVER | smpp_pdu.RESP, smpp_pdu.ENQUIRE_LINK, smpp_pdu.UNBIND,
                               smpp_pdu.GENERIC_NACK, 0x00000102, 0x0000000B]),
              st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), _deliver_bodies),
    st.builds(lambda n, rest: n.to_bytes(4, "big") + rest, st.integers(0, 2**32 - 1), st.binary(max_size=32)),
    st.binary(max_size=64),
), max_size=6).map(b"".join)


# --- modem ---------------------------------------------------------------------------------

def _modem_seeds() -> list[bytes]:
    from datetime import UTC, datetime
    t = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    seeds = []
    for text, enc in (("STOP", Encoding.GSM7), ("Zoë 😀", Encoding.UCS2), ("x" * 200, Encoding.GSM7)):
        for ref in (None, 7):
            concat = modem_pdu.Concat(ref, 2, 1) if ref is not None else None
            hex_pdu = modem_pdu.build_deliver("+447700900123", text[:60], enc, t, concat=concat)
            raw = bytes.fromhex(hex_pdu)
            seeds.append(f"+CMT: ,{len(raw) - 1 - raw[0]}\r\n{hex_pdu}\r\n".encode())
    hex_pdu, length = modem_pdu.build_status_report(65, "+447700900123", 0, t, t)
    seeds.append(f"+CDS: {length}\r\n{hex_pdu}\r\n".encode())
    seeds += [b'+CMTI: "SM",3\r\n', b"+CREG: 1\r\n", b"+CREG: 0,5\r\n", b"RING\r\n", b"RDY\r\n",
              b"+CSQ: 21,99\r\n", b'+CLIP: "+441234",145\r\n', b"+CMGS: 65\r\n", b"OK\r\n", b"ERROR\r\n",
              b"+CMS ERROR: 500\r\n", b"> "]
    return seeds


MODEM_TOKENS = [b"\r\n", b"\r", b"\n", b"+CMT: ", b"+CDS: ", b'+CMTI: "SM",', b"9" * 5000, b"\xb2", b",",
                b"00", b"FF", b"\x00", b"\xff" * 10]


class _Events:
    def delivery_report(self, report: DeliveryReport) -> None:
        _utf8(report.message_id + report.error)

    def inbound_message(self, message: InboundMessage) -> None:
        _utf8(message.sender + message.text)


_SETTINGS = ModemSettings(device="/dev/null")


def check_modem_lines(chunks: list[bytes]) -> None:
    """What a modem sends, through the real AT framing and the link's and inbox's handling
    of unsolicited lines (reports and replies decoded down to their text)."""
    inbox = ModemInbox("fuzz")
    inbox.events = _Events()
    link = ModemLink(_SETTINGS, "fuzz", inbox)
    channel = ATChannel(link._on_urc, name="fuzz")
    for chunk in chunks:
        channel.data_received(chunk)
    while not inbox.announced.empty():
        _, _, index = inbox.announced.get_nowait()
        assert 0 <= index < 10**6


def check_modem_pdu(item: tuple[str, str | bytes, int | None]) -> None:
    kind, data, length = item
    decode = {"deliver": modem_pdu.decode_deliver, "report": modem_pdu.decode_status_report,
              "submit": modem_pdu.decode_submit}[kind]
    try:
        result = decode(data, length)
    except (ValueError, IndexError):  # what the inbox catches (PduError is a ValueError)
        return
    for field in dataclasses.fields(result):
        value = getattr(result, field.name)
        if isinstance(value, str):
            _utf8(value)


def check_modem_number(text: str) -> None:
    value = number(text)
    assert value is None or 0 <= value < 10**6


def _pdu_inputs() -> st.SearchStrategy:
    seeds = [line.split(b"\r\n")[1].decode() for line in _modem_seeds() if line.startswith((b"+CMT", b"+CDS"))]
    mutated = st.builds(lambda s, i, b: (bytes.fromhex(s)[:i] + b + bytes.fromhex(s)[i + len(b):]).hex(),
                        st.sampled_from(seeds), st.integers(0, 180), st.binary(max_size=4))
    data = st.one_of(mutated, st.sampled_from(seeds), st.binary(max_size=200), st.text(max_size=40))
    return st.tuples(st.sampled_from(["deliver", "report", "submit"]), data,
                     st.one_of(st.none(), st.integers(-5, 300)))


TARGETS: list[Target] = [
    Target("ami framing", _chunks(_mangled(_ami_seeds(), AMI_TOKENS)), check_ami_framing),
    Target("esl framing", _mangled(_esl_seeds(), ESL_TOKENS), check_esl_framing),
    Target("esl plain event", _mangled(_esl_seeds(), ESL_TOKENS), check_esl_plain),
    Target("esl json event", _json_bodies, check_esl_json),
    Target("esl url decoding", _mangled([b"Zo%C3%AB%20%F0%9F%98%80", b"a%2Bb", b"%ED%A0%80"], ESL_TOKENS),
           check_esl_url_decoding),
    Target("smpp pdu stream", _chunks(_smpp_stream), check_smpp_frames),
    Target("smpp deliver_sm/data_sm", st.tuples(st.sampled_from([smpp_pdu.DELIVER_SM, smpp_pdu.DATA_SM]),
                                               _deliver_bodies), check_smpp_body),
    Target("modem lines", _chunks(_mangled(_modem_seeds(), MODEM_TOKENS)), check_modem_lines),
    Target("modem pdus", _pdu_inputs(), check_modem_pdu),
    Target("modem numbers", st.one_of(st.text(max_size=12), st.sampled_from(["9" * 5000, "²", "٣"])),
           check_modem_number),
]


def target(name: str) -> Target:
    return next(t for t in TARGETS if t.name == name)


def suite_test(name: str, examples: int = 150) -> Callable[[], None]:
    """A pytest test running target `name` with a few examples (the long runs are
    bench/fuzz_wire.py). No example database: nothing is written outside the run."""
    from hypothesis import HealthCheck, given, settings

    chosen = target(name)

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(chosen.strategy)
    def test(data: Any) -> None:
        chosen.check(data)

    test.__doc__ = f"Fuzz: {name} takes any input, or refuses it the documented way."
    return test

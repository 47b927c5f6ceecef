"""Pure parts of the SMPP transport: codec (checked against smpplib), receipts, message-id
matching, status mapping, token bucket, PDU building and config."""
from __future__ import annotations

import logging

import pytest
import smpplib.command
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from smpp_util import message
from smsc_sim import parse_submit, reassemble
from testdata import SHIPPED

from aftercalld.configreader import ConfigError, Section
from aftercalld.model import Encoding, ReportState
from aftercalld.smpp import message_id_keys, parse_settings, pdu
from aftercalld.smpp.parts import WireProfile, build_submits, parse_tlv_map, source_ton_npi
from aftercalld.smpp.receipts import parse_receipt, parse_receipt_text, same_message_id
from aftercalld.smpp.status import Verdict, classify, describe, status_name
from aftercalld.smpp.text import decode_short_message
from aftercalld.smpp.throttle import TokenBucket

# -- codec against smpplib ---------------------------------------------------------------


def test_submit_sm_parses_with_smpplib():
    body = build_submits(message("Hello €uro [x]"), WireProfile(), ref=7)[0]
    raw = pdu.frame(pdu.SUBMIT_SM, 0, 42, body)
    parsed = smpplib.command.SubmitSM("submit_sm", sequence=1)
    parsed.parse(raw)
    assert parsed.sequence == 42
    assert parsed.source_addr == b"ACME"
    assert (parsed.source_addr_ton, parsed.source_addr_npi) == (5, 0)
    assert parsed.destination_addr == b"447700900123"
    assert (parsed.dest_addr_ton, parsed.dest_addr_npi) == (1, 1)
    assert parsed.registered_delivery == 1
    assert parsed.data_coding == 0
    assert parsed.short_message.decode("gsm03.38") == "Hello €uro [x]"


def test_bind_parses_with_smpplib():
    raw = pdu.frame(pdu.BIND_TRANSCEIVER, 0, 1, pdu.encode_bind("esme", "pw", "VMA", addr_ton=1,
                                                                  address_range="^44"))
    parsed = smpplib.command.BindTransceiver("bind_transceiver", sequence=1)
    parsed.parse(raw)
    assert (parsed.system_id, parsed.password, parsed.system_type) == (b"esme", b"pw", b"VMA")
    assert parsed.interface_version == 0x34
    assert parsed.addr_ton == 1 and parsed.address_range == b"^44"


def test_deliver_sm_from_smpplib_parses():
    d = smpplib.command.DeliverSM("deliver_sm", sequence=5, source_addr_ton=1, source_addr="447700900123",
                                  destination_addr="ACME", esm_class=4, data_coding=0,
                                  short_message=b"id:0A1B stat:DELIVRD err:000 text:hi",
                                  receipted_message_id="0A1B", message_state=2)
    d.sequence = 5
    raw = d.generate()
    frames = pdu.FrameBuffer().feed(raw[:10]) + pdu.FrameBuffer().feed(b"")
    assert frames == []
    buf = pdu.FrameBuffer()
    assert buf.feed(raw[:10]) == []
    [(cmd, status, seq, body)] = buf.feed(raw[10:])
    assert (cmd, status, seq) == (pdu.DELIVER_SM, 0, 5)
    sm = pdu.parse_deliver_sm(body)
    assert sm.is_receipt and sm.source == "447700900123"
    r = parse_receipt(sm)
    assert (r.message_id, r.state, r.error) == ("0A1B", ReportState.DELIVERED, "")


def test_frame_buffer_rejects_impossible_length():
    with pytest.raises(pdu.PduError):
        pdu.FrameBuffer().feed(b"\x00\x00\x00\x03" + b"\x00" * 12)


def test_truncated_deliver_sm_is_a_pdu_error():
    with pytest.raises(pdu.PduError):
        pdu.parse_deliver_sm(b"\x00\x01\x01447")


# -- receipts ------------------------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [
    ("id:123456 sub:001 dlvrd:001 submit date:2611300800 done date:2611300801 stat:DELIVRD err:000 text:Hello",
     {"id": "123456", "stat": "DELIVRD", "err": "000", "submit_date": "2611300800", "text": "Hello"}),
    ("id:ABC sub:001 dlvrd:000 submit date:261130080012 done date:261130080112 stat:UNDELIV err:001 Text:stat:x",
     {"id": "ABC", "stat": "UNDELIV", "err": "001", "done_date": "261130080112", "text": "stat:x"}),
    ("id:7 stat:EXPIRED", {"id": "7", "stat": "EXPIRED"}),
    ("id: sub:001 stat:DELIVRD err: text:x", {"id": "", "sub": "001", "stat": "DELIVRD", "err": ""}),
    ("ID:A1 STAT:REJECTD ERR:011", {"id": "A1", "stat": "REJECTD", "err": "011"}),
])
def test_receipt_text_variants(text, expected):
    fields = parse_receipt_text(text)
    for k, v in expected.items():
        assert fields[k] == v


def _receipt(text: str = "", tlvs=None, esm=0x04) -> pdu.ShortMessage:
    return pdu.ShortMessage(pdu.DELIVER_SM, "", 1, 1, "447700900123", 5, 0, "ACME", esm, 0,
                            text.encode(), tlvs or {})


@pytest.mark.parametrize("stat,state", [
    ("DELIVRD", ReportState.DELIVERED), ("UNDELIV", ReportState.UNDELIVERABLE),
    ("EXPIRED", ReportState.EXPIRED), ("REJECTD", ReportState.REJECTED),
    ("DELETED", ReportState.DELETED), ("UNKNOWN", ReportState.UNKNOWN),
    ("ACCEPTD", ReportState.ACCEPTED), ("ENROUTE", ReportState.ENROUTE),
    ("garbage", ReportState.UNKNOWN),
])
def test_receipt_states_from_text(stat, state):
    r = parse_receipt(_receipt(f"id:99 sub:001 dlvrd:000 stat:{stat} err:034 text:x"))
    assert r.state is state and r.message_id == "99" and r.error == "err:034"


def test_receipt_tlvs_win_over_text():
    r = parse_receipt(_receipt("id:99 stat:DELIVRD err:000",
                               {pdu.TAG_RECEIPTED_MESSAGE_ID: b"63\x00", pdu.TAG_MESSAGE_STATE: b"\x05",
                                pdu.TAG_NETWORK_ERROR_CODE: b"\x03\x00\x22"}))
    assert (r.message_id, r.state) == ("63", ReportState.UNDELIVERABLE)
    assert r.error == "network_error:3/34"


def test_receipt_without_id_is_none():
    assert parse_receipt(_receipt("stat:DELIVRD")) is None


def test_receipt_in_message_payload():
    r = parse_receipt(_receipt("", {pdu.TAG_MESSAGE_PAYLOAD: b"id:5 stat:REJECTD err:0"}))
    assert (r.message_id, r.state, r.error) == ("5", ReportState.REJECTED, "")


@pytest.mark.parametrize("a,b", [
    ("0A1B", "2587"), ("1a2b", "6699"), ("000123", "123"), ("ABCDEF12", "abcdef12"),
    ("ff", "255"), ("0x1F", "31"), ("6d0c6a7f-1234", "6D0C6A7F-1234"),
])
def test_message_ids_match_across_bases(a, b):
    assert same_message_id(a, b), (message_id_keys(a), message_id_keys(b))


@pytest.mark.parametrize("a,b", [("123", "124"), ("abc", "abd"), ("", "")])
def test_message_ids_that_differ_do_not_match(a, b):
    assert not same_message_id(a, b)


@hsettings(deadline=None, max_examples=100)
@given(st.integers(min_value=0, max_value=2**64))
def test_message_id_hex_vs_decimal_property(n):
    assert same_message_id(format(n, "X"), str(n))
    assert same_message_id(format(n, "010x"), format(n, "x"))


def test_exact_key_is_present():
    assert "id:a1" in message_id_keys("00A1")


# -- status --------------------------------------------------------------------------------


def test_status_names_and_verdicts():
    assert status_name(0x58) == "ESME_RTHROTTLED"
    assert status_name(0x0B) == "ESME_RINVDSTADR"
    assert status_name(0x401) == "0x00000401"
    assert "Throttl" in describe(0x58) or "ESME_RTHROTTLED" in describe(0x58)
    assert classify(0) is Verdict.OK
    assert classify(0x58) is Verdict.THROTTLED and classify(0x14) is Verdict.THROTTLED
    assert classify(0x08) is Verdict.TRANSIENT
    assert classify(0x0B) is Verdict.PERMANENT and classify(0x0A) is Verdict.PERMANENT
    assert classify(0x401) is Verdict.PERMANENT
    assert classify(0x401, frozenset({0x401})) is Verdict.TRANSIENT


# -- token bucket --------------------------------------------------------------------------


def test_token_bucket_spaces_reservations():
    now = [100.0]
    b = TokenBucket(10, burst=1, clock=lambda: now[0])
    waits = [b.reserve() for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    now[0] += 10
    assert b.reserve() == 0.0


def test_token_bucket_burst_and_pause():
    now = [0.0]
    b = TokenBucket(10, burst=3, clock=lambda: now[0])
    assert [b.reserve() for _ in range(4)] == pytest.approx([0, 0, 0, 0.1])
    now[0] = 100.0
    b.pause(2.0)
    assert b.reserve() == pytest.approx(2.0 - 0.2)  # burst tolerance still applies
    u = TokenBucket(0, clock=lambda: now[0])
    assert u.unlimited and u.reserve() == 0.0
    u.pause(1.5)
    assert u.reserve() == pytest.approx(1.5)


# -- parts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sender,expected", [
    ("ACME", (5, 0, "ACME")), ("+447700900123", (1, 1, "447700900123")),
    ("447700900123", (1, 1, "447700900123")), ("12345", (3, 0, "12345")),
])
def test_source_ton_npi_from_form(sender, expected):
    assert source_ton_npi(sender, WireProfile()) == expected


def test_source_ton_npi_override():
    assert source_ton_npi("ACME", WireProfile(source_ton=0, source_npi=1)) == (0, 1, "ACME")


def _wire(text, **profile):
    bodies = build_submits(message(text), WireProfile(**profile), ref=0x1234)
    return [parse_submit(b) for b in bodies]


@pytest.mark.parametrize("method", ["udh8", "udh16", "sar", "payload"])
@pytest.mark.parametrize("text", [
    "€" * 100 + "x" * 50,  # escape pairs straddle the 153-septet boundary
    "😀" * 40 + "é" * 30,  # surrogate pairs straddle the 67-unit boundary
    "Hello " * 60,
])
def test_every_concatenation_method_reassembles(method, text):
    parts = _wire(text, concatenation=method)
    [whole] = reassemble(parts)
    assert whole.text == text
    assert whole.method == ("payload" if method == "payload" else method)
    for p in parts:
        # unpacked GSM: one octet per septet, 160 with the UDH; UCS-2: 140 octets
        assert len(p.short_message) <= (160 if p.data_coding == 0 else 140)


def test_udh_layout_and_esm_class():
    parts = _wire("x" * 200, concatenation="udh8")
    assert [p.short_message[:6] for p in parts] == [bytes((5, 0, 3, 0x34, 2, i)) for i in (1, 2)]
    assert all(p.esm_class == 0x40 for p in parts)
    parts16 = _wire("x" * 200, concatenation="udh16")
    assert parts16[0].short_message[:7] == bytes((6, 8, 4, 0x12, 0x34, 2, 1))
    assert len(parts16[0].short_message) == 7 + 152


def test_sar_tlvs():
    parts = _wire("y" * 300, concatenation="sar")
    assert [p.tlvs[0x020F][0] for p in parts] == [1, 2]
    assert all(p.tlvs[0x020E] == b"\x02" and p.tlvs[0x020C] == b"\x12\x34" for p in parts)
    assert all(p.esm_class == 0 for p in parts)


def test_data_coding_choices():
    [p] = _wire("Hi there")
    assert p.data_coding == 0 and p.short_message == b"Hi there"
    [p] = _wire("Grüße", gsm_data_coding=3)
    assert p.data_coding == 3 and p.short_message == "Grüße".encode("latin-1")
    [p] = _wire("Price €5", gsm_data_coding=3)  # € is GSM but not Latin-1
    assert p.data_coding == 8 and p.short_message.decode("utf-16-be") == "Price €5"
    [p] = _wire("plain", gsm_data_coding=1)
    assert p.data_coding == 1
    [p] = _wire("Привет")
    assert p.data_coding == 8


def test_tlvs_from_config_and_template():
    body = build_submits(message("x"), WireProfile(tlvs={0x1400: b"ENT"}), 1,
                         parse_tlv_map({"0x1401": "1207161234567890123", "5122": "hex:00ff",
                                        "0x1400": "1201159000000000001"}))[0]
    p = parse_submit(body)
    assert p.tlvs[0x1400] == b"1201159000000000001"
    assert p.tlvs[0x1401] == b"1207161234567890123"
    assert p.tlvs[5122] == b"\x00\xff"


def test_bad_tlv_tag_is_rejected():
    with pytest.raises(ValueError):
        parse_tlv_map({"0x10000": "x"})
    with pytest.raises(ValueError):
        parse_tlv_map({"dlt": "x"})


def test_mo_text_decoding():
    sm = pdu.ShortMessage(pdu.DELIVER_SM, "", 1, 1, "4477", 5, 0, "ACME", 0x40, 8,
                          bytes((5, 0, 3, 1, 1, 1)) + "STOP 😀".encode("utf-16-be"))
    assert decode_short_message(sm) == "STOP 😀"
    sm = pdu.ShortMessage(pdu.DELIVER_SM, "", 1, 1, "4477", 5, 0, "ACME", 0, 0, "stop €".encode("gsm03.38"))
    assert decode_short_message(sm) == "stop €"


# -- config --------------------------------------------------------------------------------


def _section(**data):
    base = {"hosts": ["smsc1.example.net", "smsc2.example.net:2776"], "system_id": "acme",
            "password": "s3cr3t!!"}
    base.update(data)
    return Section(base, "transport", "/etc/aftercalld/aftercalld.toml")


def test_parse_settings_defaults_and_hosts():
    s = parse_settings(_section())
    assert s.hosts == (("smsc1.example.net", 2775), ("smsc2.example.net", 2776))
    assert s.window == 10 and s.sessions == 1 and s.bind_mode == "transceiver"
    assert s.concatenation == "udh8" and s.gsm_data_coding == 0
    assert s.source_ton is None
    assert "s3cr3t" not in repr(s)


def test_parse_settings_everything():
    s = parse_settings(_section(
        port=3000, tls=True, tls_verify=False, system_type="VMA", bind_mode="transmitter_receiver",
        sessions=3, window=50, session_rate=30, account_rate=80.5, response_timeout=5,
        enquire_link_interval=20, enquire_link_timeout=5, concatenation="sar", gsm_data_coding=3,
        source_ton=1, source_npi=1, tlvs={"0x1400": "1201"}, transient_statuses=["0x0401", "1100"],
        hosts=["[::1]:2775", "10.0.0.1"]))
    assert s.hosts == (("::1", 2775), ("10.0.0.1", 3000))
    assert s.tls and not s.tls_verify and s.sessions == 3 and s.window == 50
    assert s.tlvs == {0x1400: b"1201"}
    assert s.transient_statuses == frozenset({0x401, 1100})
    assert s.wire_profile.concatenation == "sar"


@pytest.mark.parametrize("data,key", [
    ({"windw": 5}, "transport.windw"),
    ({"concatenation": "udh7"}, "transport.concatenation"),
    ({"system_id": "x" * 16}, "transport.system_id"),
    ({"hosts": []}, "transport.hosts"),
    ({"tlvs": {"zz": "1"}}, "transport.tlvs"),
    ({"gsm_data_coding": 2}, "transport.gsm_data_coding"),
    ({"window": 0}, "transport.window"),
])
def test_parse_settings_errors_name_the_key(data, key):
    with pytest.raises(ConfigError) as err:
        parse_settings(_section(**data))
    assert err.value.key == key


def test_long_password_warns_without_showing_it(caplog):
    caplog.set_level(logging.WARNING)
    s = parse_settings(_section(password="averylongpassword"))
    assert s.password == "averylongpassword"
    assert "transport.password" in caplog.text and "averylongpassword" not in caplog.text
    with pytest.raises(ConfigError) as err:
        parse_settings(_section(password=12345))
    assert "12345" not in str(err.value)


def test_encoding_enum_is_what_parts_use():
    assert message("Привет").encoding is Encoding.UCS2


_GSM_ALPHABET = [c for c in map(chr, range(0x3000)) if __import__("aftercalld.rules.encoding",
                                                                     fromlist=["x"]).gsm_septets(c)]


@hsettings(deadline=None, max_examples=100)
@given(st.text(alphabet=st.sampled_from(_GSM_ALPHABET), max_size=400))
def test_fast_gsm_encoder_matches_the_codec(text):
    from aftercalld.rules.encoding import encode_gsm7_unpacked
    from aftercalld.smpp.parts import encode_gsm7_fast

    assert encode_gsm7_fast(text) == encode_gsm7_unpacked(text)


def test_fast_gsm_encoder_rejects_non_gsm():
    from aftercalld.smpp.parts import encode_gsm7_fast

    with pytest.raises(UnicodeEncodeError):
        encode_gsm7_fast("Привет")


# -- hostile input -------------------------------------------------------------------------


@hsettings(deadline=None, max_examples=100)
@given(st.binary(max_size=300))
def test_garbage_bodies_raise_only_pdu_errors(body):
    for parse in (pdu.parse_deliver_sm, pdu.parse_data_sm):
        try:
            sm = parse(body)
        except pdu.PduError:
            continue
        # whatever parsed must survive receipt parsing and text decoding
        parse_receipt(sm)
        decode_short_message(sm)


@hsettings(deadline=None, max_examples=100)
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=255), st.booleans())
def test_any_content_decodes(content, data_coding, udhi):
    sm = pdu.ShortMessage(pdu.DELIVER_SM, "", 1, 1, "1", 0, 0, "2", 0x40 if udhi else 0,
                          data_coding, content)
    assert isinstance(decode_short_message(sm), str)


@hsettings(deadline=None, max_examples=100)
@given(st.lists(st.binary(min_size=0, max_size=40), max_size=20))
def test_frame_buffer_never_crashes_on_chunks(chunks):
    buf = pdu.FrameBuffer()
    for chunk in chunks:
        try:
            buf.feed(chunk)
        except pdu.PduError:
            return


def test_example_config_fragment_parses():
    import tomllib

    path = SHIPPED / "examples" / "smpp.toml"
    data = tomllib.loads(path.read_text())
    section = Section(data["transport"], "transport", str(path))
    assert section.str("type") == "smpp"
    s = parse_settings(section)
    assert s.hosts[1] == ("smsc2.example.net", 2776) and s.window == 10


def test_whole_config_with_the_smpp_fragment_loads_and_builds_the_transport():
    """The core's loader hands [transport] to our parse_settings; the daemon's factory
    builds our transport from it."""
    import tomllib

    from aftercalld import config as core_config
    from aftercalld.daemon import make_transport as daemon_make_transport
    from aftercalld.smpp.transport import SmppTransport

    data = tomllib.loads((SHIPPED / "aftercalld.example.toml").read_text())
    data["transport"] = tomllib.loads((SHIPPED / "examples" / "smpp.toml").read_text())["transport"]
    cfg = core_config.parse(data, "example+smpp")
    transport = daemon_make_transport(cfg)
    assert isinstance(transport, SmppTransport)
    assert transport.max_in_flight == 10 and transport.name == "smpp"


@hsettings(deadline=None, max_examples=100)
@given(st.sampled_from(["ACME", "+447700900123", "12345"]), st.text(max_size=300),
       st.sampled_from(["udh8", "udh16", "sar", "payload"]), st.booleans())
def test_inlined_submit_layout_matches_the_reference_encoder(sender, text, method, receipts):
    """build_submits inlines pdu.encode_submit_sm for speed: both must agree."""
    m = message(text or "x", sender=sender)
    profile = WireProfile(concatenation=method, registered_delivery=int(receipts), service_type="CMT",
                          tlvs={0x1400: b"1201"})
    for body in build_submits(m, profile, ref=0x0102):
        s = parse_submit(body)
        ton, npi, src = source_ton_npi(sender, profile)
        assert body == pdu.encode_submit_sm(
            service_type=b"CMT", source_ton=ton, source_npi=npi, source=src.encode(),
            dest_ton=1, dest_npi=1, destination=b"447700900123", esm_class=s.esm_class,
            registered_delivery=int(receipts), data_coding=s.data_coding,
            short_message=s.short_message, tlvs=body[len(body) - _tlv_len(s.tlvs):])


def _tlv_len(tlvs: dict[int, bytes]) -> int:
    return sum(4 + len(v) for v in tlvs.values())

"""PDU codec: published vectors first (so the simulator's decoding is not just our own
encoder read back), then round trips."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aftercalld.model import Encoding, ReportState
from aftercalld.modem import pdu
from aftercalld.rules.encoding import GSM_CODEC, split_segments


def test_published_submit_vector():
    # The "hellohello" example of the GSM 03.40 tutorials (dreamfabric), VP = 4 days.
    built = pdu.build_submit("+46708251358", "hellohello", Encoding.GSM7, validity_minutes=4 * 1440)
    assert built.hex == "0011000B916407281553F80000AA0AE8329BFD4697D9EC37"
    assert built.tpdu_length == 23
    decoded = pdu.decode_submit(built.hex, built.tpdu_length)
    assert (decoded.destination, decoded.text, decoded.validity) == ("+46708251358", "hellohello", 0xAA)


def test_published_deliver_vector():
    d = pdu.decode_deliver("07917283010010F5040BC87238880900F10000993092516195800AE8329BFD4697D9EC37")
    assert d.smsc == "+27381000015"
    assert d.sender == "27838890001"
    assert d.text == "hellohello"
    assert d.timestamp == datetime(1999, 3, 29, 15, 16, 59, tzinfo=timezone(timedelta(hours=2)))


def test_published_status_report_vector():
    r = pdu.decode_status_report("0006D60B911326880736F4111011719551401110117195714000")
    assert (r.message_reference, r.recipient, r.status) == (0xD6, "+31628870634", 0)
    assert r.discharge_time == datetime(2011, 1, 11, 17, 59, 17, tzinfo=timezone(timedelta(hours=1)))


def test_udh_fill_bit_aligns_text_on_a_septet():
    built = pdu.build_submit("+441234", "A", Encoding.GSM7, concat=pdu.Concat(0x2A, 2, 1))
    tpdu = bytes.fromhex(built.hex)[1:]
    assert tpdu[0] & 0x40  # UDHI
    udl, ud = tpdu[-8], tpdu[-7:]
    assert udl == 8  # 7 septets of header (6 octets + 1 fill bit) + 1
    assert ud == bytes([0x05, 0x00, 0x03, 0x2A, 0x02, 0x01, 0x41 << 1])


def test_ucs2_submit_and_flags():
    built = pdu.build_submit("07700900123", "Ø€📞", Encoding.UCS2, status_report=True)
    d = pdu.decode_submit(built.hex)
    assert d.destination == "07700900123"  # national numbers keep TON unknown
    assert d.dcs == 0x08 and d.encoding is Encoding.UCS2 and d.status_report
    assert d.text == "Ø€📞"
    assert bytes.fromhex(built.hex)[4] == 0x81  # SCA, first octet, MR, DA length, type


def test_alphanumeric_sender_in_deliver():
    when = datetime(2026, 11, 30, 8, 0, 5, tzinfo=timezone(timedelta(hours=-5)))
    hex_pdu = pdu.build_deliver("Vodafone", "Top up now", Encoding.GSM7, when)
    d = pdu.decode_deliver(hex_pdu)
    assert (d.sender, d.text, d.timestamp) == ("Vodafone", "Top up now", when)


def test_status_report_with_and_without_smsc_prefix():
    t = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
    with_sca, n = pdu.build_status_report(7, "+447700900123", 0x46, t, t)
    without, n2 = pdu.build_status_report(7, "+447700900123", 0x46, t, t, smsc=None)
    assert n == n2
    for hex_pdu in (with_sca, without):
        r = pdu.decode_status_report(hex_pdu, n)
        assert (r.message_reference, r.recipient, r.status) == (7, "+447700900123", 0x46)
        assert pdu.report_state(r.status) is ReportState.EXPIRED


@pytest.mark.parametrize("st_, state", [
    (0x00, ReportState.DELIVERED), (0x01, ReportState.DELIVERED), (0x20, ReportState.ENROUTE),
    (0x30, ReportState.ENROUTE), (0x41, ReportState.UNDELIVERABLE), (0x42, ReportState.REJECTED),
    (0x46, ReportState.EXPIRED), (0x47, ReportState.DELETED), (0x48, ReportState.DELETED),
    (0x62, ReportState.UNDELIVERABLE), (0x7F, ReportState.UNDELIVERABLE),
])
def test_report_state(st_, state):
    assert pdu.report_state(st_) is state


@pytest.mark.parametrize("minutes, vp", [(5, 0), (6, 1), (720, 143), (750, 144), (1440, 167),
                                          (2 * 1440, 168), (30 * 1440, 196), (35 * 1440, 197)])
def test_relative_validity(minutes, vp):
    assert pdu.encode_relative_validity(minutes) == vp
    assert pdu.relative_validity_minutes(vp) >= minutes


def test_bad_input():
    with pytest.raises(ValueError):
        pdu.encode_address("+44 12ab")
    with pytest.raises(ValueError):
        pdu.build_submit("+441234", "x" * 161, Encoding.GSM7)
    with pytest.raises(pdu.PduError):
        pdu.decode_submit("0011000B9164")
    with pytest.raises(pdu.PduError):
        pdu.decode_deliver("zz")


gsm_chars = st.sampled_from(
    [chr(c) for c in range(0x20, 0x7F) if len(chr(c).encode(GSM_CODEC, errors="ignore")) > 0]
    + list("€£¥èéùìòÇØøÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉÄÖÑÜ§¿äöñüà\n"))


@settings(max_examples=150, deadline=None)
@given(st.text(gsm_chars, min_size=1, max_size=500))
def test_gsm7_round_trip(text):
    pieces = split_segments(text, Encoding.GSM7)
    parts = pdu.build_message("+15551234567", pieces, Encoding.GSM7, reference=200)
    decoded = [pdu.decode_submit(p.hex, p.tpdu_length) for p in parts]
    assert "".join(d.text for d in decoded) == text
    if len(parts) > 1:
        assert [d.concat.sequence for d in decoded] == list(range(1, len(parts) + 1))


@settings(max_examples=100, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=200))
def test_ucs2_round_trip(text):
    pieces = split_segments(text, Encoding.UCS2)
    parts = pdu.build_message("+15551234567", pieces, Encoding.UCS2, reference=3)
    assert "".join(pdu.decode_submit(p.hex).text for p in parts) == text


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=60))
def test_decoders_never_crash_on_garbage(data):
    for decode in (pdu.decode_submit, pdu.decode_deliver, pdu.decode_status_report):
        try:
            decode(data)
        except ValueError:
            pass


def test_seven_spare_bits_carry_cr():
    udl, ud = pdu.encode_user_data("1234567", Encoding.GSM7)
    assert (udl, len(ud)) == (7, 7)
    assert pdu.unpack_septets(ud, 8)[-1] == 0x0D  # not "@"
    assert pdu.gsm7_decode(pdu.unpack_septets(ud, udl)) == "1234567"


def test_an_independent_decoder_reads_our_pdus():
    """Cross-check with smspdudecoder (Qotto's decoder), where installed: our encoder and our
    decoder could share a misreading of TS 23.040; a third party's decoder would not.
    (Optional test dependency: smspdudecoder==2.2.0 with bitstring<5.)"""
    easy = pytest.importorskip("smspdudecoder.easy")
    cases = [
        ("Sorry we missed you: 5€ off [code {A~B}] ^|\\ @ £ ¥ è", Encoding.GSM7),
        ("Мы пропустили ваш звонок 📞", Encoding.UCS2),
        ("We are sorry we missed your call. " * 12, Encoding.GSM7),
        ("Привет 👋 " * 20, Encoding.UCS2),
    ]
    for text, enc in cases:
        parts = pdu.build_message("+447700900123", split_segments(text, enc), enc, reference=77,
                                  status_report=True, validity_minutes=1440)
        decoded = [easy.read_outgoing_sms(p.hex) for p in parts]
        assert {d["recipient"] for d in decoded} == {"+447700900123"}
        assert "".join(d["content"] for d in decoded) == text
    when = datetime(2026, 11, 30, 8, 0, 5, tzinfo=UTC)
    incoming = easy.read_incoming_sms(pdu.build_deliver("+447700900123", "Stop please", Encoding.GSM7, when))
    assert (incoming["sender"], incoming["content"], incoming["date"]) == ("+447700900123", "Stop please", when)

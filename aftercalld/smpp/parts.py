"""One OutboundMessage → the submit_sm bodies that carry it: data_coding, concatenation
(UDH with an 8- or 16-bit reference, SAR TLVs, or message_payload), TON/NPI and TLVs.

Encoding and segmentation are `rules.encoding.segment` with the profile these settings
give (`segmenting_profile`), the same call rendering counts segments with; never
smpplib's `make_parts` (which cuts escape pairs and surrogate pairs, see LIBRARIES.md).
"""
from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache

from ..model import Encoding, OutboundMessage
from ..rules.encoding import GSM_CODEC, SINGLE, SegmentingProfile, encode_gsm7_unpacked, encode_ucs2, segment
from . import pdu

CONCAT_METHODS = ("udh8", "udh16", "sar", "payload")
DC_GSM = 0
DC_IA5 = 1
DC_LATIN1 = 3
DC_UCS2 = 8


@dataclass(frozen=True, slots=True)
class WireProfile:
    """The per-bind choices that shape PDUs (a subset of SmppSettings)."""

    gsm_data_coding: int = DC_GSM
    concatenation: str = "udh8"
    source_ton: int | None = None
    source_npi: int | None = None
    dest_ton: int = 1
    dest_npi: int = 1
    registered_delivery: int = 1
    service_type: str = ""
    tlvs: Mapping[int, bytes] = field(default_factory=dict)
    octet_limits: bool = True  # False: the SMSC transcodes data_coding 1/3 to GSM 7-bit


_ALPHABETS = {DC_GSM: "gsm7", DC_IA5: "ascii", DC_LATIN1: "latin1"}


@lru_cache(maxsize=64)
def segmenting_profile(gsm_data_coding: int, concatenation: str, octet_limits: bool) -> SegmentingProfile:
    return SegmentingProfile(_ALPHABETS[gsm_data_coding], concatenation, octet_limits)


def parse_tlv_tag(tag: str | int) -> int:
    if isinstance(tag, int):
        value = tag
    else:
        text = tag.strip().lower()
        try:
            value = int(text, 16) if text.startswith("0x") else int(text, 10)
        except ValueError:
            raise ValueError(f"TLV tag {tag!r} is not a number such as \"0x1400\"") from None
    if not 0 < value <= 0xFFFF:
        raise ValueError(f"TLV tag {tag!r} is outside 0x0001–0xFFFF")
    return value


def parse_tlv_value(value: str) -> bytes:
    """``hex:0a1b`` → raw octets; ``cstr:abc`` → ``abc\\0``; anything else → its UTF-8
    octets without a NUL (how aggregators usually want DLT ids)."""
    if value.startswith("hex:"):
        try:
            return bytes.fromhex(value[4:])
        except ValueError:
            raise ValueError(f"TLV value {value!r}: not hex digits after hex:") from None
    if value.startswith("cstr:"):
        return value[5:].encode("utf-8") + b"\x00"
    return value.encode("utf-8")


def parse_tlv_map(tlvs: Mapping[str, str]) -> dict[int, bytes]:
    """tag (``"0x1400"`` or decimal) → value string, as in config and message.options;
    raises ValueError naming the bad entry (the config loader can call this at start)."""
    out: dict[int, bytes] = {}
    for tag, value in tlvs.items():
        code = parse_tlv_tag(tag)
        out[code] = parse_tlv_value(str(value))
        if len(out[code]) > 0xFFFF:
            raise ValueError(f"TLV {tag}: value too long")
    return out


def source_ton_npi(sender: str, profile: WireProfile) -> tuple[int, int, str]:
    """TON/NPI from the sender's form unless configured: alphanumeric → 5/0,
    ``+`` or a long number → international 1/1, a short code → 3/0 (network specific)."""
    addr = sender.strip()
    digits = addr[1:] if addr.startswith("+") else addr
    if digits.isdigit():
        if addr.startswith("+") or len(digits) > 8:
            ton, npi = 1, 1
        else:
            ton, npi = 3, 0
        addr = digits
    else:
        ton, npi = 5, 0
    if profile.source_ton is not None:
        ton = profile.source_ton
    if profile.source_npi is not None:
        npi = profile.source_npi
    return ton, npi, addr


def _gsm_table() -> dict[int, str]:
    """Every GSM 03.38 character → its unpacked septets as a Latin-1 string, so that
    `str.translate` + `encode("latin-1")` does in C what the gsm0338 codec does per
    character in Python (several times faster; checked against the codec in the tests)."""
    table: dict[int, str] = {}
    candidates = [bytes((b,)) for b in range(128) if b != 0x1B] + [bytes((0x1B, b)) for b in range(128)]
    for septets in candidates:
        try:
            ch = septets.decode(GSM_CODEC)
        except (UnicodeDecodeError, ValueError):
            continue
        if len(ch) == 1 and ord(ch) not in table:
            try:
                if encode_gsm7_unpacked(ch) == septets:  # the codec's own choice wins
                    table[ord(ch)] = septets.decode("latin-1")
            except UnicodeEncodeError:
                continue
    return table


_GSM_TABLE = _gsm_table()
_GSM_CHARS = frozenset(map(chr, _GSM_TABLE))


def encode_gsm7_fast(text: str) -> bytes:
    if not _GSM_CHARS.issuperset(text):
        return encode_gsm7_unpacked(text)  # raises the codec's own error
    return text.translate(_GSM_TABLE).encode("latin-1")


def _encode_text(text: str, encoding: Encoding, gsm_dc: int) -> tuple[int, bytes]:
    if encoding is Encoding.UCS2:
        return DC_UCS2, encode_ucs2(text)
    # segment() chose GSM7 only for a text that fits the configured alphabet.
    if gsm_dc == DC_LATIN1:
        return DC_LATIN1, text.encode("latin-1")
    if gsm_dc == DC_IA5:
        return DC_IA5, text.encode("ascii")
    return gsm_dc, encode_gsm7_fast(text)


def build_submits(message: OutboundMessage, profile: WireProfile, ref: int,
                  extra_tlvs: Mapping[int, bytes] | None = None) -> list[bytes]:
    """submit_sm bodies for every part of `message`, in order. `ref` is the concatenation
    reference (only its low 8 bits are used with udh8). Raises ValueError for a message
    that cannot be sent as it is (a permanent failure)."""
    method = profile.concatenation
    text = message.text
    pieces: tuple[str, ...]
    if profile.gsm_data_coding == DC_GSM and len(text) * 2 <= SINGLE[message.encoding]:
        # The hot path: most texts are short, and with GSM 7-bit the encoding the outbox
        # has (from `segment`) depends on the text alone.
        encoding, pieces = message.encoding, (text,)
    else:
        # Decided again from the text: with an 8-bit alphabet the encoding depends on the
        # settings too, and after a config change the wire must follow them.
        segmented = segment(text, segmenting_profile(profile.gsm_data_coding, method, profile.octet_limits))
        encoding, pieces = segmented.encoding, segmented.pieces

    head = _address_head(message.sender, message.destination, profile)
    tlvs: Mapping[int, bytes] = profile.tlvs or {}
    if extra_tlvs:
        tlvs = {**tlvs, **extra_tlvs}
    tlv_bytes = b"".join(pdu.tlv(tag, value) for tag, value in tlvs.items()) if tlvs else b""
    registered = profile.registered_delivery
    total = len(pieces)
    if total > 255:
        raise ValueError(f"{total} parts: more than concatenation allows (255)")
    bodies: list[bytes] = []
    for seq, piece in enumerate(pieces, start=1):
        dc, payload = _encode_text(piece, encoding, profile.gsm_data_coding)
        esm = 0
        part_tlvs = tlv_bytes
        if method == "payload":
            short, part_tlvs = b"", pdu.tlv(pdu.TAG_MESSAGE_PAYLOAD, payload) + tlv_bytes
        elif total == 1:
            short = payload
        elif method == "udh8":
            short = bytes((5, 0, 3, ref & 0xFF, total, seq)) + payload
            esm = pdu.ESM_UDHI
        elif method == "udh16":
            short = bytes((6, 8, 4, (ref >> 8) & 0xFF, ref & 0xFF, total, seq)) + payload
            esm = pdu.ESM_UDHI
        else:  # sar
            short = payload
            part_tlvs = (pdu.tlv(pdu.TAG_SAR_MSG_REF_NUM, struct.pack(">H", ref & 0xFFFF))
                         + pdu.tlv(pdu.TAG_SAR_TOTAL_SEGMENTS, bytes((total,)))
                         + pdu.tlv(pdu.TAG_SAR_SEGMENT_SEQNUM, bytes((seq,)))
                         + tlv_bytes)
        # The layout of pdu.encode_submit_sm, inlined: this runs for every part.
        # esm_class, protocol_id, priority_flag, schedule "", validity "", registered_delivery,
        # replace_if_present, data_coding, sm_default_msg_id, sm_length
        bodies.append(head + bytes((esm, 0, 0, 0, 0, registered, 0, dc, 0, len(short)))
                      + short + part_tlvs)
    return bodies


@lru_cache(maxsize=1024)
def _source_field(sender: str, source_ton: int | None, source_npi: int | None) -> bytes:
    ton, npi, source = source_ton_npi(sender, WireProfile(source_ton=source_ton, source_npi=source_npi))
    return bytes((ton, npi)) + source.encode("latin-1", "replace")[:20] + b"\x00"


def _address_head(sender: str, destination: str, profile: WireProfile) -> bytes:
    """service_type, source and destination address fields of a submit_sm."""
    dest = destination.strip()
    if dest.startswith("+"):
        dest = dest[1:]
    return b"".join((
        profile.service_type.encode("ascii", "replace")[:5], b"\x00",
        _source_field(sender, profile.source_ton, profile.source_npi),
        bytes((profile.dest_ton, profile.dest_npi)), dest.encode("ascii", "replace")[:20], b"\x00",
    ))

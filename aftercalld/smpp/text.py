"""Text of a mobile-originated deliver_sm/data_sm, from its data_coding and UDH."""
from __future__ import annotations

from ..rules.encoding import GSM_CODEC
from . import pdu


def strip_udh(content: bytes, esm_class: int) -> bytes:
    if esm_class & pdu.ESM_UDHI and content:
        return content[1 + content[0]:]
    return content


def decode_text(content: bytes, data_coding: int) -> str:
    """data_coding 0 is GSM 03.38 unpacked septets (what SMPP carries); 8 UCS-2 (decoded
    as UTF-16 so emoji survive); 1 IA5/ASCII; 3 Latin-1; anything else best effort."""
    coding = data_coding
    if data_coding & 0xF0 == 0xF0:  # message class coding group: bit 2 says 8-bit data
        coding = 4 if data_coding & 0x04 else 0
    try:
        if coding == 8:
            return content.decode("utf-16-be", "replace")
        if coding == 0:
            return content.decode(GSM_CODEC)
        if coding == 1:
            return content.decode("ascii")
    except (UnicodeDecodeError, ValueError):
        pass
    return content.decode("latin-1")


def decode_short_message(message: pdu.ShortMessage) -> str:
    return decode_text(strip_udh(message.content, message.esm_class), message.data_coding)

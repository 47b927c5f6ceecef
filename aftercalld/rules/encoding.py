"""SMS text encoding: pick GSM 03.38 or UCS-2, count units and split into segments.

Transports (SMPP, modem) split with `split_segments` so that a boundary never cuts a GSM
escape pair (``€``, ``[`` … cost two septets) nor a UTF-16 surrogate pair (emoji).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import gsm0338  # noqa: F401  (registers the 'gsm03.38' codec)

from ..model import Encoding

GSM_CODEC = "gsm03.38"

# Per-segment capacity: single message, with an 8-bit-reference UDH (6 octets), with a
# 16-bit-reference UDH (7 octets).
SINGLE = {Encoding.GSM7: 160, Encoding.UCS2: 70}
CONCAT_8BIT_REF = {Encoding.GSM7: 153, Encoding.UCS2: 67}
CONCAT_16BIT_REF = {Encoding.GSM7: 152, Encoding.UCS2: 66}


def _gsm_tables() -> tuple[frozenset[str], frozenset[str]]:
    """The basic and extension tables, read from the gsm0338 codec itself by decoding every
    septet, so our fast checks and the codec that puts text on the wire always agree."""
    basic, extension = set(), set()
    for septet in range(0x80):
        if septet != 0x1B:
            char = bytes([septet]).decode(GSM_CODEC, errors="ignore")
            if len(char) == 1:
                basic.add(char)
        char = bytes([0x1B, septet]).decode(GSM_CODEC, errors="ignore")
        if len(char) == 1 and char not in basic:
            extension.add(char)
    return frozenset(basic), frozenset(extension)


GSM_BASIC, GSM_EXTENSION = _gsm_tables()
_GSM_ALL = GSM_BASIC | GSM_EXTENSION


def gsm_septets(char: str) -> int:
    """Septets `char` costs in GSM 03.38 (1, or 2 for the extension table); 0 if it does
    not fit at all."""
    return 1 if char in GSM_BASIC else 2 if char in GSM_EXTENSION else 0


def ucs2_units(char: str) -> int:
    return 2 if ord(char) > 0xFFFF else 1


_GSM_TEXT = re.compile("[" + "".join(re.escape(c) for c in sorted(_GSM_ALL)) + "]*")


def _gsm_length(text: str) -> int | None:
    """Septets for the whole text, or None if some character is not GSM 03.38."""
    if _GSM_TEXT.fullmatch(text) is None:
        return None
    return len(text) + sum(map(text.count, GSM_EXTENSION))


def fits_gsm7(text: str) -> bool:
    return _gsm_length(text) is not None


def choose_encoding(text: str) -> Encoding:
    return Encoding.GSM7 if fits_gsm7(text) else Encoding.UCS2


def unit_cost(encoding: Encoding):
    return gsm_septets if encoding is Encoding.GSM7 else ucs2_units


def length_in_units(text: str, encoding: Encoding) -> int:
    if encoding is Encoding.UCS2:
        return len(text.encode("utf-16-be")) // 2
    length = _gsm_length(text)
    if length is None:
        raise ValueError("text is not GSM 03.38")
    return length


@dataclass(frozen=True, slots=True)
class EncodedText:
    encoding: Encoding
    units: int  # septets for GSM 03.38, UTF-16 code units for UCS-2
    segments: int


def analyse(text: str, *, udh_16bit_ref: bool = False) -> EncodedText:
    units = _gsm_length(text)
    encoding = Encoding.GSM7 if units is not None else Encoding.UCS2
    if units is None:
        units = len(text.encode("utf-16-be")) // 2
    if units <= SINGLE[encoding]:
        return EncodedText(encoding, units, 1)
    return EncodedText(encoding, units, len(split_segments(text, encoding, udh_16bit_ref=udh_16bit_ref)))


def split_segments(text: str, encoding: Encoding, *, udh_16bit_ref: bool = False,
                   single_capacity: int | None = None, part_capacity: int | None = None) -> list[str]:
    """Split `text` into the pieces that go into each part on the wire.

    A text that fits one message is one piece. Otherwise each piece holds at most the
    concatenated capacity (153/67, or 152/66 with a 16-bit reference), never splitting a
    character's units across two pieces.
    """
    cost = unit_cost(encoding)
    single = single_capacity or SINGLE[encoding]
    per_part = part_capacity or (CONCAT_16BIT_REF if udh_16bit_ref else CONCAT_8BIT_REF)[encoding]
    costs = [cost(c) for c in text]
    if encoding is Encoding.GSM7 and not all(costs):
        bad = next(c for c, n in zip(text, costs, strict=True) if not n)
        raise ValueError(f"character {bad!r} is not in GSM 03.38")
    if sum(costs) <= single:
        return [text]
    pieces: list[str] = []
    start = used = 0
    for i, n in enumerate(costs):
        if used + n > per_part:
            pieces.append(text[start:i])
            start, used = i, 0
        used += n
    pieces.append(text[start:])
    return pieces


def encode_gsm7_unpacked(text: str) -> bytes:
    """One octet per septet, escape pairs as 0x1B xx: what SMPP data_coding 0 carries."""
    return text.encode(GSM_CODEC)


def encode_ucs2(text: str) -> bytes:
    return text.encode("utf-16-be")

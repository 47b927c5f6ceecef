"""SMS text encoding: pick GSM 03.38 or UCS-2, count units and split into segments.

`segment(text, profile)` is the one place that decides a text's encoding and its parts:
rendering (the outbox's segment count, `max_segments`, `test-rule`) and the SMPP wire both
call it with the same `SegmentingProfile`, derived from the transport's settings, so what
is counted is what is sent. A boundary never cuts a GSM escape pair (``€``, ``[`` … cost
two septets) nor a UTF-16 surrogate pair (emoji).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import gsm0338  # noqa: F401  (registers the 'gsm03.38' codec)

from ..model import Encoding

GSM_CODEC = "gsm03.38"

# Per-segment capacity: single message, with an 8-bit-reference UDH (6 octets), with a
# 16-bit-reference UDH (7 octets).
SINGLE = {Encoding.GSM7: 160, Encoding.UCS2: 70}
CONCAT_8BIT_REF = {Encoding.GSM7: 153, Encoding.UCS2: 67}
CONCAT_16BIT_REF = {Encoding.GSM7: 152, Encoding.UCS2: 66}
# An 8-bit alphabet (IA5, Latin-1) sent as it is: 140 octets of user data, less the UDH.
OCTETS_SINGLE, OCTETS_8BIT_REF, OCTETS_16BIT_REF = 140, 134, 133

ALPHABETS = ("gsm7", "latin1", "ascii")  # what a text that fits GSM 03.38 goes as
CONCATENATIONS = ("udh8", "udh16", "sar", "payload")
_CODECS = {"latin1": "latin-1", "ascii": "ascii"}


@dataclass(frozen=True, slots=True)
class SegmentingProfile:
    """What counting a text's parts needs to know of the transport.

    alphabet: a text that fits GSM 03.38 goes as GSM 7-bit, or as Latin-1/IA5 octets (then
    a text with a character outside that set, such as € or a Greek capital, goes as UCS-2).
    concatenation: udh8 / udh16 (152 septets, 66 UCS-2 units per part) / sar (the SMSC adds
    an 8-bit-reference UDH) / payload (one submit; the SMSC splits as udh8).
    octet_limits: an 8-bit alphabet counts octets against the 140 of a message's user data
    (SMPP 3.4, GSM 03.40); False for an SMSC that transcodes it to GSM 7-bit (160 septets).
    """

    alphabet: str = "gsm7"
    concatenation: str = "udh8"
    octet_limits: bool = True


DEFAULT_PROFILE = SegmentingProfile()  # GSM 7-bit with an 8-bit-reference UDH (modems too)


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


def _one_octet(char: str) -> int:
    return 1


def unit_cost(encoding: Encoding) -> Callable[[str], int]:
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
    units: int  # septets for GSM 03.38 (octets for an octet-limited 8-bit alphabet), UTF-16 units for UCS-2
    segments: int  # messages the handset receives: what a rule's max_segments limits
    pieces: tuple[str, ...] = ()  # the text of each submit on the wire (one for payload)


def _limits(encoding: Encoding, profile: SegmentingProfile) -> tuple[Callable[[str], int], int, int]:
    """(cost of a character, capacity of a single message, capacity of one part)."""
    udh16 = profile.concatenation == "udh16"
    if encoding is Encoding.UCS2:
        return ucs2_units, SINGLE[encoding], (CONCAT_16BIT_REF if udh16 else CONCAT_8BIT_REF)[encoding]
    if profile.alphabet != "gsm7" and profile.octet_limits:
        return _one_octet, OCTETS_SINGLE, OCTETS_16BIT_REF if udh16 else OCTETS_8BIT_REF
    return gsm_septets, SINGLE[encoding], (CONCAT_16BIT_REF if udh16 else CONCAT_8BIT_REF)[encoding]


def segment(text: str, profile: SegmentingProfile = DEFAULT_PROFILE) -> EncodedText:
    """The encoding, size, handset segments and wire pieces of `text` as `profile` sends it."""
    units = _gsm_length(text)
    encoding = Encoding.GSM7 if units is not None else Encoding.UCS2
    if encoding is Encoding.GSM7 and profile.alphabet != "gsm7":
        try:
            text.encode(_CODECS[profile.alphabet])
        except UnicodeEncodeError:
            encoding = Encoding.UCS2
    cost, single, per_part = _limits(encoding, profile)
    if encoding is Encoding.UCS2:
        units = len(text.encode("utf-16-be")) // 2
    elif cost is _one_octet:
        units = len(text)
    assert units is not None
    if units <= single:
        return EncodedText(encoding, units, 1, (text,))
    pieces = tuple(_split(text, cost, per_part))
    if profile.concatenation == "payload":
        return EncodedText(encoding, units, len(pieces), (text,))
    return EncodedText(encoding, units, len(pieces), pieces)


def analyse(text: str, *, udh_16bit_ref: bool = False, profile: SegmentingProfile | None = None) -> EncodedText:
    if profile is None:
        profile = SegmentingProfile(concatenation="udh16") if udh_16bit_ref else DEFAULT_PROFILE
    return segment(text, profile)


def split_segments(text: str, encoding: Encoding, *, udh_16bit_ref: bool = False,
                   single_capacity: int | None = None, part_capacity: int | None = None) -> list[str]:
    """Split `text` (GSM 7-bit or UCS-2) into the pieces of each part (see `segment`, which
    also decides the encoding).

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
    return _split(text, cost, per_part)


def _split(text: str, cost: Callable[[str], int], per_part: int) -> list[str]:
    pieces: list[str] = []
    start = used = 0
    for i, char in enumerate(text):
        n = cost(char)
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

"""SMS PDUs (3GPP TS 23.040) as a modem takes and gives them in PDU mode (``AT+CMGF=0``).

Written here rather than taken from a library: on PyPI `smspdudecoder` only decodes,
`smspdu` was last released in 2011 and the python-gsmmodem forks (last upstream release
2021) bundle a whole modem stack. The character mapping itself comes from `gsm0338`
(the same codec the rest of aftercalld counts segments with); this module only packs
septets and lays out the fields. Encoders and decoders come in pairs so the test modem
simulator can read what we send and write what a network would send us.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import gsm0338  # noqa: F401  (registers the 'gsm03.38' codec)

from ..model import Encoding, ReportState

GSM_CODEC = "gsm03.38"

# TP-MTI values in the low two bits of the first octet.
MTI_DELIVER = 0b00  # SC → MS (also what an MS receives)
MTI_SUBMIT = 0b01  # MS → SC
MTI_STATUS_REPORT = 0b10  # SC → MS

DCS_GSM7 = 0x00
DCS_8BIT = 0x04
DCS_UCS2 = 0x08

TOA_INTERNATIONAL = 0x91
TOA_UNKNOWN = 0x81
TOA_ALPHANUMERIC = 0xD0


class PduError(ValueError):
    """A PDU that cannot be parsed; the message says which field and why."""


# --- 7-bit packing ---------------------------------------------------------------------------


def pack_septets(septets: bytes, fill_bits: int = 0) -> bytes:
    """Pack 7-bit values LSB first; `fill_bits` zero bits come first so that, after a
    UDH, the text starts on a septet boundary (TS 23.040 9.2.3.24)."""
    acc = 0
    nbits = fill_bits
    for s in septets:
        acc |= (s & 0x7F) << nbits
        nbits += 7
    return acc.to_bytes((nbits + 7) // 8, "little")


def unpack_septets(data: bytes, count: int, fill_bits: int = 0) -> bytes:
    acc = int.from_bytes(data, "little") >> fill_bits
    available = (len(data) * 8 - fill_bits) // 7
    if count > available:
        raise PduError(f"user data holds {available} septets, header says {count}")
    return bytes((acc >> (7 * i)) & 0x7F for i in range(count))


def gsm7_septets(text: str) -> bytes:
    """Unpacked septets (escape pairs as 0x1B xx); raises ValueError naming the character
    that does not fit."""
    try:
        return text.encode(GSM_CODEC)
    except UnicodeEncodeError as exc:
        raise ValueError(f"character {text[exc.start]!r} is not in GSM 03.38") from None


def gsm7_decode(septets: bytes) -> str:
    # A lone trailing escape (a sender's bug) decodes to nothing rather than failing the
    # whole message.
    return septets.decode(GSM_CODEC, errors="replace")


# --- addresses and timestamps ----------------------------------------------------------------


def _swap_nibbles(digits: str) -> bytes:
    if len(digits) % 2:
        digits += "F"
    return bytes.fromhex("".join(digits[i + 1] + digits[i] for i in range(0, len(digits), 2)))


_BCD_DIGITS = "0123456789*#abc"


def _unswap_nibbles(data: bytes, ndigits: int | None = None) -> str:
    out = []
    for b in data:
        for nibble in (b & 0x0F, b >> 4):
            if nibble == 0x0F:
                continue
            out.append(_BCD_DIGITS[nibble] if nibble < len(_BCD_DIGITS) else "?")
    text = "".join(out)
    return text[:ndigits] if ndigits is not None else text


def encode_address(number: str) -> bytes:
    """TP-DA / TP-OA: length in digits, type of address, swapped BCD. A leading ``+``
    means international (TON 1); anything else goes as TON unknown."""
    number = number.strip()
    toa = TOA_INTERNATIONAL if number.startswith("+") else TOA_UNKNOWN
    digits = number.lstrip("+")
    if not digits or not all(c in "0123456789*#" for c in digits):
        raise ValueError(f"not a diallable number: {number!r}")
    return bytes([len(digits), toa]) + _swap_nibbles(digits)


def encode_alphanumeric_address(text: str) -> bytes:
    septets = gsm7_septets(text)
    packed = pack_septets(septets)
    return bytes([len(packed) * 2, TOA_ALPHANUMERIC]) + packed


def decode_address(data: bytes, pos: int) -> tuple[str, int]:
    """Returns (address, position after it). International numbers get a ``+``."""
    try:
        ndigits, toa = data[pos], data[pos + 1]
    except IndexError:
        raise PduError("address runs past the end") from None
    nbytes = (ndigits + 1) // 2
    raw = data[pos + 2 : pos + 2 + nbytes]
    if len(raw) < nbytes:
        raise PduError("address runs past the end")
    ton = (toa >> 4) & 0x07
    if ton == 0x05:  # alphanumeric: packed GSM 7-bit, length counts semi-octets
        text = gsm7_decode(unpack_septets(raw, ndigits * 4 // 7))
        return text, pos + 2 + nbytes
    digits = _unswap_nibbles(raw, ndigits)
    return ("+" + digits if ton == 0x01 else digits), pos + 2 + nbytes


def encode_sca(number: str | None) -> bytes:
    """The SMSC address that prefixes a PDU for the modem: empty (``00``) means "use
    the one stored in the SIM/modem" (``AT+CSCA``)."""
    if not number:
        return b"\x00"
    addr = encode_address(number)
    return bytes([len(addr) - 1]) + addr[1:]


def decode_sca(data: bytes) -> tuple[str, int]:
    n = data[0] if data else 0
    if n == 0:
        return "", 1
    if len(data) < 1 + n:
        raise PduError("SMSC address runs past the end")
    toa = data[1]
    digits = _unswap_nibbles(data[2 : 1 + n])
    return ("+" + digits if (toa >> 4) & 0x07 == 1 else digits), 1 + n


def encode_timestamp(when: datetime) -> bytes:
    if when.tzinfo is None:
        raise ValueError("timestamp must be timezone-aware")
    offset = when.utcoffset() or timedelta(0)
    quarters = int(abs(offset.total_seconds()) // 900)
    digits = when.strftime("%y%m%d%H%M%S") + f"{quarters:02d}"
    raw = bytearray(_swap_nibbles(digits))
    if offset < timedelta(0):
        raw[6] |= 0x08
    return bytes(raw)


def decode_timestamp(data: bytes) -> datetime | None:
    if len(data) != 7:
        raise PduError("timestamp is not 7 octets")
    try:
        tz_octet = data[6]
        negative = bool(tz_octet & 0x08)
        tz_digits = _unswap_nibbles(bytes([tz_octet & 0xF7]))
        fields_ = [int(_unswap_nibbles(bytes([b]))) for b in data[:6]]
        quarters = int(tz_digits)
        offset = timedelta(minutes=15 * quarters) * (-1 if negative else 1)
        yy, mo, dd, hh, mi, ss = fields_
        century = 1900 if yy >= 90 else 2000  # no SMS was sent before the 1990s
        return datetime(century + yy, mo, dd, hh, mi, ss, tzinfo=timezone(offset))
    except ValueError:
        # A timestamp the SC got wrong is no reason to drop the report or the reply.
        return None


def encode_relative_validity(minutes: int) -> int:
    """TP-VP relative format (TS 23.040 9.2.3.12.1), rounded up to the next step."""
    if minutes <= 0:
        raise ValueError("validity must be positive")
    if minutes <= 720:
        return max(0, -(-minutes // 5) - 1)
    if minutes <= 1440:
        return 143 + -(-(minutes - 720) // 30)
    days = -(-minutes // 1440)
    if days <= 30:
        return 166 + days
    weeks = min(-(-days // 7), 63)
    return 192 + weeks


def relative_validity_minutes(vp: int) -> int:
    if vp <= 143:
        return (vp + 1) * 5
    if vp <= 167:
        return 720 + (vp - 143) * 30
    if vp <= 196:
        return (vp - 166) * 1440
    return (vp - 192) * 7 * 1440


# --- user data --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Concat:
    reference: int
    total: int
    sequence: int  # 1-based


def concat_udh(ref: int, total: int, seq: int) -> bytes:
    """IEI 00 (8-bit reference): the header every handset reassembles."""
    return bytes([0x05, 0x00, 0x03, ref & 0xFF, total, seq])


def _parse_udh(udh: bytes) -> Concat | None:
    """Find a concatenation element (IEI 00 or 08) in a UDH (length octet included)."""
    pos, end = 1, min(len(udh), 1 + udh[0])
    while pos + 1 < end:
        iei, iel = udh[pos], udh[pos + 1]
        body = udh[pos + 2 : pos + 2 + iel]
        if iei == 0x00 and iel == 3 and len(body) == 3:
            return Concat(body[0], body[1], body[2])
        if iei == 0x08 and iel == 4 and len(body) == 4:
            return Concat((body[0] << 8) | body[1], body[2], body[3])
        pos += 2 + iel
    return None


def encode_user_data(text: str, encoding: Encoding, udh: bytes = b"") -> tuple[int, bytes]:
    """Returns (TP-UDL, TP-UD). UDL counts septets for GSM 7-bit, octets for UCS-2."""
    if encoding is Encoding.UCS2:
        body = text.encode("utf-16-be")
        ud = udh + body
        if len(ud) > 140:
            raise ValueError(f"user data is {len(ud)} octets, more than 140")
        return len(ud), ud
    septets = gsm7_septets(text)
    header_bits = len(udh) * 8
    fill = (7 - header_bits % 7) % 7
    header_septets = (header_bits + fill) // 7
    udl = header_septets + len(septets)
    if udl > 160:
        raise ValueError(f"user data is {udl} septets, more than 160")
    packed = bytearray(pack_septets(septets, fill))
    if packed and (len(packed) * 8 - fill - 7 * len(septets)) == 7:
        # TS 23.038 6.1.2.3.1: seven spare bits carry CR, so a phone that counts septets
        # from the octets shows nothing rather than a stray "@".
        packed[-1] |= 0x0D << 1
    return udl, udh + bytes(packed)


def decode_user_data(dcs: int, udhi: bool, udl: int, ud: bytes) -> tuple[str, Encoding | None, Concat | None]:
    alphabet = _alphabet(dcs)
    udh = b""
    if udhi:
        if not ud:
            raise PduError("UDHI set but user data is empty")
        udh = ud[: 1 + ud[0]]
        if len(udh) != 1 + ud[0]:
            raise PduError("user data header runs past the end")
    concat = _parse_udh(udh) if udh else None
    if alphabet == "gsm7":
        header_bits = len(udh) * 8
        fill = (7 - header_bits % 7) % 7 if udh else 0
        header_septets = (header_bits + fill) // 7
        septets = unpack_septets(ud[len(udh):], udl - header_septets, fill)
        return gsm7_decode(septets), Encoding.GSM7, concat
    body = ud[len(udh) : udl]
    if alphabet == "ucs2":
        return body.decode("utf-16-be", errors="replace"), Encoding.UCS2, concat
    return body.decode("latin-1"), None, concat


def _alphabet(dcs: int) -> str:
    group = dcs >> 4
    if group <= 0x07 or group == 0x0F:  # general data coding / message class groups
        if group == 0x0F:
            return "8bit" if dcs & 0x04 else "gsm7"
        if dcs & 0x20:  # compressed: we cannot read it
            return "8bit"
        return {0: "gsm7", 1: "8bit", 2: "ucs2", 3: "gsm7"}[(dcs >> 2) & 0x03]
    if group in (0x0C, 0x0D):
        return "gsm7"
    if group == 0x0E:
        return "ucs2"
    return "8bit"


# --- SMS-SUBMIT -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubmitPdu:
    """One part, ready for ``AT+CMGS=<tpdu_length>`` followed by `hex` and Ctrl-Z."""

    hex: str
    tpdu_length: int  # octets after the SMSC address, as AT+CMGS wants


def build_submit(destination: str, text: str, encoding: Encoding, *, status_report: bool = False,
                 validity_minutes: int | None = None, concat: Concat | None = None,
                 smsc: str | None = None, message_reference: int = 0) -> SubmitPdu:
    udh = concat_udh(concat.reference, concat.total, concat.sequence) if concat else b""
    first = MTI_SUBMIT
    if validity_minutes:
        first |= 0b10 << 3  # VPF relative
    if status_report:
        first |= 0x20
    if udh:
        first |= 0x40
    udl, ud = encode_user_data(text, encoding, udh)
    tpdu = bytearray([first, message_reference & 0xFF])
    tpdu += encode_address(destination)
    tpdu += bytes([0x00, DCS_UCS2 if encoding is Encoding.UCS2 else DCS_GSM7])
    if validity_minutes:
        tpdu.append(encode_relative_validity(validity_minutes))
    tpdu.append(udl)
    tpdu += ud
    return SubmitPdu((encode_sca(smsc) + bytes(tpdu)).hex().upper(), len(tpdu))


def build_message(destination: str, pieces: list[str], encoding: Encoding, *, reference: int,
                  status_report: bool = False, validity_minutes: int | None = None,
                  smsc: str | None = None) -> list[SubmitPdu]:
    """All parts of one text; `pieces` as `rules.encoding.split_segments` returns them."""
    if len(pieces) > 255:
        raise ValueError(f"{len(pieces)} parts is more than a concatenated SMS can hold")
    total = len(pieces)
    return [
        build_submit(destination, piece, encoding, status_report=status_report,
                     validity_minutes=validity_minutes, smsc=smsc,
                     concat=Concat(reference & 0xFF, total, i) if total > 1 else None)
        for i, piece in enumerate(pieces, start=1)
    ]


@dataclass(frozen=True, slots=True)
class DecodedSubmit:
    destination: str
    text: str
    encoding: Encoding | None
    dcs: int
    status_report: bool
    message_reference: int
    validity: int | None  # raw relative TP-VP octet
    concat: Concat | None
    smsc: str = ""


def split_sca(data: bytes, tpdu_length: int | None) -> tuple[str, bytes]:
    """Modems usually, but not always, put the SMSC address in front of the TPDU they give
    us (+CMGR, +CMT, +CDS); the announced TPDU length tells whether they did."""
    if tpdu_length is not None and len(data) == tpdu_length:
        return "", data
    smsc, n = decode_sca(data)
    return smsc, data[n:]


def _hex(pdu: str | bytes) -> bytes:
    if isinstance(pdu, bytes):
        return pdu
    try:
        return bytes.fromhex(pdu.strip())
    except ValueError:
        raise PduError("not hexadecimal") from None


def decode_submit(pdu: str | bytes, tpdu_length: int | None = None) -> DecodedSubmit:
    smsc, t = split_sca(_hex(pdu), tpdu_length)
    try:
        first = t[0]
        if first & 0x03 != MTI_SUBMIT:
            raise PduError(f"not an SMS-SUBMIT (TP-MTI {first & 0x03})")
        mr = t[1]
        da, pos = decode_address(t, 2)
        dcs = t[pos + 1]  # t[pos] is TP-PID: carried, not interpreted
        pos += 2
        vpf = (first >> 3) & 0x03
        vp = None
        if vpf == 0b10:
            vp = t[pos]
            pos += 1
        elif vpf in (0b01, 0b11):
            pos += 7
        udl = t[pos]
        ud = t[pos + 1 :]
    except IndexError:
        raise PduError("SMS-SUBMIT is truncated") from None
    text, enc, concat = decode_user_data(dcs, bool(first & 0x40), udl, ud)
    return DecodedSubmit(da, text, enc, dcs, bool(first & 0x20), mr, vp, concat, smsc)


# --- SMS-DELIVER (incoming texts) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Deliver:
    sender: str
    text: str
    timestamp: datetime | None
    concat: Concat | None
    encoding: Encoding | None
    smsc: str = ""


def build_deliver(sender: str, text: str, encoding: Encoding, timestamp: datetime, *,
                  concat: Concat | None = None, smsc: str = "+15550000000") -> str:
    udh = concat_udh(concat.reference, concat.total, concat.sequence) if concat else b""
    first = MTI_DELIVER | 0x04  # TP-MMS: no more messages waiting
    if udh:
        first |= 0x40
    udl, ud = encode_user_data(text, encoding, udh)
    if sender and not sender.lstrip("+").isdigit():
        oa = encode_alphanumeric_address(sender)
    else:
        oa = encode_address(sender)
    tpdu = bytes([first]) + oa
    tpdu += bytes([0x00, DCS_UCS2 if encoding is Encoding.UCS2 else DCS_GSM7])
    tpdu += encode_timestamp(timestamp) + bytes([udl]) + ud
    return (encode_sca(smsc) + tpdu).hex().upper()


def decode_deliver(pdu: str | bytes, tpdu_length: int | None = None) -> Deliver:
    smsc, t = split_sca(_hex(pdu), tpdu_length)
    try:
        first = t[0]
        if first & 0x03 != MTI_DELIVER:
            raise PduError(f"not an SMS-DELIVER (TP-MTI {first & 0x03})")
        oa, pos = decode_address(t, 1)
        dcs = t[pos + 1]
        ts = decode_timestamp(t[pos + 2 : pos + 9])
        udl = t[pos + 9]
        ud = t[pos + 10 :]
    except IndexError:
        raise PduError("SMS-DELIVER is truncated") from None
    text, enc, concat = decode_user_data(dcs, bool(first & 0x40), udl, ud)
    return Deliver(oa, text, ts, concat, enc, smsc)


# --- SMS-STATUS-REPORT ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatusReport:
    message_reference: int
    recipient: str
    sc_timestamp: datetime | None
    discharge_time: datetime | None
    status: int  # TP-ST
    smsc: str = ""

    @property
    def meaning(self) -> str:
        return status_meaning(self.status)


def build_status_report(mr: int, recipient: str, status: int, sc_timestamp: datetime,
                        discharge_time: datetime, *, smsc: str | None = "+15550000000") -> tuple[str, int]:
    """Returns (hex, TPDU length) as a modem shows it in ``+CDS: <length>``."""
    tpdu = bytes([MTI_STATUS_REPORT, mr & 0xFF]) + encode_address(recipient)
    tpdu += encode_timestamp(sc_timestamp) + encode_timestamp(discharge_time) + bytes([status & 0xFF])
    prefix = encode_sca(smsc) if smsc is not None else b""
    return (prefix + tpdu).hex().upper(), len(tpdu)


def decode_status_report(pdu: str | bytes, tpdu_length: int | None = None) -> StatusReport:
    smsc, t = split_sca(_hex(pdu), tpdu_length)
    try:
        first = t[0]
        if first & 0x03 != MTI_STATUS_REPORT:
            raise PduError(f"not an SMS-STATUS-REPORT (TP-MTI {first & 0x03})")
        mr = t[1]
        ra, pos = decode_address(t, 2)
        scts = decode_timestamp(t[pos : pos + 7])
        dt = decode_timestamp(t[pos + 7 : pos + 14])
        st = t[pos + 14]
    except IndexError:
        raise PduError("SMS-STATUS-REPORT is truncated") from None
    return StatusReport(mr, ra, scts, dt, st, smsc)


# TS 23.040 9.2.3.15 TP-Status.
_STATUS_TEXT = {
    0x00: "received by the recipient",
    0x01: "forwarded, delivery not confirmed",
    0x02: "replaced by the SC",
    0x20: "congestion, SC still trying",
    0x21: "recipient busy, SC still trying",
    0x22: "no response from recipient, SC still trying",
    0x23: "service rejected, SC still trying",
    0x24: "quality of service not available, SC still trying",
    0x25: "error in recipient, SC still trying",
    0x40: "remote procedure error",
    0x41: "incompatible destination",
    0x42: "connection rejected by recipient",
    0x43: "not obtainable",
    0x44: "quality of service not available",
    0x45: "no interworking available",
    0x46: "validity period expired",
    0x47: "deleted by originating SME",
    0x48: "deleted by SC administration",
    0x49: "message does not exist",
    0x60: "congestion, SC gave up",
    0x61: "recipient busy, SC gave up",
    0x62: "no response from recipient, SC gave up",
    0x63: "service rejected, SC gave up",
    0x64: "quality of service not available, SC gave up",
    0x65: "error in recipient, SC gave up",
}


def status_meaning(st: int) -> str:
    if st in _STATUS_TEXT:
        return _STATUS_TEXT[st]
    if st < 0x20:
        return "delivered (SC-specific)"
    if st < 0x40:
        return "temporary error, SC still trying"
    if st < 0x60:
        return "permanent error"
    return "temporary error, SC gave up"


def report_state(st: int) -> ReportState:
    """TP-ST → the outbox's view: final states for 0x00–0x1F and 0x40–0x7F, ENROUTE while
    the SC is still trying (0x20–0x3F), which leaves the message as it is."""
    if st < 0x20:
        return ReportState.DELIVERED
    if st < 0x40:
        return ReportState.ENROUTE
    if st == 0x46:
        return ReportState.EXPIRED
    if st in (0x47, 0x48):
        return ReportState.DELETED
    if st == 0x42:
        return ReportState.REJECTED
    return ReportState.UNDELIVERABLE

"""Delivery receipts: what a receipt deliver_sm/data_sm says, and message-id matching.

Receipt text varies by vendor (``id:… sub:… dlvrd:… submit date:… done date:… stat:…
err:… text:…``; ``Text:``; 10- or 12-digit dates), and the TLVs may or may not be there, so
the TLVs win when present and the text fills the gaps.
"""
from __future__ import annotations

import re
import string
from dataclasses import dataclass

from ..model import ReportState
from ..textsafety import bounded
from . import pdu

# message_state TLV (SMPP 3.4 §5.2.28)
_TLV_STATES = {
    1: ReportState.ENROUTE,
    2: ReportState.DELIVERED,
    3: ReportState.EXPIRED,
    4: ReportState.DELETED,
    5: ReportState.UNDELIVERABLE,
    6: ReportState.ACCEPTED,
    7: ReportState.UNKNOWN,
    8: ReportState.REJECTED,
}

# stat: in the receipt text; ACKED/BUFFRED/ENROUTE are Kannel's intermediates.
_TEXT_STATES = {
    "DELIVRD": ReportState.DELIVERED,
    "DELIVERED": ReportState.DELIVERED,
    "UNDELIV": ReportState.UNDELIVERABLE,
    "UNDELIVERABLE": ReportState.UNDELIVERABLE,
    "EXPIRED": ReportState.EXPIRED,
    "REJECTD": ReportState.REJECTED,
    "REJECTED": ReportState.REJECTED,
    "DELETED": ReportState.DELETED,
    "UNKNOWN": ReportState.UNKNOWN,
    "ACCEPTD": ReportState.ACCEPTED,
    "ACCEPTED": ReportState.ACCEPTED,
    "ACKED": ReportState.ACCEPTED,
    "ENROUTE": ReportState.ENROUTE,
    "BUFFRED": ReportState.ENROUTE,
}

MAX_MESSAGE_ID_LENGTH = 128
MAX_RAW_LENGTH = 1000

# Keys up to "text:" whose value is one token; "text:" takes the rest of the line.
_KEYS = r"id|sub|dlvrd|submit[ _]date|done[ _]date|stat|err"
# A key with nothing after it ("err: text:…") has an empty value, not the next field.
_FIELD = re.compile(rf"(?i)\b({_KEYS})\s*:\s*((?!(?:{_KEYS}|text)\s*:)\S*)")
_TEXT_FIELD = re.compile(r"(?i)\btext\s*:(.*)\Z", re.S)


@dataclass(frozen=True, slots=True)
class Receipt:
    message_id: str
    state: ReportState
    error: str
    raw: str


def parse_receipt_text(text: str) -> dict[str, str]:
    """Fields of a receipt's text, keys lower-case with ``_`` for the space
    (``submit_date``); ``text`` is everything after ``text:``."""
    head = text
    out: dict[str, str] = {}
    m = _TEXT_FIELD.search(text)
    if m:
        out["text"] = m.group(1).strip()
        head = text[: m.start()]
    for key, value in _FIELD.findall(head):
        out.setdefault(key.lower().replace(" ", "_"), value)
    return out


def parse_receipt(message: pdu.ShortMessage) -> Receipt | None:
    """A receipt from a deliver_sm/data_sm whose esm_class says so; None when neither the
    TLVs nor the text carry a message id (the caller logs and keeps such a PDU)."""
    raw = message.content.decode("latin-1")
    fields = parse_receipt_text(raw)

    tlv_id = message.tlvs.get(pdu.TAG_RECEIPTED_MESSAGE_ID)
    message_id = tlv_id.rstrip(b"\x00").decode("ascii", "replace").strip() if tlv_id else ""
    if not message_id:
        message_id = fields.get("id", "")
    if not message_id:
        return None
    # An id is at most 65 octets (SMPP 3.4 §5.2.23) and a receipt's text a few hundred; a
    # 64 KB message_payload is kept only in part, in the outbox and in log lines alike.
    message_id = bounded(message_id, MAX_MESSAGE_ID_LENGTH)
    raw = bounded(raw, MAX_RAW_LENGTH)

    state = None
    tlv_state = message.tlvs.get(pdu.TAG_MESSAGE_STATE)
    if tlv_state:
        state = _TLV_STATES.get(tlv_state[0])
    if state is None:
        state = _TEXT_STATES.get(fields.get("stat", "").upper(), ReportState.UNKNOWN)

    error = ""
    if fields.get("err") and fields["err"].strip("0"):
        error = f"err:{fields['err']}"
    nec = message.tlvs.get(pdu.TAG_NETWORK_ERROR_CODE)
    if nec and len(nec) == 3 and (nec[1] or nec[2]):
        # type (1 ANSI-136, 2 IS-95, 3 GSM) and a 2-octet code
        code = f"network_error:{nec[0]}/{int.from_bytes(nec[1:], 'big')}"
        error = f"{error} {code}".strip()
    return Receipt(message_id, state, error, raw)


_HEX = frozenset(string.hexdigits)


def message_id_keys(message_id: str) -> set[str]:
    """Keys under which a message id matches, tolerant of the known interop differences:
    case (Jasmin #916), lost leading zeros (Jasmin #643), and hex in submit_sm_resp but
    decimal in the receipt or the other way round (Nexmo and others).

    Two ids plausibly name the same message when their key sets intersect. ``id:`` keys
    are the exact (case/zero-normalised) text and should win over ``n:`` (numeric) keys
    when a lookup finds more than one message.
    """
    mid = message_id.strip().lower()
    if not mid:
        return set()
    if mid.startswith("0x") and len(mid) > 2:
        mid = mid[2:]
    stripped = mid.lstrip("0") or "0"
    keys = {f"id:{stripped}"}
    if len(mid) <= 40:  # ids are ≤ 64 octets; long opaque ones are not numbers
        if mid.isascii() and mid.isdigit():
            keys.add(f"n:{int(mid, 10)}")
        if mid.isascii() and all(c in _HEX for c in mid):
            keys.add(f"n:{int(mid, 16)}")
    return keys


def receipt_id_as_submitted(message_id: str, msg_id_type: str) -> str:
    """A receipt's id rewritten in the base the submit_sm_resp used, for SMSCs configured
    as mixing bases (`msg_id_type`); unchanged when it does not parse in the stated base."""
    try:
        if msg_id_type == "hex_dec":
            return format(int(message_id.strip(), 10), "x")
        if msg_id_type == "dec_hex":
            return str(int(message_id.strip(), 16))
    except ValueError:
        pass
    return message_id


def same_message_id(a: str, b: str) -> bool:
    return bool(message_id_keys(a) & message_id_keys(b))

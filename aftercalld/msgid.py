"""Message-id matching tolerant of the ways SMSCs disagree with themselves.

A submit_sm_resp may say ``0A1B`` and the receipt ``2587`` (hex vs decimal, Nexmo), or
``000123`` vs ``123`` (leading zeros lost, Jasmin #643), or differ in case (Jasmin #916).
Each part is stored under `match_key` of its id; a receipt's id is looked up under
`candidate_keys`, the literal reading first, then the other base.
"""
from __future__ import annotations

_HEX = frozenset("0123456789abcdef")
# ASCII only: str.isdigit() is true for "²" and "٣", which int() then refuses or misreads.
_DECIMAL = frozenset("0123456789")


def match_key(message_id: str) -> str:
    value = message_id.strip().lower()
    if value.startswith("0x"):
        value = value[2:]
    return value.lstrip("0") or ("0" if value else "")


def candidate_keys(message_id: str) -> list[str]:
    """The keys a receipt's id may have been stored under, most literal first."""
    key = match_key(message_id)
    out = [key]
    if key and len(key) <= 32:
        if set(key) <= _DECIMAL:
            out.append(format(int(key, 10), "x"))  # receipt decimal, response hex
        if set(key) <= _HEX:
            out.append(str(int(key, 16)))  # receipt hex, response decimal
    return list(dict.fromkeys(out))

"""Message-id matching tolerant of the ways SMSCs disagree with themselves.

A submit_sm_resp may say ``0A1B`` and the receipt ``2587`` (hex vs decimal, Nexmo), or
``000123`` vs ``123`` (leading zeros lost, Jasmin #643), or differ in case (Jasmin #916).
`exact_key` is tried first; `loose_keys` only when the exact key finds nothing.
"""
from __future__ import annotations

_HEX = frozenset("0123456789abcdef")


def exact_key(message_id: str) -> str:
    value = message_id.strip().lower()
    stripped = value.lstrip("0")
    return "s:" + (stripped or ("0" if value else ""))


def loose_keys(message_id: str) -> set[str]:
    value = message_id.strip().lower()
    if value.startswith("0x"):
        value = value[2:]
    keys: set[str] = set()
    if value and len(value) <= 32:
        if value.isdigit():
            keys.add("n:" + str(int(value, 10)))
        if set(value) <= _HEX:
            keys.add("n:" + str(int(value, 16)))
    return keys


def all_keys(message_id: str) -> set[str]:
    return {exact_key(message_id)} | loose_keys(message_id)

"""Strings from outside (PBX events, SMSC receipts, modem lines, call files) are hostile.

Three defences, applied where such strings enter or leave:
- `bounded`: cap the length and replace unpaired surrogates, so one caller id cannot cost
  megabytes in every cache and record it passes through, nor crash an encoder later;
- `escape_controls`: make control, format and line-separator characters visible
  (``\\n``, ``\\x1b``, ``\\u202e``), so a value cannot forge a log line, move a terminal's
  cursor or reorder a table row;
- `csv_cell`: keep a spreadsheet from reading a cell as a formula (OWASP CSV injection).
"""
from __future__ import annotations

import re
import unicodedata

# Longer than any caller id, name, DID, channel variable or message id a PBX or SMSC sends
# (SIP display names are in practice < 100 characters; SMPP ids are <= 64 octets).
MAX_FIELD_LENGTH = 256

_SURROGATE = re.compile("[\ud800-\udfff]")
# Characters that move the cursor, end a line or reorder text: C0/C1 controls (ESC of ANSI
# sequences included), format characters (bidi overrides, zero-width), line/paragraph
# separators, and unpaired surrogates.
_ESCAPE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# What a spreadsheet treats as the start of a formula (OWASP: = + - @, tab, carriage return).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def replace_surrogates(value: str) -> str:
    """Unpaired surrogates (from JSON ``\\ud800`` or ``surrogateescape``) as U+FFFD: they
    cannot be encoded as UTF-8, UTF-16 or GSM, so left in they crash whatever writes them."""
    if value.isascii() or not _SURROGATE.search(value):
        return value
    return _SURROGATE.sub("\ufffd", value)


def bounded(value: str, max_length: int = MAX_FIELD_LENGTH) -> str:
    """`value` safe to keep: at most `max_length` characters, no unpaired surrogates."""
    if len(value) > max_length:
        value = value[:max_length]
    return replace_surrogates(value)


def _escape_char(char: str) -> str:
    short = _SHORT_ESCAPES.get(char)
    if short is not None:
        return short
    if unicodedata.category(char) not in _ESCAPE_CATEGORIES:
        return char
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(value: object) -> str:
    """`value` as one line of visible text: control, format and separator characters and
    unpaired surrogates written as escapes. A literal backslash stays as it is: text that
    merely looks like an escape cannot start a new line."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():
        return text  # the common case: nothing to do (printable excludes Cc, Cf, Zl, Zp, Cs)
    if not any(unicodedata.category(c) in _ESCAPE_CATEGORIES for c in text):
        return text  # only non-ASCII spaces, which are harmless
    return "".join(_escape_char(c) for c in text)


def csv_cell(value: object) -> object:
    """A CSV cell that a spreadsheet shows as text, not runs as a formula: a leading
    ``'`` when the text starts with a formula character. Numbers pass unchanged, and so
    does a phone number such as ``+447700900123``, so an E.164 column stays usable."""
    if not isinstance(value, str) or not value.startswith(_FORMULA_START):
        return value
    if value.startswith("+") and value[1:].isascii() and value[1:].isdigit():
        return value
    return "'" + value

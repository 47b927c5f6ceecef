"""SMS templates: ``{placeholder}`` and ``{placeholder|fallback}``, nothing more.

Values are data, never code: there is no attribute, index or format-spec access, and a
value that itself contains braces or ``%s`` is inserted literally. Templates are parsed
once at config load, so an unknown placeholder is a config error, not a surprise at send
time.
"""
from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from ..model import CallRecord

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|var\.[A-Za-z_][A-Za-z0-9_]*")

# Placeholders every template may use, with what they mean (shown by `test-rule --help`).
RECORD_PLACEHOLDERS = {
    "call_id": "the call's id on the PBX",
    "pbx": "the PBX name from the config",
    "direction": "inbound / outbound / internal",
    "status": "connected / missed / voicemail / interrupted",
    "caller_number": "the number that placed the call, as the PBX gave it",
    "caller_name": "caller id name",
    "customer_number": "the external party: caller (inbound) or number dialled (outbound)",
    "dialled_number": "the DID (inbound) or number dialled (outbound)",
    "did": "same as dialled_number",
    "agent_extension": "the agent's extension",
    "agent_name": "the agent's name",
    "agents": "every extension the caller talked to, in order, comma-separated (after a transfer: several)",
    "agent_number": "the agent's mobile number from [agents]",
    "department": "department (channel variable)",
    "queue": "queue name",
    "ring_seconds": "seconds of ringing, whole",
    "talk_seconds": "seconds the caller was bridged with a person (summed over transfers), whole",
    "talk_minutes": "minutes of conversation, rounded up",
    "hangup_cause": "Q.850 cause name, e.g. NORMAL_CLEARING",
    "voicemail_box": "mailbox reached, e.g. 100@default",
    "voicemail_reached": "yes when the voicemail greeting answered (message left or not), else no",
    "start_time": "when the call started, HH:MM in the PBX time zone",
    "start_date": "the call's date, YYYY-MM-DD in the PBX time zone",
    "start_datetime": "YYYY-MM-DD HH:MM in the PBX time zone",
    "end_time": "when the call ended, HH:MM in the PBX time zone",
    "weekday": "the call's weekday name in the PBX time zone, e.g. Monday",
}


class TemplateError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class _Literal:
    text: str


@dataclass(frozen=True, slots=True)
class _Placeholder:
    name: str
    fallback: str | None


@dataclass(frozen=True)
class Template:
    source: str
    parts: tuple[_Literal | _Placeholder, ...]

    @functools.cached_property
    def placeholders(self) -> frozenset[str]:
        return frozenset(p.name for p in self.parts if isinstance(p, _Placeholder))

    def render(self, values: Mapping[str, str]) -> str:
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, _Literal):
                out.append(part.text)
                continue
            value = values.get(part.name, "")
            if not value and part.fallback is not None:
                value = part.fallback
            out.append(value)
        return "".join(out)


def parse_template(source: str, known: set[str] | frozenset[str]) -> Template:
    """Parse `source`; raise TemplateError naming the first problem.

    ``{{`` and ``}}`` are literal braces. A fallback may contain any text but braces.
    """
    if not source.isascii():
        bad = next((i for i, c in enumerate(source) if "\ud800" <= c <= "\udfff"), None)
        if bad is not None:
            raise TemplateError(f"position {bad + 1}: a lone surrogate, not a character (no SMS can carry it)")
    parts: list[_Literal | _Placeholder] = []
    literal: list[str] = []
    i, n = 0, len(source)
    while i < n:
        ch = source[i]
        if ch == "{" and source.startswith("{{", i):
            literal.append("{")
            i += 2
        elif ch == "}" and source.startswith("}}", i):
            literal.append("}")
            i += 2
        elif ch == "}":
            raise TemplateError(f"unmatched '}}' at position {i + 1} (write '}}}}' for a literal brace)")
        elif ch == "{":
            end = source.find("}", i + 1)
            if end < 0:
                raise TemplateError(f"unclosed '{{' at position {i + 1}")
            body = source[i + 1:end]
            if "{" in body:
                raise TemplateError(f"'{{' inside a placeholder at position {i + 1}")
            name, sep, fallback = body.partition("|")
            name = name.strip()
            if not _NAME.fullmatch(name):
                raise TemplateError(
                    f"{{{body}}} is not a placeholder name (letters, digits, _; var.NAME for channel "
                    "variables; no attributes, indexes or format specs)"
                )
            if name not in known:
                raise TemplateError(f"unknown placeholder {{{name}}}{_suggest(name, known)}")
            if literal:
                parts.append(_Literal("".join(literal)))
                literal = []
            parts.append(_Placeholder(name, fallback if sep else None))
            i = end + 1
        else:
            literal.append(ch)
            i += 1
    if literal:
        parts.append(_Literal("".join(literal)))
    return Template(source, tuple(parts))


def _suggest(name: str, known: set[str] | frozenset[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f" (did you mean {{{close[0]}}}?)" if close else ""


# Stripped from values: controls (a newline or NUL must not reshape the text), format
# characters (U+202E/U+2066 reorder what the recipient reads, U+200B/U+FEFF hide in it),
# line/paragraph separators, and unpaired surrogates (no encoding can carry them).
_STRIPPED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def clean_value(value: str, max_length: int) -> str:
    """Strip control, format and separator characters and cap the length without cutting
    a combining mark."""
    if len(value) <= max_length and value.isprintable():
        return value  # the common case, and the hot path (printable excludes every stripped category)
    cleaned = "".join(c for c in value if unicodedata.category(c) not in _STRIPPED_CATEGORIES)
    if len(cleaned) > max_length:
        cleaned = cleaned[:max_length]
        while cleaned and unicodedata.combining(cleaned[-1]):
            cleaned = cleaned[:-1]
    return cleaned


def known_placeholders(variable_names: list[str] | tuple[str, ...], constants: Mapping[str, str]) -> frozenset[str]:
    return frozenset(RECORD_PLACEHOLDERS) | {f"var.{v}" for v in variable_names} | set(constants)


def _local(moment: datetime | None, tz: ZoneInfo) -> datetime | None:
    return moment.astimezone(tz) if moment else None


def _start(r: CallRecord, tz: ZoneInfo) -> datetime | None:
    return _local(r.start_time or r.end_time, tz)


def _end(r: CallRecord, tz: ZoneInfo) -> datetime | None:
    return _local(r.end_time or r.start_time, tz)


# How each placeholder is computed; only the ones a template uses are (hot path).
_GETTERS = {
    "call_id": lambda r, tz: r.call_id,
    "pbx": lambda r, tz: r.pbx,
    "direction": lambda r, tz: r.direction.value,
    "status": lambda r, tz: r.status.value,
    "caller_number": lambda r, tz: r.caller_number,
    "caller_name": lambda r, tz: r.caller_name,
    "customer_number": lambda r, tz: r.customer_number,
    "dialled_number": lambda r, tz: r.dialled_number,
    "did": lambda r, tz: r.dialled_number,
    "agent_extension": lambda r, tz: r.agent_extension,
    "agent_name": lambda r, tz: r.agent_name,
    "agents": lambda r, tz: ", ".join(r.agents),
    "agent_number": lambda r, tz: r.agent_number,
    "department": lambda r, tz: r.department,
    "queue": lambda r, tz: r.queue,
    "ring_seconds": lambda r, tz: str(int(r.ring_seconds)),
    "talk_seconds": lambda r, tz: str(int(r.talk_seconds)),
    "talk_minutes": lambda r, tz: str(-(-int(r.talk_seconds) // 60)),
    "hangup_cause": lambda r, tz: r.hangup_cause,
    "voicemail_box": lambda r, tz: r.voicemail_box,
    "voicemail_reached": lambda r, tz: "yes" if r.voicemail_reached else "no",
    "start_time": lambda r, tz: _fmt(_start(r, tz), "%H:%M"),
    "start_date": lambda r, tz: _fmt(_start(r, tz), "%Y-%m-%d"),
    "start_datetime": lambda r, tz: _fmt(_start(r, tz), "%Y-%m-%d %H:%M"),
    "end_time": lambda r, tz: _fmt(_end(r, tz), "%H:%M"),
    "weekday": lambda r, tz: _fmt(_start(r, tz), "%A"),
}
assert set(_GETTERS) == set(RECORD_PLACEHOLDERS)


def template_values(record: CallRecord, tz: ZoneInfo, constants: Mapping[str, str],
                    max_length: int, names: Iterable[str] | None = None) -> dict[str, str]:
    """The values of `names` (default: every placeholder) for this call, as clean text."""
    wanted = set(_GETTERS) | {f"var.{v}" for v in record.variables} | set(constants) if names is None else names
    values: dict[str, str] = {}
    for name in wanted:
        getter = _GETTERS.get(name)
        if getter is not None:
            values[name] = clean_value(getter(record, tz), max_length)
        elif name in constants:
            # The admin's own text from the config: no cap.
            values[name] = constants[name]
        elif name.startswith("var."):
            values[name] = clean_value(record.variables.get(name[4:], ""), max_length)
    return values


def _fmt(moment: datetime | None, pattern: str) -> str:
    return moment.strftime(pattern) if moment else ""

"""SMS templates: ``{placeholder}`` and ``{placeholder|fallback}``, nothing more.

Values are data, never code: there is no attribute, index or format-spec access, and a
value that itself contains braces or ``%s`` is inserted literally. Templates are parsed
once at config load, so an unknown placeholder is a config error, not a surprise at send
time.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import Mapping
from zoneinfo import ZoneInfo

from ..model import CallRecord

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|var\.[A-Za-z_][A-Za-z0-9_]*")

# Placeholders every template may use, with what they mean (shown by `test-rule --help`).
RECORD_PLACEHOLDERS = {
    "call_id": "the call's id on the PBX",
    "pbx": "the PBX name from the config",
    "direction": "inbound / outbound / internal",
    "status": "connected / missed / voicemail",
    "caller_number": "the number that placed the call, as the PBX gave it",
    "caller_name": "caller id name",
    "customer_number": "the external party: caller (inbound) or number dialled (outbound)",
    "dialled_number": "the DID (inbound) or number dialled (outbound)",
    "did": "same as dialled_number",
    "agent_extension": "the agent's extension",
    "agent_name": "the agent's name",
    "agent_number": "the agent's mobile number from [agents]",
    "department": "department (channel variable)",
    "queue": "queue name",
    "ring_seconds": "seconds of ringing, whole",
    "talk_seconds": "seconds of conversation (billsec), whole",
    "talk_minutes": "minutes of conversation, rounded up",
    "hangup_cause": "Q.850 cause name, e.g. NORMAL_CLEARING",
    "voicemail_box": "mailbox reached, e.g. 100@default",
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

    @property
    def placeholders(self) -> list[str]:
        return [p.name for p in self.parts if isinstance(p, _Placeholder)]

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


def clean_value(value: str, max_length: int) -> str:
    """Strip control characters (a caller name with a newline or NUL must not reshape the
    text) and cap the length without cutting a surrogate pair or combining mark."""
    cleaned = "".join(c for c in value if unicodedata.category(c) != "Cc")
    if len(cleaned) > max_length:
        cleaned = cleaned[:max_length]
        while cleaned and unicodedata.combining(cleaned[-1]):
            cleaned = cleaned[:-1]
    return cleaned


def known_placeholders(variable_names: list[str] | tuple[str, ...], constants: Mapping[str, str]) -> frozenset[str]:
    return frozenset(RECORD_PLACEHOLDERS) | {f"var.{v}" for v in variable_names} | set(constants)


def template_values(record: CallRecord, tz: ZoneInfo, constants: Mapping[str, str],
                    max_length: int) -> dict[str, str]:
    """Every placeholder's value for this call, as clean text."""
    start = record.start_time or record.end_time
    end = record.end_time or record.start_time
    local_start = start.astimezone(tz) if start else None
    local_end = end.astimezone(tz) if end else None
    talk = int(record.talk_seconds)
    raw = {
        "call_id": record.call_id,
        "pbx": record.pbx,
        "direction": record.direction.value,
        "status": record.status.value,
        "caller_number": record.caller_number,
        "caller_name": record.caller_name,
        "customer_number": record.customer_number,
        "dialled_number": record.dialled_number,
        "did": record.dialled_number,
        "agent_extension": record.agent_extension,
        "agent_name": record.agent_name,
        "agent_number": record.agent_number,
        "department": record.department,
        "queue": record.queue,
        "ring_seconds": str(int(record.ring_seconds)),
        "talk_seconds": str(talk),
        "talk_minutes": str(-(-talk // 60)),
        "hangup_cause": record.hangup_cause,
        "voicemail_box": record.voicemail_box,
        "start_time": _fmt(local_start, "%H:%M"),
        "start_date": _fmt(local_start, "%Y-%m-%d"),
        "start_datetime": _fmt(local_start, "%Y-%m-%d %H:%M"),
        "end_time": _fmt(local_end, "%H:%M"),
        "weekday": _fmt(local_start, "%A"),
    }
    values = {k: clean_value(v, max_length) for k, v in raw.items()}
    for name, value in record.variables.items():
        values[f"var.{name}"] = clean_value(value, max_length)
    # Constants come from the admin's own config: no cap, but still no control characters
    # other than the newlines they wrote on purpose.
    values.update(constants)
    return values


def _fmt(moment: datetime | None, pattern: str) -> str:
    return moment.strftime(pattern) if moment else ""

"""Turn the rule that fired into one message per recipient: number checked, text merged,
encoding chosen, segments counted, limits enforced."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from ..model import CallRecord, Encoding, RecipientKind
from ..phone import PhoneRules
from ..textsafety import replace_surrogates
from .encoding import DEFAULT_PROFILE, SegmentingProfile, segment
from .engine import RecipientSpec, Rule
from .templates import template_values


@dataclass(slots=True)  # built per message on the hot path: frozen costs a setattr per field
class RenderedMessage:
    key: str  # idempotency key: pbx/call id + rule + recipient
    rule: str
    kind: RecipientKind
    raw_number: str
    destination: str | None  # E.164, None when suppressed for the number itself
    sender: str
    text: str
    encoding: Encoding
    segments: int
    suppressed: str = ""  # reason, when this message must not be sent
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def state(self) -> str:
        return "suppressed" if self.suppressed else "queued"


@dataclass(frozen=True)
class AgentEntry:
    name: str = ""
    mobile: str = ""


@dataclass(frozen=True)
class RenderContext:
    phone: PhoneRules
    constants: Mapping[str, str]
    agents: Mapping[str, AgentEntry]  # extension -> directory entry
    max_value_length: int = 64
    # The transport's encoding and concatenation: segments counted here are parts on its wire.
    segmenting: SegmentingProfile = DEFAULT_PROFILE


def call_key(record: CallRecord) -> str:
    return f"{record.pbx}/{record.call_id}"


def enrich(record: CallRecord, agents: Mapping[str, AgentEntry]) -> CallRecord:
    """Fill the agent's name and mobile from the directory when the PBX did not say."""
    entry = agents.get(record.agent_extension)
    if entry is None or (record.agent_name or not entry.name) and (record.agent_number or not entry.mobile):
        return record
    return record.with_text(
        agent_name=record.agent_name or entry.name,
        agent_number=record.agent_number or entry.mobile,
    )


def render(rule: Rule, record: CallRecord, tz: ZoneInfo, ctx: RenderContext) -> list[RenderedMessage]:
    values = template_values(record, tz, ctx.constants, ctx.max_value_length, rule.placeholders)
    out: list[RenderedMessage] = []
    seen: set[str] = set()
    for spec in rule.recipients:
        for raw in _numbers(spec, record):
            message = _render_one(rule, spec, raw, record, values, ctx)
            # "both" with caller == agent, or a fixed number repeated: one text, not two.
            dedupe = message.destination or f"{spec.kind}:{raw}"
            if dedupe in seen:
                continue
            seen.add(dedupe)
            out.append(message)
    return out


def _numbers(spec: RecipientSpec, record: CallRecord) -> tuple[str, ...]:
    if spec.kind is RecipientKind.CALLER:
        return (record.customer_number,)
    if spec.kind is RecipientKind.AGENT:
        return (record.agent_number,)
    return spec.numbers


def _render_one(rule: Rule, spec: RecipientSpec, raw: str, record: CallRecord,
                values: Mapping[str, str], ctx: RenderContext) -> RenderedMessage:
    # Values are cleaned and templates checked at load; this keeps a stray lone surrogate
    # from crashing the encoder whatever path it took.
    text = replace_surrogates(spec.template.render(values))
    analysed = segment(text, ctx.segmenting)
    suppressed = ""
    destination: str | None = None
    if spec.kind is RecipientKind.AGENT and not raw:
        suppressed = (
            f"agent {record.agent_extension} has no mobile number in [agents]"
            if record.agent_extension else "no agent on this call"
        )
    else:
        check = ctx.phone.check(raw)
        destination = check.e164
        suppressed = check.reason
    if not suppressed and analysed.segments > rule.max_segments:
        suppressed = f"too long: {analysed.segments} segments, rule allows {rule.max_segments}"
    if not suppressed and not text.strip():
        suppressed = "empty text after merging the template"
    recipient_id = destination or raw or "-"
    return RenderedMessage(
        key=f"{call_key(record)}/{rule.name}/{spec.kind}:{recipient_id}",
        rule=rule.name,
        kind=spec.kind,
        raw_number=raw,
        destination=destination,
        sender=spec.sender,
        text=text,
        encoding=analysed.encoding,
        segments=analysed.segments,
        suppressed=suppressed,
        options=spec.options,
    )


def render_adhoc(key: str, rule: str, kind: RecipientKind, raw: str, text: str, sender: str,
                 ctx: RenderContext, *, max_segments: int = 10,
                 options: Mapping[str, Any] | None = None) -> RenderedMessage:
    """A text that no call rule rendered (the HTTP API's, a reply forwarded to an agent),
    checked as a rule's would be: the number by the same phone rules, the length in
    the transport's parts. `key` is its idempotency key, whole (e.g. "api/<key>")."""
    text = replace_surrogates(text)
    analysed = segment(text, ctx.segmenting)
    check = ctx.phone.check(raw)
    suppressed = check.reason
    if not suppressed and analysed.segments > max_segments:
        suppressed = f"too long: {analysed.segments} segments, at most {max_segments}"
    if not suppressed and not text.strip():
        suppressed = "empty text"
    return RenderedMessage(
        key=key, rule=rule, kind=kind, raw_number=raw, destination=check.e164, sender=sender,
        text=text, encoding=analysed.encoding, segments=analysed.segments, suppressed=suppressed,
        options=options or {},
    )

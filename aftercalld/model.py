"""Protocol-neutral data that flows through the pipeline.

Everything downstream of the trackers sees only these types; nothing here knows Asterisk
or FreeSWITCH exists.
"""
from __future__ import annotations

import enum
import json
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from types import MappingProxyType
from typing import Any

import orjson

from .textsafety import MAX_FIELD_LENGTH, bounded

# What CallRecord.from_dict accepts: years every time zone conversion can represent, and
# durations up to a week (no call lasts longer; nan and inf are refused).
MIN_YEAR, MAX_YEAR = 1970, 9998
MAX_DURATION_SECONDS = 7 * 86400


class Direction(enum.StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"
    INTERNAL = "internal"


class CallStatus(enum.StrEnum):
    CONNECTED = "connected"
    MISSED = "missed"
    VOICEMAIL = "voicemail"
    # Cut off by the PBX itself shutting down or restarting: nobody chose to end it, so no
    # rule matches it unless the rule asks for this status by name.
    INTERRUPTED = "interrupted"


def _frozen_mapping(value: Mapping[str, str] | None) -> Mapping[str, str]:
    mapping = dict(value or {})
    if mapping and not _all_short_ascii((*mapping.keys(), *mapping.values())):
        mapping = {bounded(str(k)): bounded(str(v)) for k, v in mapping.items()}
    return MappingProxyType(mapping)


def _all_short_ascii(values: tuple[Any, ...]) -> bool:
    """True when every value is ASCII text and all together fit one field's bound: the
    usual record, checked with one join instead of a test per field (hot path)."""
    try:
        joined = "".join(values)
    except TypeError:
        return False
    return len(joined) <= MAX_FIELD_LENGTH and joined.isascii()


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One finished call, as the trackers emit it."""

    call_id: str
    pbx: str
    direction: Direction
    status: CallStatus
    caller_number: str = ""
    caller_name: str = ""
    dialled_number: str = ""  # the DID for inbound calls, the number dialled for outbound
    agent_extension: str = ""
    agent_name: str = ""
    agent_number: str = ""
    department: str = ""
    queue: str = ""
    start_time: datetime | None = None
    answer_time: datetime | None = None
    end_time: datetime | None = None
    ring_seconds: float = 0.0
    talk_seconds: float = 0.0  # whole seconds the customer's channel was bridged with someone
    hangup_cause: str = ""
    voicemail_box: str = ""  # set when a message was left (status voicemail)
    variables: Mapping[str, str] = field(default_factory=dict)
    # New fields go last with defaults: records stored by older versions still load.
    voicemail_reached: bool = False  # the voicemail application answered, message left or not
    agents: tuple[str, ...] = ()  # every extension the customer talked to, in order
    # "live": from the PBX's events; "cdr": recovered from the PBX's CDRs after a gap.
    source: str = "live"


    def __post_init__(self) -> None:
        object.__setattr__(self, "direction", Direction(self.direction))
        object.__setattr__(self, "status", CallStatus(self.status))
        object.__setattr__(self, "variables", _frozen_mapping(self.variables))
        object.__setattr__(self, "agents", tuple(self.agents))
        _bound_text_fields(self)
        for name in ("start_time", "answer_time", "end_time"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise ValueError(f"{name} must be timezone-aware")

    def with_text(self, **changes: str) -> CallRecord:
        """A copy with some text fields changed: `dataclasses.replace` without re-running
        validation, which costs more than the rest of rule matching on the hot path."""
        new = object.__new__(CallRecord)
        # The slots' own descriptors: a frozen dataclass's setattr would refuse, and
        # object.__setattr__ by name costs twice as much.
        for get, put in _SLOT_ACCESS:
            put(new, get(self))
        for name, value in changes.items():
            _SLOT_SETTERS[name](new, value)
        return new

    @property
    def customer_number(self) -> str:
        """The external party: who rang in, or who was dialled on an outbound call. This is
        who a rule's ``caller`` recipient texts."""
        return self.dialled_number if self.direction is Direction.OUTBOUND else self.caller_number

    def to_dict(self) -> dict[str, Any]:
        # Spelt out rather than a loop over fields(): the outbox stores this for every call,
        # and the generic form cost as much as matching the rules.
        return {
            "call_id": self.call_id,
            "pbx": self.pbx,
            "direction": self.direction.value,
            "status": self.status.value,
            "caller_number": self.caller_number,
            "caller_name": self.caller_name,
            "dialled_number": self.dialled_number,
            "agent_extension": self.agent_extension,
            "agent_name": self.agent_name,
            "agent_number": self.agent_number,
            "department": self.department,
            "queue": self.queue,
            "start_time": _isoformat(self.start_time),
            "answer_time": _isoformat(self.answer_time),
            "end_time": _isoformat(self.end_time),
            "ring_seconds": self.ring_seconds,
            "talk_seconds": self.talk_seconds,
            "hangup_cause": self.hangup_cause,
            "voicemail_box": self.voicemail_box,
            "variables": dict(self.variables),
            "voicemail_reached": self.voicemail_reached,
            "agents": list(self.agents),
            "source": self.source,
        }

    def to_json(self) -> str:
        return orjson.dumps(self.to_dict()).decode()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CallRecord:
        """Build from JSON-shaped data; raises ValueError naming the bad field. Text is
        bounded in length with unpaired surrogates replaced (the file is outside input),
        and times and durations must be ones the rules and templates can compute with."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown field(s): {', '.join(bounded(repr(u), 80) for u in unknown)}")
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            if name in ("start_time", "answer_time", "end_time") and value not in (None, ""):
                text = bounded(str(value), 64)
                try:
                    parsed = datetime.fromisoformat(text)
                except ValueError as exc:
                    raise ValueError(f"{name}: not an ISO 8601 time: {text!r}") from exc
                if parsed.tzinfo is None:
                    raise ValueError(f"{name}: needs a UTC offset, e.g. {text}Z or {text}+00:00")
                if not MIN_YEAR <= parsed.year <= MAX_YEAR:
                    raise ValueError(f"{name}: year {parsed.year} is outside {MIN_YEAR}..{MAX_YEAR}")
                kwargs[name] = parsed
            elif name in ("start_time", "answer_time", "end_time"):
                kwargs[name] = None
            elif name in ("ring_seconds", "talk_seconds"):
                try:
                    seconds = float(value)
                except (TypeError, ValueError, OverflowError) as exc:
                    raise ValueError(f"{name}: not a number: {bounded(repr(value), 80)}") from exc
                # nan and inf pass every comparison a rule makes, and no template can print them.
                if not 0 <= seconds <= MAX_DURATION_SECONDS:
                    raise ValueError(f"{name}: {seconds!r} is not between 0 and {MAX_DURATION_SECONDS} seconds")
                kwargs[name] = seconds
            elif name == "variables":
                if not isinstance(value, Mapping):
                    raise ValueError("variables: must be an object of name → value")
                kwargs[name] = {bounded(str(k)): bounded(str(v)) for k, v in value.items()}
            elif name == "voicemail_reached":
                if not isinstance(value, bool):
                    raise ValueError(f"voicemail_reached: must be true or false, not {value!r}")
                kwargs[name] = value
            elif name == "agents":
                if not isinstance(value, list | tuple) or not all(isinstance(a, str) for a in value):
                    raise ValueError("agents: must be a list of extensions")
                kwargs[name] = tuple(bounded(a) for a in value)
            else:
                kwargs[name] = "" if value is None else bounded(str(value))
        for required in ("call_id", "pbx", "direction", "status"):
            if not kwargs.get(required):
                raise ValueError(f"{required}: missing")
        try:
            kwargs["direction"] = Direction(kwargs["direction"])
        except ValueError:
            raise ValueError(f"direction: unknown value {kwargs['direction']!r}") from None
        try:
            kwargs["status"] = CallStatus(kwargs["status"])
        except ValueError:
            raise ValueError(f"status: unknown value {kwargs['status']!r}") from None
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> CallRecord:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not JSON: {exc.msg} at column {exc.colno}") from None
        except RecursionError:
            raise ValueError("not a call record: nested too deeply") from None
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        return cls.from_dict(data)


_RECORD_FIELDS = tuple(f.name for f in fields(CallRecord))
_SLOT_ACCESS = tuple((CallRecord.__dict__[n].__get__, CallRecord.__dict__[n].__set__) for n in _RECORD_FIELDS)
_SLOT_SETTERS = {n: CallRecord.__dict__[n].__set__ for n in _RECORD_FIELDS}
# Every text field comes from a PBX, and so from strangers (caller id name and number).
_TEXT_FIELDS = tuple(f.name for f in fields(CallRecord) if f.type == "str")
_text_values = operator.attrgetter(*_TEXT_FIELDS)


def _bound_text_fields(record: CallRecord) -> None:
    """Cap each text field's length and replace unpaired surrogates, once, as the record
    is built by a tracker: one 100 KB caller id must not be kept whole in the outbox,
    the caches and every log line, nor crash an encoder downstream."""
    values = _text_values(record)
    if _all_short_ascii(values):
        return
    for name, value in zip(_TEXT_FIELDS, values, strict=True):
        if isinstance(value, str) and (len(value) > MAX_FIELD_LENGTH or not value.isascii()):
            object.__setattr__(record, name, bounded(value))


def _isoformat(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


class RecipientKind(enum.StrEnum):
    CALLER = "caller"
    AGENT = "agent"
    FIXED = "fixed"


class MessageState(enum.StrEnum):
    QUEUED = "queued"
    SENDING = "sending"  # claimed by the dispatcher, handed to a transport
    RETRYING = "retrying"
    SUBMITTED = "submitted"
    DELIVERED = "delivered"
    UNDELIVERABLE = "undeliverable"
    EXPIRED = "expired"
    REJECTED = "rejected"
    FAILED = "failed"
    SUPPRESSED = "suppressed"

    @property
    def final(self) -> bool:
        return self in _FINAL_STATES


_FINAL_STATES = frozenset(
    {
        MessageState.DELIVERED,
        MessageState.UNDELIVERABLE,
        MessageState.EXPIRED,
        MessageState.REJECTED,
        MessageState.FAILED,
        MessageState.SUPPRESSED,
    }
)


class Encoding(enum.StrEnum):
    GSM7 = "gsm7"
    UCS2 = "ucs2"


@dataclass(slots=True)  # built per message on the hot path: frozen costs a setattr per field
class OutboundMessage:
    """A message as a transport sees it: already rendered, encoded and numbered."""

    id: int  # outbox row id
    key: str  # idempotency key: call id + rule + recipient
    call_id: str
    rule: str
    recipient_kind: RecipientKind
    destination: str  # E.164, with leading +
    sender: str  # sender id: alphanumeric or a number
    text: str
    encoding: Encoding
    segments: int
    created_at: datetime  # when the message was queued: its time-to-live counts from here
    attempts: int = 0
    # Per-template transport options, e.g. {"tlvs": {"0x1400": "1201159..."}} for India's DLT.
    options: Mapping[str, Any] = field(default_factory=dict)


class OutcomeKind(enum.StrEnum):
    SUBMITTED = "submitted"
    TRANSIENT = "transient"  # retry later, with backoff, until the time-to-live
    PERMANENT = "permanent"  # give up: failed(reason)


@dataclass(frozen=True, slots=True)
class SubmitOutcome:
    kind: OutcomeKind
    message_ids: tuple[str, ...] = ()  # one per part on the wire
    reason: str = ""
    retry_after: float | None = None  # seconds; a transport's hint (throttling)
    # Some of it may already be on the network (a later part rejected, a submit never
    # answered): another transport would send it twice, so failover must not try one.
    partly_sent: bool = False
    # The transport that produced it, when routes chose among several (the outbox records it).
    via: str = ""

    @classmethod
    def submitted(cls, *message_ids: str) -> SubmitOutcome:
        return cls(OutcomeKind.SUBMITTED, tuple(message_ids))

    @classmethod
    def transient(cls, reason: str, retry_after: float | None = None) -> SubmitOutcome:
        return cls(OutcomeKind.TRANSIENT, reason=reason, retry_after=retry_after)

    @classmethod
    def permanent(cls, reason: str, *, partly_sent: bool = False) -> SubmitOutcome:
        return cls(OutcomeKind.PERMANENT, reason=reason, partly_sent=partly_sent)


class ReportState(enum.StrEnum):
    """Final or intermediate state of one part, as a delivery report says it."""

    DELIVERED = "delivered"
    UNDELIVERABLE = "undeliverable"
    EXPIRED = "expired"
    REJECTED = "rejected"
    DELETED = "deleted"
    UNKNOWN = "unknown"
    ENROUTE = "enroute"  # intermediate: does not change the message state
    ACCEPTED = "accepted"  # intermediate


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    transport: str
    message_id: str  # as the network reported it; the store matches it tolerant of base/zeros/case
    state: ReportState
    error: str = ""  # e.g. "err:001" or a network error code
    raw: str = ""  # the receipt text, kept for support


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A mobile-originated text (reply), e.g. STOP."""

    transport: str
    sender: str
    text: str

"""Protocol-neutral call classification: what a finished call *was*, from facts the trackers
collect.

The AMI and ESL trackers only turn their PBX's events into a `CallFacts`; every rule that
decides direction, status, agent, ring and talk time lives here, once, so one call gives
the same record on Asterisk and on FreeSWITCH. Definitions (the README states the same):

* **talk time**: how long the customer's channel (the call leg) was bridged with another
  party that is a person (not a voicemail leg), summed over every bridge of the call (a
  transfer gives one stretch per agent); to the millisecond, like ring time (templates
  show whole seconds). Not CDR billsec: that counts from an answer, which an IVR, a queue
  or voicemail gives long before anyone talks.
  From the PBX's own timestamps: BridgeEnter/BridgeLeave on Asterisk, CHANNEL_BRIDGE/
  CHANNEL_UNBRIDGE on FreeSWITCH (or a leg's hangup when it ends the bridge).
* **ring time**: from the call leg's start until a person answered (the first bridge);
  unanswered, until the last phone rung for it stopped ringing, else until the PBX itself
  answered (IVR, voicemail), else until the end. Rounded to the millisecond.
* **status**: ``interrupted`` when the PBX's own shutdown ended the call; else ``connected``
  when it talked to someone; else ``voicemail`` when a message was left; else ``missed``
  (a caller who hung up during the voicemail greeting is missed, with
  ``voicemail_reached`` set so a rule can still pick it out).
* **agent**: the party the customer talked to longest (on a tie, the later one); all of
  them in ``agents``. Unanswered: the first phone rung. Outbound: the calling extension.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, tzinfo

from .model import CallRecord, CallStatus, Direction


@dataclass(frozen=True)
class DirectionSettings:
    """The two keys every PBX type reads the same way; the protocol settings inherit them."""

    # A call whose leg starts in one of these contexts came from a carrier: inbound.
    inbound_contexts: tuple[str, ...] = ()
    # What an internal extension looks like (the caller of an outbound or internal call).
    extension_pattern: str = r"\d{2,6}"

    def __post_init__(self) -> None:
        object.__setattr__(self, "_ext_re", re.compile(self.extension_pattern))

    def is_extension(self, number: str) -> bool:
        return bool(number) and self._ext_re.fullmatch(number) is not None  # type: ignore[attr-defined]


def parse_direction_keys(section, default_contexts: tuple[str, ...]) -> dict[str, object]:
    """``inbound_contexts`` and ``extension_pattern`` of a ``[[pbx]]`` table (a
    `configreader.Section`), read the same way for every PBX type."""
    return {
        "inbound_contexts": tuple(section.str_list("inbound_contexts", list(default_contexts))),
        "extension_pattern": section.regex("extension_pattern", r"\d{2,6}"),
    }


@dataclass(slots=True)
class Talk:
    """One stretch of the customer's channel bridged with a person (Unix seconds)."""

    extension: str
    name: str
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start)


@dataclass(slots=True)
class CallFacts:
    """What a tracker saw of one finished call, in protocol-neutral terms."""

    call_id: str
    pbx: str
    start: float  # the call leg's start, PBX clock
    end: float  # the last hangup of the call
    caller_number: str = ""
    caller_name: str = ""
    dialled_number: str = ""
    context: str = ""  # where the call leg's dialplan started
    direction_hint: Direction | None = None  # the dialplan said so (FreeSWITCH call_direction)
    placed_by_pbx: bool = False  # the PBX originated the call leg itself (click-to-call)
    talks: list[Talk] = field(default_factory=list)
    rung: list[tuple[str, str]] = field(default_factory=list)  # (extension, name), in dial order
    ring_end: float = 0.0  # when ringing stopped, for an unanswered call (0: unknown)
    voicemail_reached: bool = False
    voicemail_left: bool = False
    voicemail_box: str = ""
    interrupted: bool = False  # ended by the PBX shutting down
    agent_override: str = ""  # an agent the dialplan named (FreeSWITCH agent_variable)
    hangup_cause: str = ""
    queue: str = ""
    department: str = ""
    variables: dict[str, str] = field(default_factory=dict)


def direction(facts: CallFacts, settings: DirectionSettings) -> Direction:
    """The dialplan's own word first; then a carrier context means inbound; a call from an
    internal extension is outbound, or internal when it dialled another extension."""
    if facts.direction_hint is not None:
        return facts.direction_hint
    if facts.context in settings.inbound_contexts:
        return Direction.INBOUND
    if settings.is_extension(facts.caller_number):
        return Direction.INTERNAL if settings.is_extension(facts.dialled_number) else Direction.OUTBOUND
    if facts.placed_by_pbx:
        return Direction.OUTBOUND
    return Direction.INBOUND


def status(facts: CallFacts) -> CallStatus:
    if facts.interrupted:
        return CallStatus.INTERRUPTED
    if facts.talks:
        return CallStatus.CONNECTED
    if facts.voicemail_left:
        return CallStatus.VOICEMAIL
    return CallStatus.MISSED


def talk_seconds(talks: Iterable[Talk]) -> float:
    return round(sum(t.seconds for t in talks), 3)


def ring_seconds(facts: CallFacts) -> float:
    if facts.talks:
        ring_end = min(t.start for t in facts.talks)
    else:
        ring_end = facts.ring_end or facts.end
    return round(max(0.0, min(ring_end, facts.end) - facts.start), 3)


def agents_talked(talks: Iterable[Talk]) -> tuple[str, ...]:
    """Every extension talked to, once each, in the order they first talked."""
    return tuple(dict.fromkeys(t.extension for t in talks if t.extension))


def choose_agent(talks: list[Talk], rung: list[tuple[str, str]]) -> tuple[str, str]:
    """(extension, name) of the agent of an inbound or internal call: whoever talked longest
    in total (after a blind transfer, the one who actually served the caller); on a tie the
    later one. Unanswered: the first phone rung."""
    if talks:
        totals: dict[str, float] = {}
        names: dict[str, str] = {}
        for talk in talks:
            totals[talk.extension] = totals.get(talk.extension, 0.0) + talk.seconds
            if talk.name:
                names[talk.extension] = talk.name
        best = max(reversed(totals), key=lambda ext: totals[ext])  # reversed: a tie goes to the later
        return best, names.get(best, "")
    for ext, name in rung:
        if ext:
            return ext, name
    return "", ""


def merge_variables(per_leg: Iterable[Mapping[str, str] | None], wanted: Iterable[str]) -> dict[str, str]:
    """The call leg's own values win (pass it first); copies on other legs fill the gaps."""
    wanted = tuple(wanted)
    out: dict[str, str] = {}
    for values in per_leg:
        if not values:
            continue
        for name in wanted:
            if name not in out:
                value = values.get(name)
                if value:
                    out[name] = value
    return out


def _time(seconds: float, tz: tzinfo) -> datetime | None:
    return datetime.fromtimestamp(seconds, tz) if seconds > 0 else None


def build_record(facts: CallFacts, settings: DirectionSettings, tz: tzinfo) -> CallRecord:
    call_direction = direction(facts, settings)
    call_status = status(facts)
    talks = facts.talks
    if call_direction is Direction.OUTBOUND:
        agent_ext, agent_name = facts.caller_number, facts.caller_name
        agents: tuple[str, ...] = (agent_ext,) if talks and agent_ext else ()
    else:
        agent_ext, agent_name = choose_agent(talks, facts.rung)
        agents = agents_talked(talks)
    if facts.agent_override:
        agent_ext = facts.agent_override
    first_talk = min((t.start for t in talks), default=0.0)
    return CallRecord(
        call_id=facts.call_id,
        pbx=facts.pbx,
        direction=call_direction,
        status=call_status,
        caller_number=facts.caller_number,
        caller_name=facts.caller_name,
        dialled_number=facts.dialled_number,
        agent_extension=agent_ext,
        agent_name=agent_name,
        department=facts.department,
        queue=facts.queue,
        start_time=_time(facts.start, tz),
        answer_time=_time(first_talk, tz),
        end_time=_time(facts.end, tz),
        ring_seconds=ring_seconds(facts),
        talk_seconds=talk_seconds(talks),
        hangup_cause=facts.hangup_cause,
        voicemail_box=facts.voicemail_box if facts.voicemail_left or facts.voicemail_reached else "",
        variables=facts.variables,
        voicemail_reached=facts.voicemail_reached or facts.voicemail_left,
        agents=agents,
    )

"""Ordered rules: the topmost enabled rule whose conditions all hold fires, and no other.

Conditions are plain data built by the config loader; each knows how to say why it did not
match, which is what `aftercalld test-rule` and the journal show.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time
from zoneinfo import ZoneInfo

from ..model import CallRecord, CallStatus, Direction, RecipientKind
from .templates import Template

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
NO_MATCH = "does not match"  # the reason when none was asked for


@dataclass(frozen=True)
class TimeWindow:
    start: time
    end: time  # exclusive; a window with end <= start runs across midnight

    def contains(self, moment: time) -> bool:
        if self.start < self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


@dataclass(frozen=True)
class Conditions:
    """Every field left empty/None matches anything."""

    directions: frozenset[Direction] = frozenset()
    statuses: frozenset[CallStatus] = frozenset()
    departments: frozenset[str] = frozenset()  # compared case-insensitively
    queues: frozenset[str] = frozenset()
    dids_exact: frozenset[str] = frozenset()
    did_prefixes: tuple[str, ...] = ()
    agents: frozenset[str] = frozenset()
    caller_pattern: re.Pattern[str] | None = None
    talk_min: float | None = None
    talk_max: float | None = None
    ring_min: float | None = None
    ring_max: float | None = None
    weekdays: frozenset[int] = frozenset()  # 0 = Monday
    hours: tuple[TimeWindow, ...] = ()
    variables: Mapping[str, str] = field(default_factory=dict)
    pbxs: frozenset[str] = frozenset()
    voicemail_reached: bool | None = None  # None: either

    def mismatch(self, record: CallRecord, tz: ZoneInfo, explain: bool = True) -> str | None:
        """None if the call matches, else the first reason it does not (only worded when
        `explain`: on the hot path a rule that does not match costs no string formatting)."""
        if self.pbxs and record.pbx not in self.pbxs:
            return NO_MATCH if not explain else f"pbx is {record.pbx!r}, rule wants {_list(self.pbxs)}"
        if self.directions and record.direction not in self.directions:
            return NO_MATCH if not explain else f"direction is {record.direction}, rule wants {_list(self.directions)}"
        if self.statuses and record.status not in self.statuses:
            return NO_MATCH if not explain else f"status is {record.status}, rule wants {_list(self.statuses)}"
        if record.status is CallStatus.INTERRUPTED and not self.statuses:
            # Cut off by the PBX's shutdown: nobody chose to end the call, so a rule that does
            # not name this status (e.g. "sorry we missed you") must not text it.
            return NO_MATCH if not explain else "status is interrupted (the PBX shut down), rule does not ask for it"
        if self.voicemail_reached is not None and record.voicemail_reached is not self.voicemail_reached:
            return NO_MATCH if not explain else (
                f"voicemail {'was' if record.voicemail_reached else 'was not'} reached, "
                f"rule wants voicemail_reached = {str(self.voicemail_reached).lower()}")
        if self.departments and record.department.casefold() not in self.departments:
            return NO_MATCH if not explain else (
                f"department is {record.department or '(none)'!r}, rule wants {_list(self.departments)}")
        if self.queues and record.queue not in self.queues:
            return NO_MATCH if not explain else (
                f"queue is {record.queue or '(none)'!r}, rule wants {_list(self.queues)}")
        if self.dids_exact or self.did_prefixes:
            did = _digits(record.dialled_number)
            if did not in self.dids_exact and not did.startswith(self.did_prefixes):
                dids = sorted(self.dids_exact) + [p + "*" for p in self.did_prefixes]
                return NO_MATCH if not explain else (
                    f"DID is {record.dialled_number or '(none)'!r}, rule wants {', '.join(dids)}")
        if self.agents and record.agent_extension not in self.agents:
            return NO_MATCH if not explain else (
                f"agent is {record.agent_extension or '(none)'!r}, rule wants {_list(self.agents)}")
        if self.caller_pattern is not None and not self.caller_pattern.search(record.caller_number):
            return NO_MATCH if not explain else (
                f"caller {record.caller_number or '(none)'!r} does not match /{self.caller_pattern.pattern}/")
        if self.talk_min is not None and record.talk_seconds < self.talk_min:
            return NO_MATCH if not explain else f"talk time {record.talk_seconds:g}s is under {self.talk_min:g}s"
        if self.talk_max is not None and record.talk_seconds > self.talk_max:
            return NO_MATCH if not explain else f"talk time {record.talk_seconds:g}s is over {self.talk_max:g}s"
        if self.ring_min is not None and record.ring_seconds < self.ring_min:
            return NO_MATCH if not explain else f"ring time {record.ring_seconds:g}s is under {self.ring_min:g}s"
        if self.ring_max is not None and record.ring_seconds > self.ring_max:
            return NO_MATCH if not explain else f"ring time {record.ring_seconds:g}s is over {self.ring_max:g}s"
        if self.weekdays or self.hours:
            moment = record.start_time or record.end_time
            if moment is None:
                return NO_MATCH if not explain else "the call has no start time for the weekday/hours condition"
            local = moment.astimezone(tz)
            if self.weekdays and local.weekday() not in self.weekdays:
                days = ", ".join(WEEKDAYS[d] for d in sorted(self.weekdays))
                return NO_MATCH if not explain else (
                    f"weekday is {WEEKDAYS[local.weekday()]} ({tz.key}), rule wants {days}")
            if self.hours and not any(w.contains(local.time()) for w in self.hours):
                windows = ", ".join(str(w) for w in self.hours)
                return NO_MATCH if not explain else f"local time {local:%H:%M} ({tz.key}) is outside {windows}"
        for name, wanted in self.variables.items():
            actual = record.variables.get(name)
            if actual != wanted:
                return NO_MATCH if not explain else f"variable {name} is {actual!r}, rule wants {wanted!r}"
        return None


@dataclass(frozen=True)
class RecipientSpec:
    kind: RecipientKind
    template: Template
    template_name: str
    sender: str
    numbers: tuple[str, ...] = ()  # fixed recipients only
    options: Mapping[str, object] = field(default_factory=dict)  # per-template transport options


@dataclass(frozen=True)
class Rule:
    name: str
    enabled: bool
    conditions: Conditions
    recipients: tuple[RecipientSpec, ...]
    max_segments: int

    @functools.cached_property
    def placeholders(self) -> frozenset[str]:
        """Every placeholder its templates use: only these are computed for a call."""
        return frozenset().union(*(spec.template.placeholders for spec in self.recipients))


@dataclass(slots=True)  # built per call on the hot path: frozen costs a setattr per field
class Selection:
    rule: Rule | None
    # Why each rule above the chosen one (or every rule, when none fired) was skipped.
    skipped: tuple[tuple[str, str], ...] = ()
    interrupted: bool = False  # the call was cut off by the PBX's shutdown

    @property
    def reason(self) -> str:
        """Stored with the call: what `why` shows."""
        if self.rule is not None:
            return f"rule {self.rule.name!r} matched"
        if not self.skipped:
            return "no rules configured"
        if self.interrupted:
            return 'no rule matched: the PBX shut down during the call (only rules with status "interrupted" match it)'
        return "no rule matched"


class RuleSet:
    def __init__(self, rules: list[Rule] | tuple[Rule, ...]) -> None:
        self.rules = tuple(rules)

    def select(self, record: CallRecord, tz: ZoneInfo, *, explain: bool = False) -> Selection:
        skipped: list[tuple[str, str]] = []
        for rule in self.rules:
            if not rule.enabled:
                if explain:
                    skipped.append((rule.name, "disabled"))
                continue
            why = rule.conditions.mismatch(record, tz, explain)
            if why is None:
                return Selection(rule, tuple(skipped))
            if explain:
                skipped.append((rule.name, why))
        if not explain:
            skipped = [(r.name, "") for r in self.rules]
        return Selection(None, tuple(skipped), record.status is CallStatus.INTERRUPTED)


def _list(values) -> str:
    return ", ".join(sorted(str(v) for v in values))


def _digits(number: str) -> str:
    return number.lstrip("+")

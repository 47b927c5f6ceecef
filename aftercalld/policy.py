"""Sending policy, checked by the dispatcher just before a message goes to the transport.

Opt-out, DND, per-recipient cooldown, daily quotas (global and per rule) and quiet hours.
Together with the destination-country allow-list (checked when the message is rendered)
these stop SMS pumping: many short calls from premium or foreign numbers made to have the
PBX text them at the owner's expense. Every refusal carries a reason for the outbox.
"""
from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from .model import OutboundMessage
from .rules.engine import TimeWindow
from .store import InlineOutbox, Outbox, SendCounts, Store, as_store


class QuietAction(enum.StrEnum):
    DEFER = "defer"  # hold until the quiet hours end
    DROP = "drop"  # suppress


@dataclass(frozen=True)
class RulePolicy:
    daily_quota: int | None = None
    quiet_hours: tuple[TimeWindow, ...] = ()
    quiet_action: QuietAction = QuietAction.DEFER


@dataclass(frozen=True)
class PolicyConfig:
    cooldown_seconds: float = 0.0  # 0: off
    daily_quota: int | None = None  # all rules together
    rules: Mapping[str, RulePolicy] = field(default_factory=dict)


# The rules of texts that replies cause (replies.py): "reply:forward", "reply:help".
ANSWER_RULE_PREFIX = "reply:"


@dataclass(slots=True)  # built per message on the hot path: frozen costs a setattr per field
class Verdict:
    send: bool
    reason: str = ""
    defer_until: float | None = None  # set: put back in the queue until then


SEND = Verdict(True)


@dataclass(slots=True)
class _Tally:
    """Texts allowed today, all rules together and per rule."""

    total: int = 0
    by_rule: dict[str, int] = field(default_factory=dict)

    def add(self, rule: str) -> None:
        self.total += 1
        self.by_rule[rule] = self.by_rule.get(rule, 0) + 1


class Policy:
    """One instance's policy. On an SQLite outbox (one daemon) the cooldown and the daily
    quotas are counted in memory. On a shared (PostgreSQL) outbox they are decided from what
    every instance allowed, one decision at a time (`Store.allow_sends`): two instances
    deciding texts to one number, or the last text of a quota, at the same moment hold each
    other back exactly, rather than both sending."""

    def __init__(self, config: PolicyConfig, outbox: Outbox | Store, tz: ZoneInfo) -> None:
        self.config = config
        self.outbox = as_store(outbox)
        self.tz = tz
        self._day: str | None = None
        self._tally = _Tally()
        # destination -> last send, oldest first; only sends within the cooldown, so that a
        # daemon texting a new caller every call does not keep every number it ever texted.
        self._recent: dict[str, float] = {}
        self._shared = not isinstance(self.outbox, InlineOutbox)
        self._midnight = 0.0

    def _has_quotas(self) -> bool:
        return self.config.daily_quota is not None or any(
            r.daily_quota is not None for r in self.config.rules.values())

    async def _roll_day(self, now: float) -> None:
        local = datetime.fromtimestamp(now, UTC).astimezone(self.tz)
        day = local.strftime("%Y-%m-%d")
        if day == self._day:
            return
        self._day = day
        self._midnight = local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
        self._recent.clear()
        if not self._shared:  # a shared outbox is counted at each check (`_check_shared`)
            total, by_rule = await self.outbox.submitted_counts_since(self._midnight)
            self._tally = _Tally(total, by_rule)

    async def check(self, messages: Iterable[OutboundMessage], now: float) -> list[Verdict]:
        """Verdicts for a claimed batch, in order. Messages that are sent count against the
        cooldown and quotas at once, so a batch cannot overrun them."""
        messages = list(messages)
        if not messages:
            return []
        await self._roll_day(now)
        cooldown = self.config.cooldown_seconds
        if self._shared and (cooldown or self._has_quotas()):
            return await self._check_shared(messages, now)
        # Here a shared outbox has neither cooldown nor quota: the lists are all it reads.
        facts = await self.outbox.policy_facts([m.destination for m in messages],
                                               submitted_since=now - cooldown if cooldown else None)
        verdicts = []
        for m in messages:
            verdict = self._gate(m, now, facts.opted_out, facts.dnd)
            if verdict is None:
                verdict = SEND if self._shared else self._limit(m, now, facts.last_submitted, self._recent, self._tally)
            verdicts.append(verdict)
        if cooldown:
            self._forget_before(now - cooldown)
        return verdicts

    async def _check_shared(self, messages: list[OutboundMessage], now: float) -> list[Verdict]:
        """The cooldown and quotas on a shared outbox: decided with the lists from one read of
        what every instance allowed, and written only if no other decision came in between
        (`Store.allow_sends`)."""
        cooldown = self.config.cooldown_seconds
        decided: dict[int, Verdict] = {}

        def decide(counts: SendCounts) -> list[int]:
            tally = _Tally(counts.today, dict(counts.today_by_rule))
            recent: dict[str, float] = {}
            for m in messages:
                verdict = self._gate(m, now, counts.opted_out, counts.dnd)
                decided[m.id] = verdict if verdict is not None else self._limit(
                    m, now, counts.last_sent, recent, tally, counted=m.id in counts.counted)
            return [m.id for m in messages if decided[m.id].send]

        await self.outbox.allow_sends(
            [m.id for m in messages], [m.destination for m in messages], now,
            day=self._day if self._has_quotas() else None, midnight=self._midnight,
            cooldown_since=now - cooldown if cooldown else None, decide=decide)
        return [decided[m.id] for m in messages]

    def _forget_before(self, cutoff: float) -> None:
        while self._recent:
            destination, sent_at = next(iter(self._recent.items()))
            if sent_at >= cutoff:
                return
            del self._recent[destination]

    @property
    def remembered(self) -> int:
        """How many recent sends the cooldown keeps in memory (an SQLite outbox's)."""
        return len(self._recent)

    def _gate(self, m: OutboundMessage, now: float, opted_out: set[str], dnd: set[str]) -> Verdict | None:
        """Opt-out, DND and quiet hours; None when the cooldown and quotas decide."""
        if m.destination in opted_out:
            return Verdict(False, "opt-out")
        if m.destination in dnd:
            return Verdict(False, "DND list")
        rule = self.config.rules.get(m.rule)
        if rule is not None and rule.quiet_hours:
            local = datetime.fromtimestamp(now, UTC).astimezone(self.tz)
            window = next((w for w in rule.quiet_hours if w.contains(local.time())), None)
            if window is not None:
                if rule.quiet_action is QuietAction.DROP:
                    return Verdict(False, f"quiet hours {window}")
                return Verdict(False, f"quiet hours {window}", defer_until=_window_end(local, window))
        return None

    def _limit(self, m: OutboundMessage, now: float, last_sent: Mapping[str, float], recent: dict[str, float],
               tally: _Tally, *, counted: bool = False) -> Verdict:
        """The cooldown and the daily quotas; a text allowed counts in `recent` and `tally`.
        `counted`: the text was allowed before (a retry) and already has its place in the
        quotas."""
        verdict = self._within_limits(m, now, last_sent, recent, None if counted else tally)
        if verdict.send:
            if not counted:
                tally.add(m.rule)
            if self.config.cooldown_seconds:
                recent.pop(m.destination, None)  # re-insert: keeps the dict oldest first
                recent[m.destination] = now
        return verdict

    def _within_limits(self, m: OutboundMessage, now: float, last_sent: Mapping[str, float],
                       recent: Mapping[str, float], tally: _Tally | None) -> Verdict:
        if m.rule.startswith(ANSWER_RULE_PREFIX):
            # A forwarded reply or a HELP answer answers a person: no cooldown or quota
            # holds it back (a HELP answer has its own cooldown).
            return SEND
        cooldown = self.config.cooldown_seconds
        if cooldown:
            last = max(last_sent.get(m.destination, 0.0), recent.get(m.destination, 0.0))
            if last and now - last < cooldown:
                ago = (now - last) / 60
                return Verdict(False, f"cooldown: texted {ago:.0f} min ago (limit {cooldown / 60:g} min)")
        if tally is None:
            return SEND
        if self.config.daily_quota is not None and tally.total >= self.config.daily_quota:
            return Verdict(False, f"daily quota of {self.config.daily_quota} reached")
        rule = self.config.rules.get(m.rule, RulePolicy())
        if rule.daily_quota is not None and tally.by_rule.get(m.rule, 0) >= rule.daily_quota:
            return Verdict(False, f"rule daily quota of {rule.daily_quota} reached")
        return SEND


def _window_end(local: datetime, window: TimeWindow) -> float:
    end = local.replace(hour=window.end.hour, minute=window.end.minute, second=0, microsecond=0)
    if end <= local:
        end += timedelta(days=1)
    # Wall-clock arithmetic in the zone: across a DST change the end is re-resolved.
    end = end.replace(tzinfo=local.tzinfo)
    return end.timestamp()

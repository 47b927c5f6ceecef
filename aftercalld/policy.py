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
from .store import InlineOutbox, Outbox, Store, as_store


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


# With a shared (PostgreSQL) outbox, the daily quotas are read again from it at most this
# often, so that instances count each other's sends: together they overshoot a quota by at
# most what they send within this long.
SHARED_QUOTA_REFRESH_SECONDS = 1.0

# The rules of texts that replies cause (replies.py): "reply:forward", "reply:help".
ANSWER_RULE_PREFIX = "reply:"


@dataclass(slots=True)  # built per message on the hot path: frozen costs a setattr per field
class Verdict:
    send: bool
    reason: str = ""
    defer_until: float | None = None  # set: put back in the queue until then


SEND = Verdict(True)


class Policy:
    def __init__(self, config: PolicyConfig, outbox: Outbox | Store, tz: ZoneInfo) -> None:
        self.config = config
        self.outbox = as_store(outbox)
        self.tz = tz
        self._day: str | None = None
        self._sent_today = 0
        self._sent_today_by_rule: dict[str, int] = {}
        # destination -> last send, oldest first; only sends within the cooldown, so that a
        # daemon texting a new caller every call does not keep every number it ever texted.
        self._recent: dict[str, float] = {}
        self._shared = not isinstance(self.outbox, InlineOutbox)
        self._midnight = 0.0
        self._counted_at = 0.0  # when the quotas were last read from a shared outbox
        # Sends this instance allowed since that read: some are still in flight (not yet
        # submitted in the outbox), so they are added to what the next read finds. Those
        # already submitted by then count twice until the read after: a quota holds early
        # rather than late.
        self._allowed_since: dict[str, int] = {}

    def _has_quotas(self) -> bool:
        return self.config.daily_quota is not None or any(
            r.daily_quota is not None for r in self.config.rules.values())

    async def _roll_day(self, now: float) -> None:
        local = datetime.fromtimestamp(now, UTC).astimezone(self.tz)
        day = local.strftime("%Y-%m-%d")
        if day == self._day:
            if self._shared and now - self._counted_at >= SHARED_QUOTA_REFRESH_SECONDS and self._has_quotas():
                await self._count_today(now)
            return
        self._day = day
        self._midnight = local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
        self._allowed_since = {}  # yesterday's sends count for yesterday
        await self._count_today(now)
        self._recent.clear()

    async def _count_today(self, now: float) -> None:
        total, by_rule = await self.outbox.submitted_counts_since(self._midnight)
        if self._shared:
            total += sum(self._allowed_since.values())
            for rule, n in self._allowed_since.items():
                by_rule[rule] = by_rule.get(rule, 0) + n
            self._allowed_since = {}
        self._sent_today, self._sent_today_by_rule = total, by_rule
        self._counted_at = now

    async def check(self, messages: Iterable[OutboundMessage], now: float) -> list[Verdict]:
        """Verdicts for a claimed batch, in order. Messages that are sent count against the
        cooldown and quotas at once, so a batch cannot overrun them."""
        messages = list(messages)
        if not messages:
            return []
        await self._roll_day(now)
        destinations = [m.destination for m in messages]
        cooldown = self.config.cooldown_seconds
        facts = await self.outbox.policy_facts(destinations, submitted_since=now - cooldown if cooldown else None)
        opted_out, dnd, last_sent = facts.opted_out, facts.dnd, facts.last_submitted
        verdicts = []
        for m in messages:
            verdict = self._verdict(m, now, opted_out, dnd, last_sent)
            if verdict.send:
                self._sent_today += 1
                self._sent_today_by_rule[m.rule] = self._sent_today_by_rule.get(m.rule, 0) + 1
                if self._shared:
                    self._allowed_since[m.rule] = self._allowed_since.get(m.rule, 0) + 1
                if cooldown:
                    self._recent.pop(m.destination, None)  # re-insert: keeps the dict oldest first
                    self._recent[m.destination] = now
            verdicts.append(verdict)
        if cooldown:
            self._forget_before(now - cooldown)
        return verdicts

    def _forget_before(self, cutoff: float) -> None:
        while self._recent:
            destination, sent_at = next(iter(self._recent.items()))
            if sent_at >= cutoff:
                return
            del self._recent[destination]

    @property
    def remembered(self) -> int:
        """How many recent sends the cooldown keeps in memory."""
        return len(self._recent)

    def _verdict(self, m: OutboundMessage, now: float, opted_out: set[str], dnd: set[str],
                 last_sent: Mapping[str, float]) -> Verdict:
        if m.destination in opted_out:
            return Verdict(False, "opt-out")
        if m.destination in dnd:
            return Verdict(False, "DND list")
        rule = self.config.rules.get(m.rule, RulePolicy())
        if rule.quiet_hours:
            local = datetime.fromtimestamp(now, UTC).astimezone(self.tz)
            window = next((w for w in rule.quiet_hours if w.contains(local.time())), None)
            if window is not None:
                if rule.quiet_action is QuietAction.DROP:
                    return Verdict(False, f"quiet hours {window}")
                return Verdict(False, f"quiet hours {window}", defer_until=_window_end(local, window))
        if m.rule.startswith(ANSWER_RULE_PREFIX):
            # A forwarded reply or a HELP answer answers a person: no cooldown or quota
            # holds it back (a HELP answer has its own cooldown).
            return SEND
        cooldown = self.config.cooldown_seconds
        if cooldown:
            last = max(last_sent.get(m.destination, 0.0), self._recent.get(m.destination, 0.0))
            if last and now - last < cooldown:
                ago = (now - last) / 60
                return Verdict(False, f"cooldown: texted {ago:.0f} min ago (limit {cooldown / 60:g} min)")
        if self.config.daily_quota is not None and self._sent_today >= self.config.daily_quota:
            return Verdict(False, f"daily quota of {self.config.daily_quota} reached")
        if rule.daily_quota is not None and self._sent_today_by_rule.get(m.rule, 0) >= rule.daily_quota:
            return Verdict(False, f"rule daily quota of {rule.daily_quota} reached")
        return SEND


def _window_end(local: datetime, window: TimeWindow) -> float:
    end = local.replace(hour=window.end.hour, minute=window.end.minute, second=0, microsecond=0)
    if end <= local:
        end += timedelta(days=1)
    # Wall-clock arithmetic in the zone: across a DST change the end is re-resolved.
    end = end.replace(tzinfo=local.tzinfo)
    return end.timestamp()

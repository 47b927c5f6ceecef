"""What a customer's reply does: STOP and START change the opt-out list, HELP is answered
(once per number per cooldown), and every other reply is forwarded where the rule of the
text it answers says (the call's agent by SMS, fixed numbers, webhooks).

The reply, the opt-out change, the texts it causes and its webhook rows are written in one
transaction (`Outbox.record_reply`): a crash keeps all of them or none. A forwarded text's
idempotency key holds the reply's id, so nothing is forwarded twice.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from .clock import Clock, system_clock
from .config import OptOutConfig
from .logutil import fields
from .model import InboundMessage, RecipientKind
from .phone import normalise_for_list
from .replyconfig import AGENT, WEBHOOK_PREFIX, KeywordMatch, RepliesConfig, keyword_sets, match_keyword
from .rules.encoding import segment
from .rules.render import RenderContext, RenderedMessage, render_adhoc
from .store import Answered, Outbox, ReplyEffects, Store, as_store
from .webhooks.events import OPTOUT_ADDED, OPTOUT_REMOVED, REPLY_RECEIVED, WebhookEvents

log = logging.getLogger(__name__)

# A reply is taken to answer the last text sent to its number within this window.
REPLY_WINDOW_SECONDS = 7 * 86400
# The rules of the texts replies cause: not config rules, and replies to them are not
# forwarded again (an agent answering a forwarded text would start a loop).
FORWARD_RULE = "reply:forward"
HELP_RULE = "reply:help"
OWN_RULES = frozenset({FORWARD_RULE, HELP_RULE})
# Forwarded texts and HELP answers are worth nothing after this long.
REPLY_TEXT_TTL_SECONDS = 3600.0


@dataclass
class ReplyOutcome:
    """What one reply did, for the log line and the tests."""

    reply_id: int = 0
    call_key: str | None = None
    action: str = ""  # stop, start, help or "" for a plain reply
    forwarded: tuple[str, ...] = ()  # numbers texted
    answered_help: bool = False
    webhooks: tuple[str, ...] = ()  # endpoints the event goes to


class ReplyHandler:
    def __init__(self, outbox: Outbox | Store, *, optout: OptOutConfig | None = None,
                 replies: RepliesConfig | None = None, render: RenderContext | None = None,
                 default_region: str = "US", clock: Clock = system_clock,
                 webhooks: WebhookEvents | None = None, on_queued: Callable[[], None] | None = None) -> None:
        self.outbox = as_store(outbox)
        self.default_region = default_region
        self.clock = clock
        self.webhooks = webhooks
        self.on_queued = on_queued
        self.render = render  # None: nothing is texted (no phone rules to check numbers with)
        self.configure(optout or OptOutConfig(), replies or RepliesConfig())

    def configure(self, optout: OptOutConfig, replies: RepliesConfig, render: RenderContext | None = None) -> None:
        """At start and on reload."""
        self.optout = optout
        self.replies = replies
        self.keywords = keyword_sets(optout, replies)
        if render is not None:
            self.render = render

    async def receive(self, message: InboundMessage) -> ReplyOutcome:
        text = message.text
        word = text.strip().split(maxsplit=1)[0].strip(".!,;:").upper() if text.strip() else ""
        number = normalise_for_list(message.sender, self.default_region) or message.sender
        match = match_keyword(word, self.keywords) if word else None
        now = self.clock()
        outcome = ReplyOutcome(action=match.action if match else "")
        optout = ""
        if match and match.action == "stop":
            optout = f"reply {word} via {message.transport}"
        elif match and match.action == "start":
            optout = "remove"

        # Read before the reply's transaction: its effects run inside it, where the outbox
        # takes no other call.
        help_cooldown = self.replies.help_cooldown_seconds
        helped_recently = bool(match and match.action == "help" and help_cooldown and await self.outbox.last_created(
            number, HELP_RULE, now - help_cooldown) is not None)

        def effects(reply_id: int, answered: Answered | None) -> ReplyEffects:
            return self._effects(reply_id, answered, number, message, match, now, outcome, helped_recently)

        # A failure here (disk full) reaches the dispatcher, which logs it: nothing of the
        # reply was written, neither the opt-out change nor a forward.
        outcome.reply_id, outcome.call_key = await self.outbox.record_reply(
            number, text, message.transport, match.word if match else "", now, REPLY_WINDOW_SECONDS,
            optout=optout, effects=effects)
        if outcome.forwarded or outcome.answered_help:
            if self.on_queued is not None:
                self.on_queued()
        self._log(number, word, message, outcome)
        return outcome

    def _effects(self, reply_id: int, answered: Answered | None, number: str, message: InboundMessage,
                 match: KeywordMatch | None, now: float, outcome: ReplyOutcome,
                 helped_recently: bool = False) -> ReplyEffects:
        """Runs inside the reply's transaction."""
        caused = ReplyEffects(ttl_seconds=REPLY_TEXT_TTL_SECONDS)
        call_key = answered.call_key if answered else None
        rule = answered.rule if answered else None
        in_reply_to = ({"message_id": answered.message_id, "call_id": answered.call_key, "rule": answered.rule}
                       if answered else None)
        action = match.action if match else ""
        data = {"reply_id": reply_id, "from": number, "text": message.text, "transport": message.transport,
                "keyword": match.word if match else "", "language": match.keywords.language if match else "",
                "in_reply_to": in_reply_to}
        if action in ("stop", "start"):
            # Not a reply for a person to answer: an opt-out change, as its own event.
            if self.webhooks is not None:
                event = OPTOUT_ADDED if action == "stop" else OPTOUT_REMOVED
                caused.webhooks = self.webhooks.rows(event, {"number": number, **data}, now)
                outcome.webhooks = tuple(r[2] for r in caused.webhooks)
            return caused
        routes = () if rule in OWN_RULES else self.replies.routes_for(rule)
        if action == "help":
            routes = tuple(r for r in routes if r.startswith(WEBHOOK_PREFIX))  # answered here, not by a person
            help_message = self._help_answer(reply_id, number, match, answered, helped_recently)
            if help_message is not None:
                caused.messages.append((call_key or "", help_message))
                outcome.answered_help = not help_message.suppressed
        elif self.render is not None:
            caused.messages.extend((call_key or "", m) for m in self._forwards(reply_id, number, message.text,
                                                                             routes, answered))
            outcome.forwarded = tuple(m.destination or m.raw_number for _, m in caused.messages if not m.suppressed)
        data["forwarded_to"] = [m.destination or m.raw_number for _, m in caused.messages
                                if m.rule == FORWARD_RULE and not m.suppressed]
        if self.webhooks is not None:
            also = [r[len(WEBHOOK_PREFIX):] for r in routes if r.startswith(WEBHOOK_PREFIX)]
            caused.webhooks = self.webhooks.rows(REPLY_RECEIVED, data, now, also)
            outcome.webhooks = tuple(r[2] for r in caused.webhooks)
        return caused

    def _sender(self, answered: Answered | None) -> str:
        return self.replies.sender or (answered.sender if answered else "")

    def _help_answer(self, reply_id: int, number: str, match: KeywordMatch | None, answered: Answered | None,
                     helped_recently: bool) -> RenderedMessage | None:
        assert match is not None
        text = match.keywords.help_text or self.optout.help_text
        sender = self._sender(answered)
        if not text.strip() or self.render is None:
            return None
        if not sender:
            log.warning("HELP from %s not answered: no [replies] sender, and the reply answers no text of ours "
                        "whose sender could be used", number)
            return None
        if helped_recently:
            log.info("HELP from %s: answered within the last %g min, not again", number,
                     self.replies.help_cooldown_seconds / 60)
            return None
        return render_adhoc(f"reply/{reply_id}/help", HELP_RULE, RecipientKind.CALLER, number, text, sender,
                            self.render, max_segments=self.replies.max_segments)

    def _forwards(self, reply_id: int, number: str, text: str, routes: tuple[str, ...],
                  answered: Answered | None) -> list[RenderedMessage]:
        assert self.render is not None
        numbers: list[tuple[RecipientKind, str]] = []
        record = self._call_record(answered.record) if answered else {}
        for route in routes:
            if route.startswith(WEBHOOK_PREFIX):
                continue
            if route == AGENT:
                mobile = self._agent_mobile(record)
                if mobile:
                    numbers.append((RecipientKind.AGENT, mobile))
                else:
                    log.info("reply from %s not forwarded to the agent: %s", number,
                             "no agent mobile on the call" if record else "it answers no call of ours")
            else:
                numbers.append((RecipientKind.FIXED, route))
        if not numbers:
            return []
        sender = self._sender(answered)
        if not sender:
            log.warning("reply from %s not forwarded by SMS: no [replies] sender, and it answers no text of ours "
                        "whose sender could be used", number)
            return []
        values = {"number": number, "call_id": answered.call_key if answered else "",
                  "rule": answered.rule if answered else "", "caller_name": str(record.get("caller_name") or ""),
                  "agent_name": str(record.get("agent_name") or "")}
        body = self._fit(values, text)
        out = []
        seen: set[str] = set()
        for kind, raw in numbers:
            message = render_adhoc(f"reply/{reply_id}/{kind.value}:{raw}", FORWARD_RULE, kind, raw, body, sender,
                                   self.render, max_segments=self.replies.max_segments)
            if (message.destination or raw) in seen:
                continue
            seen.add(message.destination or raw)
            out.append(message)
        return out

    def _fit(self, values: dict[str, str], text: str) -> str:
        """The forwarded text within max_segments: the customer's words are cut, with "…",
        rather than the whole forward suppressed as too long."""
        assert self.render is not None
        profile, limit = self.render.segmenting, self.replies.max_segments
        whole = self.replies.forward_text.render({**values, "text": text})
        if segment(whole, profile).segments <= limit:
            return whole
        lo, hi = 0, len(text)
        while lo < hi:  # the longest prefix that fits
            mid = (lo + hi + 1) // 2
            if segment(self.replies.forward_text.render({**values, "text": text[:mid] + "…"}),
                       profile).segments <= limit:
                lo = mid
            else:
                hi = mid - 1
        return self.replies.forward_text.render({**values, "text": text[:lo] + "…"})

    @staticmethod
    def _call_record(raw: str | None) -> dict:
        if raw is None:
            return {}
        try:
            data = json.loads(raw)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def _agent_mobile(self, record: dict) -> str:
        assert self.render is not None
        if not record:
            return ""
        entry = self.render.agents.get(str(record.get("agent_extension") or ""))
        return (entry.mobile if entry and entry.mobile else "") or str(record.get("agent_number") or "")

    def _log(self, number: str, word: str, message: InboundMessage, outcome: ReplyOutcome) -> None:
        about = f" to the text about call {outcome.call_key}" if outcome.call_key else ""
        extra = fields(recipient=number, call_id=outcome.call_key or "")
        if outcome.action == "stop":
            log.info("reply %s from %s%s: added to the opt-out list", word, number, about,
                     extra=fields(recipient=number, state="optout", call_id=outcome.call_key or ""))
        elif outcome.action == "start":
            log.info("reply %s from %s%s: removed from the opt-out list", word, number, about,
                     extra=fields(recipient=number, state="optin", call_id=outcome.call_key or ""))
        elif outcome.action == "help":
            log.info("reply %s from %s%s: %s", word, number, about,
                     "help text queued" if outcome.answered_help else "no help text sent", extra=extra)
        else:
            # The words are the customer's: stored for `why`, never logged at info level.
            where = []
            if outcome.forwarded:
                where.append("forwarded to " + ", ".join(outcome.forwarded))
            if outcome.webhooks:
                where.append("webhook " + ", ".join(outcome.webhooks))
            log.info("reply from %s%s stored (%d characters)%s; `aftercalld why %s` shows it", number, about,
                     len(message.text), "; " + "; ".join(where) if where else "", number, extra=extra)
            log.debug("reply from %s: %r", number, message.text)

"""`aftercalld send-test`: one real message through the configured transport, shown step by
step, so an engineer can check a bind, a sender id or an encoding without placing a call."""
from __future__ import annotations

import asyncio
import sys

from .clock import Clock, system_clock, utc_now
from .config import Config, TransportConfig, sender_problem
from .daemon import build_transport
from .model import CallRecord, CallStatus, DeliveryReport, Direction, InboundMessage, OutboundMessage, RecipientKind
from .rules.encoding import segment
from .rules.render import render
from .store import NoOutboxError, Outbox, as_store

DEFAULT_TEXT = "aftercalld test message. If you can read this, texts reach this phone."


class _Printer:
    """TransportEvents that print what arrives while we wait."""

    def __init__(self) -> None:
        self.report = asyncio.Event()

    def delivery_report(self, report: DeliveryReport) -> None:
        print(f"delivery report for {report.message_id}: {report.state.value} {report.error}".rstrip())
        self.report.set()

    def inbound_message(self, message: InboundMessage) -> None:
        print(f"reply from {message.sender} ({len(message.text)} characters)")


def _transport_for(config: Config, e164: str, rule: str, name: str | None) -> TransportConfig | None:
    """The named transport, else the first of the route the number takes (None: no such name)."""
    by_name = {t.label: t for t in config.all_transports}
    if name is not None:
        return by_name.get(name)
    for route in config.routes:
        if route.matches(e164, rule):
            return by_name[route.transports[0]]
    return config.transport


async def _held_back(config: Config, e164: str) -> str | None:
    """Why the daemon would never text this number (opt-out or DND list), or None. A
    machine with no outbox yet has no lists."""
    try:
        if config.outbox_is_postgres:
            from .daemon import open_store
            outbox = await open_store(config)
        else:
            outbox = as_store(Outbox.open_readonly(config.outbox_path))
    except NoOutboxError:
        return None
    try:
        if await outbox.is_opted_out(e164):
            return "is on the opt-out list"
        if await outbox.dnd_matches([e164]):
            return "is on the do-not-disturb list"
        return None
    finally:
        await outbox.close()


async def send_test(config: Config, number: str, *, rule_name: str | None, text: str | None,
                    timeout: float, sender: str | None = None, force: bool = False,
                    clock: Clock = system_clock, transport_name: str | None = None) -> int:
    now = utc_now(clock)
    check = config.phone.check(number)
    if check.e164 is None:
        print(f"aftercalld: {number}: {check.reason}; not sent", file=sys.stderr)
        return 2
    if sender is not None and (problem := sender_problem(sender)):
        print(f"aftercalld: --sender {problem}", file=sys.stderr)
        return 2
    held_back = await _held_back(config, check.e164)
    if held_back and not force:
        print(f"aftercalld: {check.e164} {held_back}: the daemon would never text it; not sent "
              f"(--force sends anyway)", file=sys.stderr)
        return 1
    if held_back:
        print(f"warning: {check.e164} {held_back}; sending anyway (--force)", file=sys.stderr)
    chosen_sender = sender
    sender = "aftercalld"
    options: dict = {}
    if rule_name:
        rule = next((r for r in config.rules.rules if r.name == rule_name), None)
        if rule is None:
            print(f"aftercalld: no rule named {rule_name!r}", file=sys.stderr)
            return 2
        sample = CallRecord(call_id="send-test", pbx="send-test", direction=Direction.INBOUND,
                            status=CallStatus.MISSED, caller_number=check.e164, caller_name="Test Caller",
                            dialled_number="", start_time=now, end_time=now)
        rendered = [m for m in render(rule, sample, config.timezone, config.render) if m.kind is RecipientKind.CALLER]
        if not rendered:
            print(f"aftercalld: rule {rule_name!r} has no caller recipient", file=sys.stderr)
            return 2
        text, sender, options = rendered[0].text, rendered[0].sender, dict(rendered[0].options)
    sender = chosen_sender or sender
    text = text or DEFAULT_TEXT
    info = segment(text, config.render.segmenting)
    chosen = _transport_for(config, check.e164, rule_name or "send-test", transport_name)
    if chosen is None:
        print(f"aftercalld: --transport: no transport named {transport_name!r} (defined: "
              f"{', '.join(t.label for t in config.all_transports)})", file=sys.stderr)
        return 2
    named = chosen.type if len(config.all_transports) == 1 else f"{chosen.label} ({chosen.type})"
    print(f"to {check.e164} from {sender} via {named}: {info.encoding.value}, "
          f"{info.units} units, {info.segments} part(s)")
    message = OutboundMessage(id=0, key="send-test", call_id="send-test", rule=rule_name or "send-test",
                              recipient_kind=RecipientKind.FIXED, destination=check.e164, sender=sender,
                              text=text, encoding=info.encoding, segments=info.segments, created_at=now,
                              options=options)
    transport = build_transport(chosen)  # that one alone: a test says which carrier it tried
    probe = getattr(transport, "probe", None)  # SMPP: one bind attempt, not a retry loop
    if probe is not None:
        problem = await probe()
        if problem:
            print(f"aftercalld: {problem}; not sent", file=sys.stderr)
            return 1
    printer = _Printer()
    try:
        async with asyncio.timeout(timeout):
            await transport.start(printer)
            until_bound = getattr(transport, "until_bound", None)  # SMPP binds in the background
            if until_bound is not None:
                await until_bound(timeout)
        async with asyncio.timeout(timeout):
            outcome = await transport.send(message)
    except TimeoutError:
        print(f"aftercalld: no result within {timeout:g}s", file=sys.stderr)
        return 1
    finally:
        await transport.close()
    if outcome.message_ids:
        via = f" via {outcome.via}" if outcome.via else ""
        print(f"{outcome.kind.value}{via}: message id(s) {', '.join(outcome.message_ids)}")
    else:
        print(f"{outcome.kind.value}: {outcome.reason}")
    return 0 if outcome.kind.value == "submitted" else 1

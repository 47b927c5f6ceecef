"""Policy limits: opt-out, DND, cooldown, daily quotas, quiet hours (defer and drop)."""
from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from core_helpers import call, write_config
from test_core_outbox import ScriptedTransport

from aftercalld.config import load
from aftercalld.dispatcher import Dispatcher
from aftercalld.pipeline import CallHandler
from aftercalld.policy import Policy
from aftercalld.store import Outbox

LONDON = ZoneInfo("Europe/London")


class Clock:
    def __init__(self, when: datetime) -> None:
        self.now = when.timestamp()

    def __call__(self) -> float:
        return self.now


def rules(extra_rule_keys: str = "", extra: str = "") -> str:
    return (f'[[rules]]\nname = "Missed"\nrecipients = ["caller"]\nwhen = {{ status = "missed" }}\n'
            f'caller = {{ template = "missed", sender = "Acme" }}\n{extra_rule_keys}\n'
            f'[[rules]]\nname = "Other"\nrecipients = ["caller"]\n'
            f'caller = {{ template = "generic", sender = "Acme" }}\n{extra}')


async def started(tmp_path, rules_toml, clock):
    """Outbox, a started dispatcher with the config's policy, and a call handler."""
    config = load(write_config(tmp_path, rules=rules_toml))
    outbox = Outbox.open(config.outbox_path)
    dispatcher = Dispatcher(outbox, ScriptedTransport([]), config.dispatch, clock=clock,
                            policy=Policy(config.policy, outbox, LONDON))
    handler = CallHandler(config, outbox, on_queued=dispatcher.wake, clock=clock)
    await dispatcher.start()
    return outbox, dispatcher, handler


async def run_calls(tmp_path, rules_toml, calls, clock):
    outbox, dispatcher, handler = await started(tmp_path, rules_toml, clock)
    for record in calls:
        handler.handle(record)
        await dispatcher.wait_idle()
    await dispatcher.stop()
    return outbox, outbox.messages()


NUMBERS = [f"+4474001234{i:02d}" for i in range(10)]


async def test_cooldown_per_recipient_across_rules(tmp_path):
    clock = Clock(datetime(2026, 11, 30, 12, 0, tzinfo=UTC))
    toml = rules(extra="\n[policy]\ncooldown_minutes = 30\n")
    _, rows = await run_calls(tmp_path, toml, [
        call(call_id="a", caller_number=NUMBERS[0]),
        call(call_id="b", caller_number=NUMBERS[0], status="connected"),  # other rule, same number
        call(call_id="c", caller_number=NUMBERS[1]),
    ], clock)
    assert [(r["call_key"], r["state"]) for r in rows] == [
        ("main/a", "submitted"), ("main/b", "suppressed"), ("main/c", "submitted")]
    assert rows[1]["reason"] == "cooldown: texted 0 min ago (limit 30 min)"


async def test_cooldown_expires(tmp_path):
    clock = Clock(datetime(2026, 11, 30, 12, 0, tzinfo=UTC))
    outbox, dispatcher, handler = await started(tmp_path, rules(extra="\n[policy]\ncooldown_minutes = 30\n"), clock)
    handler.handle(call(call_id="a", caller_number=NUMBERS[0]))
    await dispatcher.wait_idle()
    clock.now += 31 * 60
    handler.handle(call(call_id="b", caller_number=NUMBERS[0]))
    await dispatcher.wait_idle()
    await dispatcher.stop()
    assert [r["state"] for r in outbox.messages()] == ["submitted", "submitted"]


async def test_policy_remembers_only_sends_within_the_cooldown(tmp_path):
    """Issue 13 item 17: every number ever texted stayed in memory (~80 MiB after 1M calls)."""
    clock = Clock(datetime(2026, 11, 30, 12, 0, tzinfo=UTC))
    for extra, remembered_after in (("", (0, 0)), ("\n[policy]\ncooldown_minutes = 30\n", (3, 1))):
        config = load(write_config(tmp_path, rules=rules(extra=extra)))
        outbox = Outbox.open(config.outbox_path)
        policy = Policy(config.policy, outbox, LONDON)
        dispatcher = Dispatcher(outbox, ScriptedTransport([]), config.dispatch, clock=clock, policy=policy)
        handler = CallHandler(config, outbox, on_queued=dispatcher.wake, clock=clock)
        await dispatcher.start()
        for i in range(3):
            handler.handle(call(call_id=f"first{extra!r}{i}", caller_number=NUMBERS[i]))
        await dispatcher.wait_idle()
        first = policy.remembered
        clock.now += 31 * 60
        handler.handle(call(call_id=f"later{extra!r}", caller_number=NUMBERS[5]))
        await dispatcher.wait_idle()
        await dispatcher.stop()
        outbox.close()
        assert (first, policy.remembered) == remembered_after


async def test_daily_quotas_global_and_per_rule_reset_at_local_midnight(tmp_path):
    clock = Clock(datetime(2026, 11, 30, 12, 0, tzinfo=UTC))
    toml = rules(extra_rule_keys="daily_quota = 2", extra="\n[policy]\ndaily_quota = 3\n")
    outbox, dispatcher, handler = await started(tmp_path, toml, clock)
    for i in range(3):
        handler.handle(call(call_id=f"m{i}", caller_number=NUMBERS[i]))
    for i in range(3, 5):
        handler.handle(call(call_id=f"o{i}", caller_number=NUMBERS[i], status="connected"))
    await dispatcher.wait_idle()
    clock.now = datetime(2026, 12, 1, 0, 1, tzinfo=LONDON).timestamp()  # a new day in London
    handler.handle(call(call_id="next-day", caller_number=NUMBERS[6]))
    await dispatcher.wait_idle()
    await dispatcher.stop()
    got = {r["call_key"]: (r["state"], r["reason"]) for r in outbox.messages()}
    assert got == {
        "main/m0": ("submitted", ""), "main/m1": ("submitted", ""),
        "main/m2": ("suppressed", "rule daily quota of 2 reached"),
        "main/o3": ("submitted", ""),
        "main/o4": ("suppressed", "daily quota of 3 reached"),
        "main/next-day": ("submitted", ""),
    }


async def test_quiet_hours_defer_until_the_window_ends(tmp_path):
    # 22:30 London: quiet until 08:00, so the text waits in the queue, then goes at 08:00.
    clock = Clock(datetime(2026, 11, 30, 22, 30, tzinfo=LONDON))
    toml = rules(extra_rule_keys='quiet_hours = "21:00-08:00"')
    outbox, dispatcher, handler = await started(tmp_path, toml, clock)
    handler.handle(call(call_id="late", caller_number=NUMBERS[0]))
    await dispatcher.wait_idle()
    [row] = outbox.messages()
    assert (row["state"], row["reason"]) == ("queued", "quiet hours 21:00-08:00")
    assert row["next_attempt_at"] == datetime(2026, 12, 1, 8, 0, tzinfo=LONDON).timestamp()
    clock.now = row["next_attempt_at"]
    dispatcher.wake()
    await dispatcher.wait_idle()
    await dispatcher.stop()
    [row] = outbox.messages()
    assert row["state"] == "submitted"
    assert row["attempts"] == 1  # holding it did not count as an attempt


async def test_quiet_hours_drop(tmp_path):
    clock = Clock(datetime(2026, 11, 30, 23, 0, tzinfo=LONDON))
    toml = rules(extra_rule_keys='quiet_hours = ["22:00-24:00", "00:00-07:00"]\nquiet_action = "drop"')
    _, rows = await run_calls(tmp_path, toml, [call(call_id="late", caller_number=NUMBERS[0])], clock)
    assert (rows[0]["state"], rows[0]["reason"]) == ("suppressed", "quiet hours 22:00-00:00")


async def test_dnd_numbers_and_prefixes(tmp_path):
    clock = Clock(datetime(2026, 11, 30, 12, 0, tzinfo=UTC))
    outbox, dispatcher, handler = await started(tmp_path, rules(), clock)
    outbox.dnd_add([NUMBERS[0], "+44740012345*"], "test", clock())
    for i, number in enumerate([NUMBERS[0], "+447400123456", NUMBERS[2]]):
        handler.handle(call(call_id=f"d{i}", caller_number=number))
    await dispatcher.wait_idle()
    await dispatcher.stop()
    assert [(r["state"], r["reason"]) for r in outbox.messages()] == [
        ("suppressed", "DND list"), ("suppressed", "DND list"), ("submitted", "")]


def test_dnd_and_optout_cli_import(tmp_path):
    import subprocess
    import sys

    path = write_config(tmp_path)
    listing = tmp_path / "dnd.csv"
    listing.write_text("# operator DND export\n07400 123401,2026-01-01\n+449*\nnot-a-number\n")
    def run(*a):
        return subprocess.run([sys.executable, "-m", "aftercalld.cli", *a, "-c", str(path)],
                              capture_output=True, text=True)
    res = run("dnd", "import", str(listing))
    assert res.returncode == 0, res.stderr
    assert "added 2" in res.stdout and "not-a-number" in res.stderr
    assert run("dnd", "list").stdout.split("\n")[:2] == ["+447400123401\timport " + str(listing),
                                                         "+449*\timport " + str(listing)]
    assert "added 1" in run("optout", "add", "07400 123402").stdout
    assert run("optout", "list").stdout.startswith("+447400123402\tcli")
    assert "removed 1" in run("optout", "remove", "+447400123402").stdout

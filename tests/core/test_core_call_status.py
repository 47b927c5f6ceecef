"""Issue 15 on the rule side: interrupted calls are not texted unless a rule asks for them,
`when.voicemail_reached`, the `why` view, and CallRecord JSON staying backwards compatible."""
from __future__ import annotations

import json

import pytest
from core_helpers import call, write_config

from aftercalld import cli
from aftercalld.config import ConfigError, load
from aftercalld.model import CallRecord, CallStatus
from aftercalld.pipeline import CallHandler
from aftercalld.store import Outbox


def rule(name, when=""):
    return (f'[[rules]]\nname = "{name}"\nrecipients = ["caller"]\n'
            f'caller = {{ template = "generic", sender = "Acme" }}\n' + (f"when = {{ {when} }}\n" if when else ""))


def selection(tmp_path, rules, record):
    config = load(write_config(tmp_path, rules=rules))
    return CallHandler(config, outbox=None).decide(record, explain=True).selection


def test_interrupted_calls_match_only_rules_that_ask_for_them(tmp_path):
    rules = rule("Catch-all") + rule("Missed", 'status = "missed"')
    sel = selection(tmp_path, rules, call(status="interrupted"))
    assert sel.rule is None
    assert sel.skipped[0] == ("Catch-all", "status is interrupted (the PBX shut down), rule does not ask for it")
    asked = rule("Cut off", 'status = ["interrupted", "missed"]') + rules
    assert selection(tmp_path, asked, call(status="interrupted")).rule.name == "Cut off"
    assert selection(tmp_path, rules, call(status="missed")).rule.name == "Catch-all"


@pytest.mark.parametrize("value, reached, fires", [
    ("true", True, True), ("true", False, False), ("false", False, True), ("false", True, False)])
def test_when_voicemail_reached(tmp_path, value, reached, fires):
    rules = rule("Greeting hang-ups", f'status = "missed", voicemail_reached = {value}')
    sel = selection(tmp_path, rules, call(status="missed", voicemail_reached=reached))
    assert (sel.rule is not None) == fires
    if not fires:
        assert "voicemail_reached" in sel.skipped[0][1]


def test_voicemail_reached_must_be_a_boolean(tmp_path):
    with pytest.raises(ConfigError, match=r"when.voicemail_reached: must be true or false"):
        load(write_config(tmp_path, rules=rule("x", 'voicemail_reached = "yes"')))


def test_why_shows_an_interrupted_call_and_why_it_was_not_texted(tmp_path, capsys):
    path = write_config(tmp_path, rules=rule("Catch-all"))
    config = load(path)
    outbox = Outbox.open(config.outbox_path)
    CallHandler(config, outbox).handle(call(call_id="cut.1", status="interrupted"))
    outbox.close()
    assert cli.main(["why", "-c", str(path), "cut.1"]) == 0
    out = capsys.readouterr().out
    assert "call main/cut.1" in out and ": interrupted inbound" in out
    assert "the PBX shut down" in out


def test_record_json_old_and_new():
    new = call(status="interrupted", voicemail_reached=True, agents=("205", "204"))
    again = CallRecord.from_json(new.to_json())
    assert again == new and again.agents == ("205", "204") and again.status is CallStatus.INTERRUPTED
    old = {k: v for k, v in json.loads(call().to_json()).items() if k not in ("voicemail_reached", "agents")}
    loaded = CallRecord.from_json(json.dumps(old))
    assert loaded.voicemail_reached is False and loaded.agents == ()
    with pytest.raises(ValueError, match="agents"):
        CallRecord.from_json(json.dumps({**old, "agents": "204"}))


def test_templates_can_use_agents_and_voicemail_reached():
    from zoneinfo import ZoneInfo

    from aftercalld.rules.templates import template_values

    values = template_values(call(agents=("205", "204"), voicemail_reached=True), ZoneInfo("UTC"), {}, 100,
                             ["agents", "voicemail_reached", "status"])
    assert values == {"agents": "205, 204", "voicemail_reached": "yes", "status": "missed"}

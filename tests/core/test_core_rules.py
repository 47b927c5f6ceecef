"""Rule priority and every condition kind, including time windows across midnight and DST."""
from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from core_helpers import call, write_config

from aftercalld.config import load
from aftercalld.pipeline import CallHandler

LONDON = ZoneInfo("Europe/London")


def rule(name, when="", recipients='["caller"]', enabled=True, template="generic"):
    return (f'[[rules]]\nname = "{name}"\nenabled = {str(enabled).lower()}\nrecipients = {recipients}\n'
            f'caller = {{ template = "{template}", sender = "Acme" }}\n'
            + (f"when = {{ {when} }}\n" if when else ""))


def select(tmp_path, rules_toml, record, extra=""):
    config = load(write_config(tmp_path, rules=rules_toml, extra=extra))
    decision = CallHandler(config, outbox=None).decide(record, explain=True)
    return decision


def fired(tmp_path, rules_toml, record, extra=""):
    sel = select(tmp_path, rules_toml, record, extra).selection
    return sel.rule.name if sel.rule else None


def test_topmost_match_wins_and_only_one_fires(tmp_path):
    rules = (rule("Support missed", 'status = "missed", department = "support"')
             + rule("Any missed", 'status = "missed"') + rule("Catch-all"))
    assert fired(tmp_path, rules, call(department="support")) == "Support missed"
    assert fired(tmp_path, rules, call(department="sales")) == "Any missed"
    assert fired(tmp_path, rules, call(status="connected")) == "Catch-all"
    decision = select(tmp_path, rules, call(department="Support"))
    assert len(decision.messages) == 1  # one rule, one recipient: one message


def test_disabled_rules_are_skipped_and_no_match_is_explained(tmp_path):
    rules = rule("Off", enabled=False) + rule("Connected only", 'status = "connected"')
    decision = select(tmp_path, rules, call(status="missed"))
    assert decision.selection.rule is None
    assert decision.selection.reason == "no rule matched"
    assert decision.selection.skipped == (("Off", "disabled"),
                                          ("Connected only", "status is missed, rule wants connected"))
    assert decision.messages == ()


@pytest.mark.parametrize("when,matching,other", [
    ('direction = "outbound"', dict(direction="outbound"), dict(direction="inbound")),
    ('status = ["voicemail", "missed"]', dict(status="voicemail"), dict(status="connected")),
    ('department = "Sales"', dict(department="sales"), dict(department="support")),
    ('queue = "q-support"', dict(queue="q-support"), dict(queue="")),
    ('did = "442071234567"', dict(dialled_number="+442071234567"), dict(dialled_number="442071234568")),
    ('did = "44207*"', dict(dialled_number="442071234999"), dict(dialled_number="441611234567")),
    ('agent = ["201", "202"]', dict(agent_extension="202"), dict(agent_extension="203")),
    ('caller = "^\\\\+447"', dict(caller_number="+447400123456"), dict(caller_number="+33612345678")),
    ('talk_seconds_min = 10', dict(talk_seconds=10), dict(talk_seconds=9.5)),
    ('talk_seconds_max = 10', dict(talk_seconds=10), dict(talk_seconds=10.5)),
    ('ring_seconds_min = 5, ring_seconds_max = 20', dict(ring_seconds=20), dict(ring_seconds=21)),
    ('variables = { ACCOUNTCODE = "ACME" }', dict(variables={"ACCOUNTCODE": "ACME"}),
     dict(variables={"ACCOUNTCODE": "OTHER"})),
    ('pbx = "main"', dict(pbx="main"), dict(pbx="branch")),
    # 2026-11-30 is a Monday
    ('weekdays = ["mon", "tue"]', dict(), dict(start_time=datetime(2026, 11, 29, 10, tzinfo=UTC))),
])
def test_each_condition_kind(tmp_path, when, matching, other):
    rules = rule("R", when)
    assert fired(tmp_path, rules, call(**matching)) == "R"
    decision = select(tmp_path, rules, call(**other))
    assert decision.selection.rule is None
    assert decision.selection.skipped[0][1]  # says why


def local(y, mo, d, h, mi, tz=LONDON):
    return datetime(y, mo, d, h, mi, tzinfo=tz).astimezone(UTC)


def test_hours_window_across_midnight(tmp_path):
    rules = rule("Night", 'hours = "22:00-06:00"') + rule("Day")
    assert fired(tmp_path, rules, call(start_time=local(2026, 11, 30, 23, 30))) == "Night"
    assert fired(tmp_path, rules, call(start_time=local(2026, 12, 1, 5, 59))) == "Night"
    assert fired(tmp_path, rules, call(start_time=local(2026, 12, 1, 6, 0))) == "Day"
    assert fired(tmp_path, rules, call(start_time=local(2026, 11, 30, 21, 59))) == "Day"


def test_hours_follow_the_pbx_time_zone_across_dst(tmp_path):
    # Office hours 09:00-17:00 London. In summer (BST, UTC+1) 08:30 UTC is 09:30 local;
    # in winter (GMT) 08:30 UTC is 08:30 local, before opening.
    rules = rule("Office", 'hours = "09:00-17:00"') + rule("Closed")
    summer = datetime(2026, 7, 1, 8, 30, tzinfo=UTC)
    winter = datetime(2026, 12, 1, 8, 30, tzinfo=UTC)
    assert fired(tmp_path, rules, call(start_time=summer)) == "Office"
    assert fired(tmp_path, rules, call(start_time=winter)) == "Closed"
    # The night the clocks go back (2026-10-25 02:00 BST -> 01:00 GMT): 01:30 happens twice.
    first = datetime(2026, 10, 25, 0, 30, tzinfo=UTC)   # 01:30 BST
    second = datetime(2026, 10, 25, 1, 30, tzinfo=UTC)  # 01:30 GMT
    night = rule("Small hours", 'hours = "01:00-02:00"') + rule("Else")
    assert fired(tmp_path, night, call(start_time=first)) == "Small hours"
    assert fired(tmp_path, night, call(start_time=second)) == "Small hours"
    # Spring forward (2026-03-29 01:00 GMT -> 02:00 BST): 01:00-02:00 local never happens.
    jump = datetime(2026, 3, 29, 1, 0, tzinfo=UTC)  # 02:00 BST
    assert fired(tmp_path, night, call(start_time=jump)) == "Else"


def test_weekday_uses_local_date_not_utc(tmp_path):
    # 23:30 UTC on Sunday is already Monday 00:30 in Berlin.
    extra_tz = rule("Monday", 'weekdays = "mon"') + rule("Other")
    record = call(start_time=datetime(2026, 11, 29, 23, 30, tzinfo=UTC))
    config_path = write_config(tmp_path, rules=extra_tz)
    text = config_path.read_text().replace('timezone = "Europe/London"', 'timezone = "Europe/Berlin"')
    config_path.write_text(text)
    config = load(config_path)
    assert CallHandler(config, outbox=None).decide(record).selection.rule.name == "Monday"


def test_recipients_both_and_fixed(tmp_path):
    rules = ('[[rules]]\nname = "All"\nrecipients = ["both", "fixed"]\n'
             'caller = { template = "missed", sender = "Acme" }\n'
             'agent = { text = "Missed {caller_number} at {start_time}", sender = "+447400000001" }\n'
             'fixed = { text = "FYI missed call {call_id}", sender = "Acme", '
             'numbers = ["+447400123999", "07400 123999"] }\n')
    decision = select(tmp_path, rules, call(agent_extension="201"))
    kinds = [(m.kind.value, m.destination, m.sender) for m in decision.messages]
    assert kinds == [("caller", "+447400123456", "Acme"), ("agent", "+447400123201", "+447400000001"),
                     ("fixed", "+447400123999", "Acme")]  # the repeated fixed number is texted once
    assert decision.messages[0].text == "Sorry we missed your call to Acme. Alice will call back."
    assert decision.messages[1].text == "Missed +447400123456 at 10:00"


def test_untextable_numbers_are_suppressed_with_reason(tmp_path):
    rules = ('[[rules]]\nname = "Both"\nrecipients = ["both"]\ncaller = { template = "missed", sender = "Acme" }\n'
             'agent = { template = "generic", sender = "Acme" }\n')
    cases = {
        "anonymous": "anonymous or withheld caller id",
        "": "anonymous or withheld caller id",
        "2001": "internal extension",
        "+4412": "invalid number",
        "+33612345678": "destination country FR not allowed",
        "+442071234567": "landline: cannot receive SMS",
        "+449012345678": "premium-rate number",
    }
    for number, reason in cases.items():
        decision = select(tmp_path, rules, call(caller_number=number, agent_extension="999"))
        caller_msg, agent_msg = decision.messages
        assert caller_msg.suppressed == reason, number
        assert agent_msg.suppressed == "agent 999 has no mobile number in [agents]"


def test_outbound_caller_recipient_is_the_dialled_customer(tmp_path):
    rules = rule("Out", 'direction = "outbound"')
    decision = select(tmp_path, rules, call(direction="outbound", caller_number="201",
                                            dialled_number="07400123777"))
    assert decision.messages[0].destination == "+447400123777"


def test_max_segments_suppresses_overlong_text(tmp_path):
    rules = ('[[rules]]\nname = "Short"\nrecipients = ["caller"]\nmax_segments = 1\n'
             'caller = { text = "Hello {caller_name}", sender = "Acme" }\n')
    config_path = write_config(tmp_path, rules=rules)
    text = config_path.read_text().replace('outbox =', 'template_value_max_length = 500\noutbox =')
    config_path.write_text(text)
    config = load(config_path)
    decision = CallHandler(config, outbox=None).decide(call(caller_name="x" * 200))
    assert decision.messages[0].suppressed == "too long: 2 segments, rule allows 1"

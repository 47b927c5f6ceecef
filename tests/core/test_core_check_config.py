"""`aftercalld check-config` (issue 16, item 4): every error at once, rules by name, and
warnings for what loads but cannot be meant."""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from core_helpers import DEFAULT_RULES, write_config

from aftercalld.config import load
from aftercalld.configreader import ConfigError
from aftercalld.daemon import Daemon

PBX = '[[pbx]]\nname = "main"\ntype = "asterisk"\nusername = "u"\nsecret = "s"\n'


def aftercalld(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aftercalld", *args], capture_output=True, text=True, timeout=60)


def problem_lines(stderr: str, prefix: str) -> list[str]:
    return [line.removeprefix(prefix) for line in stderr.splitlines() if line.startswith(prefix)]


# -- every error, in one run ---------------------------------------------------------------

MANY_ERRORS = PBX + '''port = "5038"
ping_interval = 0
call_timeout_seconds = 1
[templates.broken]
text = "Hi {caler_number}"

[[rules]]
name = "Missed - Support"
recipients = ["caller"]
when = { status = "answered", hours = "25:00-26:00", department = "support" }
caller = { template = "missed", sender = "ThisIsFarTooLong" }

[[rules]]
name = "Uses broken"
recipients = ["caller"]
caller = { template = "broken", sender = "Acme" }

[[rules]]
recipients = ["agnet"]
agent = { template = "missed", sender = "Acme" }
max_segments = 0

[[rules]]
name = "Fine"
recipients = ["caller"]
when = { status = "missed" }
caller = { template = "missed", sender = "Acme" }

[metrics]
listn = "127.0.0.1:9469"
'''

EXPECTED = [
    'pbx[0].port: must be an integer, not a string',
    'pbx[0].call_timeout_seconds: must be at least 60, got 1',
    'pbx[0].ping_interval: must be at least 0.1, got 0',
    'templates.broken.text: unknown placeholder {caler_number}',
    'rules["Missed - Support"].when.status: unknown value "answered"',
    'rules["Missed - Support"].when.hours: "25:00-26:00": hours 00-23',
    'rules["Missed - Support"].caller.sender: "ThisIsFarTooLong" is neither',
    'rules[2].name: missing (required)',
    'rules[2].recipients: unknown value "agnet"',
    'rules[2].max_segments: must be at least 1, got 0',
    'metrics.listn: unknown key',
]


def test_check_config_reports_every_independent_error_once(tmp_path):
    """Old code stopped at the first error (pbx[0].port) and named rules by index."""
    path = write_config(tmp_path, rules=MANY_ERRORS)
    res = aftercalld("check-config", str(path))
    assert res.returncode == 2, res.stderr
    lines = problem_lines(res.stderr, f"aftercalld: config error: {path}: ")
    for expected in EXPECTED:
        assert [line for line in lines if line.startswith(expected)], (expected, res.stderr)
    # Nothing else: the rule using the broken template, and the keys of the rule whose
    # recipients failed, cause no follow-on errors.
    assert len(lines) == len(EXPECTED), res.stderr
    assert "Traceback" not in res.stderr
    # The same list from load() for the daemon and the other commands; the first error's
    # file/key/reason stay on the exception.
    with pytest.raises(ConfigError) as info:
        load(path)
    assert len(info.value.errors) == len(EXPECTED)
    assert str(info.value).splitlines() == [f"{path}: {line}" for line in lines]


def test_run_refuses_a_bad_config_with_every_error_and_exit_2(tmp_path):
    path = write_config(tmp_path, rules=MANY_ERRORS)
    res = aftercalld("run", "-c", str(path))
    assert res.returncode == 2
    for expected in EXPECTED:
        assert f"{path}: {expected}" in res.stderr, (expected, res.stderr)
    assert not (tmp_path / "outbox.sqlite3").exists()


def test_a_rule_is_named_by_its_name_and_by_its_index_when_the_name_is_unusable(tmp_path):
    rules = DEFAULT_RULES + '''
[[rules]]
name = "Missed"
recipients = ["caller"]
when = { status = "ringing" }
caller = { template = "missed", sender = "Acme" }

[[rules]]
name = 7
recipients = ["caller"]
caller = { template = "nope", sender = "Acme" }
'''
    res = aftercalld("check-config", str(write_config(tmp_path, rules=rules)))
    lines = problem_lines(res.stderr, "aftercalld: config error: ")
    assert res.returncode == 2
    assert any(': rules[1].name: duplicate rule name "Missed"' in line for line in lines), res.stderr
    assert any(': rules[1].when.status: unknown value "ringing"' in line for line in lines), res.stderr
    assert any(": rules[2].name: must be a string, not an integer" in line for line in lines), res.stderr
    assert any(': rules[2].caller.template: unknown template "nope"' in line for line in lines), res.stderr


# -- warnings: exit 0, one `warning:` line each on stderr -----------------------------------

SMPP_LATIN1 = '\n[transport]\ntype = "smpp"\nhosts = ["127.0.0.1"]\nsystem_id = "acme"\ngsm_data_coding = 3\n'
MISSED_TEMPLATE = ('[templates.missed]\n'
                   'text = "Sorry we missed your call to {company}. {agent_name|Our team} will call back."\n')
TEXT_150 = "x" * 150  # one GSM 7-bit message (160 septets), two as Latin-1 octets (140 each)

WARNINGS = [
    ("unconditional rule first",
     PBX + '[[rules]]\nname = "Everyone"\nrecipients = ["caller"]\ncaller = { template = "generic", sender = "A" }\n'
     + DEFAULT_RULES,
     'rules["Everyone"]: has no conditions, so it matches every call and the rule(s) after it never fire: Missed'),
    ("unused template", PBX + DEFAULT_RULES, "templates.generic: not used by any rule"),
    ("agent with no [agents]",
     PBX + DEFAULT_RULES.replace('recipients = ["caller"]', 'recipients = ["both"]').replace(
         'caller = { template', 'agent = { text = "Missed {caller_number}", sender = "Acme" }\ncaller = { template'),
     'rules["Missed"].recipients: "agent" is texted at the mobile from [agents], but there is no [agents] table'),
    ("invalid agent mobile", PBX + DEFAULT_RULES,
     'agents.202.mobile: "+1415" cannot be texted (invalid number)'),
    ("template over max_segments",
     PBX + DEFAULT_RULES.replace('when = { status = "missed" }', 'when = { status = "missed" }\nmax_segments = 1')
     .replace('template = "missed"', f'text = "{TEXT_150} {{company}}"') + SMPP_LATIN1,
     'rules["Missed"].caller.text: the text is 2 segments before any value is filled in, '
     "over the rule's max_segments = 1"),
    ("no [[pbx]]", DEFAULT_RULES, "pbx: no [[pbx]] table: the daemon receives no calls"),
]


def _config_for(tmp_path: Path, case: str, rules: str) -> Path:
    path = write_config(tmp_path, rules=rules)
    text = path.read_text()
    if case not in ("unused template", "unconditional rule first"):  # these use it, or are about it
        text = text.replace('[templates.generic]\ntext = "Thanks for calling {company}."\n', "")
    if case == "agent with no [agents]":
        text = text.replace('[agents]\n"201" = { name = "Alice", mobile = "+447400123201" }\n', "")
    if case == "invalid agent mobile":
        text = text.replace('[agents]\n', '[agents]\n"202" = { name = "Bob", mobile = "+1415" }\n')
    if case == "template over max_segments":
        text = text.replace('[transport]\ntype = "log"\n', "").replace(MISSED_TEMPLATE, "")
    path.write_text(text)
    return path


@pytest.mark.parametrize("case,rules,warning", WARNINGS, ids=[w[0] for w in WARNINGS])
def test_check_config_warns_on_what_cannot_be_meant(tmp_path, case, rules, warning):
    """Old code said `ok` with no warning for each of these."""
    path = _config_for(tmp_path, case, rules)
    res = aftercalld("check-config", str(path))
    assert res.returncode == 0, res.stderr
    warnings = problem_lines(res.stderr, f"warning: {path}: ")
    assert len(warnings) == 1 and warnings[0].startswith(warning), res.stderr
    assert len(res.stderr.splitlines()) == 1, res.stderr
    assert "1 warning(s)" in res.stdout


def test_segments_are_counted_as_the_configured_transport_sends(tmp_path):
    """The same 150-character text is one GSM 7-bit message: no warning with the log transport."""
    rules = PBX + DEFAULT_RULES.replace('when = { status = "missed" }',
                                        'when = { status = "missed" }\nmax_segments = 1')
    rules = rules.replace('template = "missed"', f'text = "{TEXT_150} {{company}}"')
    path = write_config(tmp_path, rules=rules)
    path.write_text(path.read_text().replace('[templates.generic]\ntext = "Thanks for calling {company}."\n', "")
                    .replace(MISSED_TEMPLATE, ""))
    res = aftercalld("check-config", str(path))
    assert res.returncode == 0 and res.stderr == "", res.stderr


def test_a_clean_config_has_no_warnings(tmp_path):
    """A catch-all rule last, or followed only by a rule for calls the PBX's shutdown cut off
    (which a rule without conditions never matches), is fine."""
    catch_all = DEFAULT_RULES.replace('name = "Missed"', 'name = "Any"').replace('when = { status = "missed" }\n', "")
    interrupted = DEFAULT_RULES.replace('name = "Missed"', 'name = "Cut off"').replace('"missed" }', '"interrupted" }')
    path = write_config(tmp_path, rules=PBX + DEFAULT_RULES + catch_all + interrupted)
    path.write_text(path.read_text().replace('[templates.generic]\ntext = "Thanks for calling {company}."\n', ""))
    res = aftercalld("check-config", str(path))
    assert (res.returncode, res.stderr) == (0, "")
    assert load(path).warnings == ()


async def test_the_daemon_logs_the_warnings_at_start_and_on_reload(tmp_path, caplog):
    path = write_config(tmp_path)  # no [[pbx]], an unused template
    daemon = Daemon(load(path), str(path))
    with caplog.at_level(logging.WARNING, logger="aftercalld.daemon"):
        await daemon.start()
        try:
            started = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
            assert f"config: {path}: pbx: no [[pbx]] table: the daemon receives no calls " \
                   "(replay and test-rule still work)" in started
            assert f"config: {path}: templates.generic: not used by any rule" in started
            caplog.clear()
            path.write_text(path.read_text().replace('name = "Missed"', 'name = "Missed"\nmax_segments = 1')
                            .replace("will call back.", "will call back." + "!" * 200))
            daemon.reload()
            reloaded = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
            assert any(m.startswith(f'config: {path}: rules["Missed"].caller.template: the text is 2 segments')
                       for m in reloaded), reloaded
        finally:
            await daemon.stop()


def test_transport_and_pbx_keys_report_every_error(tmp_path):
    """The protocols' own checks go on after a wrong key too (old code: the first only)."""
    extra = '''
[[pbx]]
name = "fs"
type = "freeswitch"
password = ""
filters = ["Caller-Context"]
heartbeat_timeout = 10
events_format = "xml"

[transport]
type = "smpp"
hosts = ["smsc.example.net:99999", "smsc2.example.net"]
system_id = "a-system-id-too-long"
gsm_data_coding = 2
transient_statuses = ["0x45", "busy"]
bind_mode = "both"
window = 0
'''
    path = write_config(tmp_path, rules=DEFAULT_RULES)
    path.write_text(path.read_text().replace('[transport]\ntype = "log"\n', "") + extra)
    res = aftercalld("check-config", str(path))
    assert res.returncode == 2
    lines = problem_lines(res.stderr, f"aftercalld: config error: {path}: ")
    keys = [line.split(": ", 1)[0] for line in lines]
    assert keys == ["pbx[0].password", "pbx[0].events_format", "pbx[0].filters[0]", "pbx[0].heartbeat_timeout",
                    "transport.hosts", "transport.system_id", "transport.bind_mode", "transport.window",
                    "transport.transient_statuses", "transport.gsm_data_coding"], res.stderr


def test_a_failed_pbx_causes_no_follow_on_errors_in_rules_and_templates(tmp_path):
    rules = PBX.replace('secret = "s"', 'secret = "s"\nvariables = ["ACCOUNT"]\nport = 0') + '''
[[rules]]
name = "Accounts"
recipients = ["caller"]
when = { pbx = "main", variables = { ACCOUNT = "gold" } }
caller = { text = "Thanks, {var.ACCOUNT} customer.", sender = "Acme" }
'''
    res = aftercalld("check-config", str(write_config(tmp_path, rules=rules)))
    lines = problem_lines(res.stderr, "aftercalld: config error: ")
    assert res.returncode == 2 and len(lines) == 1 and ": pbx[0].port: must be at least 1, got 0" in lines[0], \
        res.stderr

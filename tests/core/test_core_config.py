"""Bad configs stop the daemon with the file, the key path and the reason (exit 2)."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
from core_helpers import DEFAULT_RULES, write_config
from testdata import SHIPPED

from aftercalld.config import load
from aftercalld.configreader import ConfigError

RULE_HEAD = '[[rules]]\nname = "R"\n'
CALLER_MISSED = 'caller = { template = "missed", sender = "Acme" }\n'

BAD = [
    # (rules/extra TOML, expected key path, expected words in the reason)
    (RULE_HEAD + 'recipients = ["agnet"]\ncaller = { template = "missed", sender = "Acme" }\n',
     'rules["R"].recipients', 'unknown value "agnet"'),
    (DEFAULT_RULES + RULE_HEAD + 'recipients = ["caller"]\ncaller = { template = "nope", sender = "Acme" }\n',
     'rules["R"].caller.template', 'unknown template "nope"'),
    (RULE_HEAD + 'recipients = ["caller"]\ncaller = { text = "Hi {caler_number}", sender = "Acme" }\n',
     'rules["R"].caller.text', "unknown placeholder {caler_number} (did you mean {caller_number}?)"),
    (RULE_HEAD + 'recipients = ["caller"]\ncaller = { text = "Hi {caller_number.__class__}", sender = "Acme" }\n',
     'rules["R"].caller.text', "is not a placeholder name"),
    (RULE_HEAD + 'recipients = ["caller"]\ncaller = { text = "Hi {caller_number!r:>10}", sender = "Acme" }\n',
     'rules["R"].caller.text', "is not a placeholder name"),
    (RULE_HEAD + 'recipients = ["caller"]\ncaller = { text = "unclosed {company", sender = "Acme" }\n',
     'rules["R"].caller.text', "unclosed"),
    (RULE_HEAD + 'recipients = ["caller"]\nwhen = { status = "answered" }\n' + CALLER_MISSED,
     'rules["R"].when.status', 'unknown value "answered"'),
    (RULE_HEAD + 'recipients = ["caller"]\nwhen = { hours = "25:00-26:00" }\n' + CALLER_MISSED,
     'rules["R"].when.hours', "hours 00-23"),
    (RULE_HEAD + 'recipients = ["caller"]\nwhen = { weekdays = ["funday"] }\n' + CALLER_MISSED,
     'rules["R"].when.weekdays', 'unknown day "funday"'),
    (RULE_HEAD + 'recipients = ["caller"]\nwhen = { caller = "(unclosed" }\n' + CALLER_MISSED,
     'rules["R"].when.caller', "not a valid regular expression"),
    (RULE_HEAD + 'recipients = ["caller"]\ncaller = { template = "missed", sender = "ThisIsFarTooLong" }\n',
     'rules["R"].caller.sender', "alphanumeric sender id of at most 11"),
    (RULE_HEAD + 'recipients = ["caller", "agent"]\ncaller = { template = "missed", sender = "Acme" }\n',
     'rules["R"].agent', 'recipients includes "agent"'),
    (RULE_HEAD + 'recipients = ["caller"]\nmax_segments = 0\ncaller = { template = "missed", sender = "Acme" }\n',
     'rules["R"].max_segments', "must be at least 1"),
    (RULE_HEAD + 'recipients = ["caller"]\nenabled = "yes"\ncaller = { template = "missed", sender = "Acme" }\n',
     'rules["R"].enabled', "must be true or false"),
    (RULE_HEAD + 'recipients = ["caller"]\n' + CALLER_MISSED
     + 'when = { talk_seconds_min = 30, talk_seconds_max = 10 }\n',
     'rules["R"].when.talk_seconds_max', "below the matching _min"),
    (DEFAULT_RULES + DEFAULT_RULES, "rules[1].name", 'duplicate rule name "Missed"'),
    (DEFAULT_RULES + '\n[transport2]\ntype = "log"\n', "transport2", "unknown key"),
    (DEFAULT_RULES + '\n[optout]\nstop_keywords = ["STOP"]\nstart_keywords = ["STOP"]\n',
     "optout.start_keywords", "also a stop keyword"),
    (DEFAULT_RULES + '\n[[pbx]]\nname = "x"\ntype = "panasonic"\n', "pbx[0].type", 'unknown value "panasonic"'),
]


@pytest.mark.parametrize("toml,key,reason", BAD, ids=[b[1] + ":" + b[2][:20] for b in BAD])
def test_bad_config_names_file_key_and_reason(tmp_path, toml, key, reason):
    path = write_config(tmp_path, rules=toml)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.file == str(path)
    assert info.value.key == key
    assert reason in info.value.reason
    assert str(info.value).startswith(f"{path}: {key}: ")


@pytest.mark.parametrize("general,key,reason", [
    ('timezone = "Mars/Olympus"', "general.timezone", 'unknown time zone "Mars/Olympus"'),
    ('default_region = "gb"', "general.default_region", "not in the expected form"),
    ('default_region = "XX"', "general.default_region", "not a region libphonenumber knows"),
    ('outbx = "/tmp/x"', "general.outbx", "unknown key"),
    ('keep_days = 3', "general.keep_days", "3 is less than 7: delivery receipts can arrive days after the text"),
    ('outbox = "postgresql://u:s3cret@db/x?sslmode=nope=x"', "general.outbox", "is not a PostgreSQL connection"),
    ('outbox = "postgresql://aftercalld:s3cret@db.example.net"', "general.outbox", "names no database"),
    ('outbox = ""', "general.outbox", "must not be empty"),
    ('outbox_password_file = "/etc/pw"', "general.outbox_password_file", "is for a PostgreSQL outbox"),
    ('outbox = "postgresql://a@db/x"\noutbox_password_file = "/nonexistent/pw"', "general.outbox_password_file",
     "no such file"),
    ('instance = "two words"', "general.instance", "not in the expected form"),
    ('lease_seconds = 1', "general.lease_seconds", "at least 5"),
])
def test_bad_general_section(tmp_path, general, key, reason):
    path = tmp_path / "c.toml"
    text = f'[general]\ndefault_region = "GB"\n{general}\n'
    path.write_text(text.replace('default_region = "GB"\ndefault_region', 'default_region'))
    with pytest.raises(ConfigError) as info:
        load(path)
    assert (info.value.key, reason in info.value.reason) == (key, True), str(info.value)


def test_a_postgresql_outbox_password_is_never_in_an_error(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[general]\ndefault_region = "GB"\noutbox = "postgresql://u:s3cret@db"\n'
                    'outbox_password_file = "/nonexistent"\n')
    with pytest.raises(ConfigError) as info:
        load(path)
    assert "s3cret" not in str(info.value)
    assert "general.outbox" in str(info.value)


def test_a_postgresql_outbox_and_its_instance_keys(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    path = tmp_path / "c.toml"
    path.write_text(f'[general]\ndefault_region = "GB"\noutbox = "postgres://aftercalld@db.example.net/acd"\n'
                    f'outbox_password_file = "{secret}"\ninstance = "sms-1"\nlease_seconds = 30\n'
                    f'state_dir = "{tmp_path}"\n')
    config = load(path)
    assert config.outbox_is_postgres
    assert (config.instance, config.lease_seconds, config.state_dir) == ("sms-1", 30.0, str(tmp_path))
    from aftercalld.daemon import status_path
    from aftercalld.store.location import shown, with_password_file
    assert status_path(config) == tmp_path / "status.json"
    assert "s3cret" in with_password_file(config.outbox_path, config.outbox_password_file)
    assert shown(with_password_file(config.outbox_path, config.outbox_password_file)) == \
        "postgresql://aftercalld@db.example.net/acd"
    assert load(write_config(tmp_path)).instance  # the host name by default


def test_toml_syntax_error_and_missing_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[general\n")
    with pytest.raises(ConfigError, match="TOML syntax error"):
        load(path)
    with pytest.raises(ConfigError, match="file not found"):
        load(tmp_path / "absent.toml")


def test_check_config_cli_exit_codes(tmp_path):
    good = write_config(tmp_path)
    ok = subprocess.run([sys.executable, "-m", "aftercalld.cli", "check-config", str(good)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout
    bad = write_config(tmp_path, rules=BAD[0][0])
    res = subprocess.run([sys.executable, "-m", "aftercalld.cli", "check-config", str(bad)],
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert f'{bad}: rules["R"].recipients: unknown value "agnet"' in res.stderr
    assert "Traceback" not in res.stderr


def test_example_config_is_valid():

    example = SHIPPED / "aftercalld.example.toml"
    config = load(example)
    assert config.rules.rules


def test_rule_on_a_variable_no_pbx_collects(tmp_path):
    rules = ('[[pbx]]\nname = "main"\ntype = "asterisk"\nusername = "u"\nsecret = "s"\nvariables = ["ACCOUNTCODE"]\n'
             '[[rules]]\nname = "R"\nrecipients = ["caller"]\nwhen = { variables = { DEPT = "x" } }\n'
             'caller = { template = "missed", sender = "Acme" }\n')
    with pytest.raises(ConfigError) as info:
        load(write_config(tmp_path, rules=rules))
    assert info.value.key == 'rules["R"].when.variables.DEPT'
    assert "never known" in info.value.reason


def test_every_subcommand_has_a_handler_and_python_m_works():
    import subprocess
    import sys

    from aftercalld.cli import COMMANDS, build_parser

    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(subparsers.choices) == set(COMMANDS)
    res = subprocess.run([sys.executable, "-m", "aftercalld", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.startswith("aftercalld "), res.stderr


# -- hostile values (issue 13, item 7): every one is `file: key.path: reason`, exit 2 ----------

LONG_INT = "1" * 4400

HOSTILE = [
    ('[general]\ntimezone = "America"\n', "general.timezone", 'unknown time zone "America"'),
    ('[general]\ntimezone = "' + "A" * 300 + '"\n', "general.timezone", "is not a time zone name"),
    ('[general]\ntimezone = "../../../etc/passwd"\n', "general.timezone", "is not a time zone name"),
    ('[general]\nkeep_days = ' + LONG_INT + '\n', "general.keep_days", "not a usable number"),
    ('[dispatch]\nretry_initial_seconds = nan\n', "dispatch.retry_initial_seconds", "must be a finite number, not nan"),
    ('[dispatch]\nttl_seconds = inf\n', "dispatch.ttl_seconds", "must be a finite number, not inf"),
    ('[[pbx]]\nname = "x"\ntype = "asterisk"\nconnect_timeout = nan\n', "pbx[0].connect_timeout",
     "must be a finite number"),
    ('[metrics]\nlisten = "127.0.0.1:99999"\n', "metrics.listen", "port 99999 is outside 1-65535"),
    ('[metrics]\nlisten = "127.0.0.1:0"\n', "metrics.listen", "port 0 is outside 1-65535"),
]


@pytest.mark.parametrize("toml,key,reason", HOSTILE, ids=[h[1] + ":" + h[2][:24] for h in HOSTILE])
def test_hostile_values_are_config_errors_with_exit_2(tmp_path, capsys, toml, key, reason):
    from aftercalld import cli

    path = write_config(tmp_path)
    text = path.read_text()
    section, assignment = toml.split("\n", 1)
    name = assignment.split(" = ", 1)[0]
    if section.startswith("[[") or section not in text:
        text += "\n" + toml
    elif re.search(rf"^{name} = ", text, re.M):  # the base config sets it: change it there
        text = re.sub(rf"^{name} = .*$", lambda _: assignment.rstrip("\n"), text, count=1, flags=re.M)
    else:
        text = text.replace(section + "\n", toml, 1)
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert (info.value.key, info.value.file) == (key, str(path)), str(info.value)
    assert reason in info.value.reason
    assert cli.main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"aftercalld: config error: {path}: {key}: ") and err.count("\n") == 1
    assert len(err) < 600  # a 4,400-digit value is not echoed whole


def test_an_echoed_value_with_a_newline_stays_on_one_line(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[general]\ndefault_region = "G\\nB\\u001b[2J"\n')
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert "\n" not in message and "\x1b" not in message
    assert message.startswith(f'{path}: general.default_region: "G\\nB\\x1b[2J" is not in the expected form')

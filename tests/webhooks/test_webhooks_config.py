"""[[webhook]], [replies], rules' `replies` and [keywords.*]: bad values stop the daemon
naming file, key and reason; a secret never appears in an error."""
from __future__ import annotations

import pytest

from aftercalld.config import loads
from aftercalld.configreader import ConfigError

HEAD = '''
[general]
default_region = "GB"
outbox = "/tmp/x.sqlite3"

[[rules]]
name = "Missed"
recipients = ["caller"]
when = { status = "missed" }
caller = { text = "Sorry", sender = "Acme" }
'''
SECRET = "a-very-secret-value-0123456789"
HOOK = f'\n[[webhook]]\nname = "crm"\nurl = "https://crm.example.com/hook"\nsecret = "{SECRET}"\n'

BAD = [
    (HOOK.replace('url = "https://crm.example.com/hook"', 'url = "ftp://crm"'), "webhook[0].url",
     "not an http:// or https:// URL"),
    (HOOK.replace("https://crm", "https://user:pw@crm"), "webhook[0].url", "must not carry a user name"),
    (HOOK + 'events = ["message.delivrd"]\n', "webhook[0].events", 'unknown event "message.delivrd"'),
    (HOOK + "timeout_seconds = 0\n", "webhook[0].timeout_seconds", "must be at least 0.1"),
    (HOOK + "concurrency = 0\n", "webhook[0].concurrency", "must be at least 1"),
    (HOOK + "retry_initial_seconds = 10\nretry_max_seconds = 1\n", "webhook[0].retry_max_seconds",
     "must not be less than retry_initial_seconds"),
    (HOOK.replace(f'secret = "{SECRET}"', 'secret = "short"'), "webhook[0].secret", "shorter than 16 bytes"),
    (HOOK.replace(f'secret = "{SECRET}"', 'secret_file = "/nonexistent/secret"'), "webhook[0].secret_file",
     "cannot read /nonexistent/secret"),
    (HOOK.replace(f'secret = "{SECRET}"\n', ""), "webhook[0].secret_file", "give exactly one of"),
    (HOOK + HOOK, "webhook[1].name", 'duplicate webhook name "crm"'),
    (HOOK + "\n[replies]\ndefault = [\"webhook:erp\"]\n", "replies.default", 'no [[webhook]] is named "erp"'),
    ("\n[replies]\ndefault = [\"agnet\"]\n", "replies.default", 'neither "agent", "webhook:NAME" nor a phone'),
    ("\n[replies]\nforward_text = \"{numbr}: {text}\"\n", "replies.forward_text", "unknown placeholder {numbr}"),
    ("\n[replies]\nsender = \"FarTooLongSender\"\n", "replies.sender", "alphanumeric sender id"),
    ("\n[replies]\nmax_segments = 11\n", "replies.max_segments", "must be at most 10"),
    ("\n[replies]\nhelp_cooldown_minutes = -1\n", "replies.help_cooldown_minutes", "must be at least 0"),
    ("\n[replies]\nforward = []\n", "replies.forward", "unknown key"),
    ("\n[optout]\nhelp_keywords = [\"STOP\"]\n", "optout.help_keywords", "also a stop or start keyword"),
    ("\n[keywords.de]\nstop = [\"HELP\"]\n", "keywords.de.stop", '"HELP" is already [optout] help'),
    ("\n[keywords.de]\nhelp = [\"HILFE\"]\n", "keywords.de.help_text", "no help_text"),
    ("\n[keywords.German]\nstop = [\"STOPP\"]\n", "keywords.German", "not a language code"),
    ("\n[keywords.de]\nstopp = [\"STOPP\"]\n", "keywords.de.stopp", "unknown key"),
]


@pytest.mark.parametrize("extra,key,reason", BAD, ids=[b[1] + ":" + b[2][:20] for b in BAD])
def test_bad_values_name_the_key_and_reason(extra, key, reason):
    with pytest.raises(ConfigError) as info:
        loads(HEAD + extra, "aftercalld.toml")
    assert (info.value.key, info.value.file) == (key, "aftercalld.toml"), str(info.value)
    assert reason in info.value.reason
    assert SECRET not in str(info.value)


def test_a_rules_replies_are_checked_and_kept_by_rule_name():
    with pytest.raises(ConfigError) as info:
        loads(HEAD + 'replies = ["agent", "webhook:nope"]\n', "aftercalld.toml")
    assert info.value.key == 'rules["Missed"].replies'
    config = loads(HEAD + 'replies = ["agent", "+442071234567", "webhook:crm"]\n' + HOOK, "aftercalld.toml")
    assert config.replies.routes_for("Missed") == ("agent", "+442071234567", "webhook:crm")
    assert config.replies.routes_for("Other") == () == config.replies.routes_for(None)


def test_secrets_stay_out_of_reprs_and_a_secret_file_is_read(tmp_path):
    (tmp_path / "s").write_text(SECRET + "\n")
    config = loads(HEAD + HOOK.replace(f'secret = "{SECRET}"', f'secret_file = "{tmp_path / "s"}"'), "a.toml")
    endpoint, = config.webhooks
    assert endpoint.secret == SECRET.encode()
    assert SECRET not in repr(config)
    assert endpoint.events == ("*",) and endpoint.wants("message.delivered")

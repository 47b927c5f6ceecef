"""[api] and its tokens file: off by default, each bad value named by file, key and reason,
and no error or warning that quotes a token."""
from __future__ import annotations

import pytest
from api_helpers import TOKEN, write_tokens

from aftercalld.config import loads
from aftercalld.configreader import ConfigError

BASE = '''
[general]
default_region = "GB"

[transport]
type = "log"
'''


def config_with(api: str):
    return loads(BASE + "\n[api]\n" + api, "/etc/aftercalld/aftercalld.toml")


def error_of(api: str) -> str:
    with pytest.raises(ConfigError) as caught:
        config_with(api)
    return str(caught.value)


def test_off_by_default_and_loopback_by_default(tmp_path):
    assert loads(BASE).api is None
    assert config_with('listen = "0.0.0.0:80"').api is None  # keys checked, but off
    tokens = write_tokens(tmp_path / "tokens", f"crm:{TOKEN}\n")
    api = config_with(f'enabled = true\ntokens_file = "{tokens}"').api
    assert api is not None
    assert (api.host, api.port, api.listen, api.sender, api.max_segments) == ("127.0.0.1", 8080, "127.0.0.1:8080",
                                                                              None, 10)
    assert [t.name for t in api.tokens] == ["crm"]
    assert TOKEN not in repr(api) and TOKEN not in repr(api.tokens)


def test_ipv6_listen(tmp_path):
    tokens = write_tokens(tmp_path / "tokens", f"crm:{TOKEN}\n")
    api = config_with(f'enabled = true\nlisten = "[::1]:8443"\ntokens_file = "{tokens}"').api
    assert (api.host, api.port, api.listen) == ("::1", 8443, "[::1]:8443")


@pytest.mark.parametrize(("api", "error"), [
    ('listen = "localhost"', 'api.listen: "localhost" is not host:port'),
    ('listen = "127.0.0.1:70000"', "api.listen: port 70000 is outside 1-65535"),
    ('listen = 8080', "api.listen: must be a string"),
    ("enabled = 1", "api.enabled: must be true or false"),
    ('sender = "far too long a sender"', 'api.sender: "far too long a sender" is neither a phone number'),
    ("max_segments = 0", "api.max_segments: must be at least 1"),
    ("max_segments = 11", "api.max_segments: must be at most 10"),
    ("max_body_bytes = 10", "api.max_body_bytes: must be at least 1024"),
    ('tokens = "x"', "api.tokens: unknown key"),
    ('enabled = true\ntokens_file = "api-tokens"', 'api.tokens_file: "api-tokens" is not an absolute path'),
    ('enabled = true\ntokens_file = "/nonexistent/api-tokens"',
     "api.tokens_file: /nonexistent/api-tokens: no such file"),
])
def test_bad_values_name_file_key_and_reason(api, error):
    message = error_of(api)
    assert message.startswith("/etc/aftercalld/aftercalld.toml: ")
    assert error in message, message


@pytest.mark.parametrize(("text", "error"), [
    ("", "no tokens in it"),
    ("# only a comment\n\n", "no tokens in it"),
    (f"{TOKEN}\n", "line 1: not name:token"),
    (f"# the CRM\ncrm:{TOKEN}\nbad name:{TOKEN}x\n", "line 3: the name is not"),
    ("crm:short\n", "line 1: the token of 'crm' is shorter than 16 characters"),
    (f"crm:{TOKEN} with spaces\n", "line 1: the token of 'crm' holds characters"),
    (f"crm:{TOKEN}\ncrm:{TOKEN}x\n", "line 2: the name 'crm' is given twice"),
    (f"crm:{TOKEN}\nbilling:{TOKEN}\n", "line 2: the token of 'billing' is another name's too"),
])
def test_a_bad_tokens_file_names_the_line_and_never_the_token(tmp_path, text, error):
    tokens = write_tokens(tmp_path / "tokens", text)
    message = error_of(f'enabled = true\ntokens_file = "{tokens}"')
    assert f"api.tokens_file: {tokens}: " in message and error in message, message
    assert TOKEN not in message


def test_a_tokens_file_others_can_read_is_a_warning(tmp_path):
    tokens = write_tokens(tmp_path / "tokens", f"crm:{TOKEN}\n", mode=0o644)
    config = config_with(f'enabled = true\ntokens_file = "{tokens}"')
    api_warnings = [w for w in config.warnings if "api." in w]
    assert api_warnings == [f"/etc/aftercalld/aftercalld.toml: api.tokens_file: {tokens} can be read or "
                            f"written by every user (mode 0644): chmod 640 it, owned by root, group aftercalld"]
    tokens.chmod(0o640)
    assert not [w for w in config_with(f'enabled = true\ntokens_file = "{tokens}"').warnings if "api." in w]


def test_check_config_reports_api_errors_with_the_others(tmp_path):
    message = error_of('enabled = true\nlisten = "nowhere"\nmax_segments = 99\ntokens_file = "/nonexistent/t"')
    lines = message.splitlines()
    assert any("api.listen" in line for line in lines)
    assert any("api.max_segments" in line for line in lines)
    assert any("api.tokens_file" in line for line in lines)

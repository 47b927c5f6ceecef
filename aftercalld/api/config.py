"""``[api]`` of the config and the bearer tokens file it names.

The tokens file holds one ``name:token`` per line. The name is what the logs, the message's
idempotency key and its rule ("api/<name>") show; the token itself is never echoed, not even
in an error about its own line.
"""
from __future__ import annotations

import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ..configreader import Section

DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_TOKENS_FILE = "/etc/aftercalld/api-tokens"
# A guessable token is no token: 16 characters of a random string are ~96 bits.
MIN_TOKEN_LENGTH = 16
_TOKEN_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
# What a client can write after "Bearer " in a header: RFC 6750's b64token, no spaces.
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_LISTEN = re.compile(r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[0-9A-Za-z.\-]+)):(?P<port>[0-9]{1,5})")


@dataclass(frozen=True)
class ApiToken:
    name: str
    token: str = field(repr=False)  # a secret: never in a repr, a log line or an error


@dataclass(frozen=True)
class ApiConfig:
    host: str
    port: int
    tokens_file: str
    tokens: tuple[ApiToken, ...] = field(repr=False)
    sender: str | None = None  # when a request names none
    max_segments: int = 10
    max_body_bytes: int = 65536
    # `key: reason` for what loads but is surely not meant (a tokens file others can read).
    warnings: tuple[tuple[str, str], ...] = ()

    @property
    def listen(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_api(root: Section) -> ApiConfig | None:
    """None when the API is off (the default). Every key is checked even then, so that a
    typo in a table switched off for now is found before it is switched on."""
    sec = root.section("api")
    enabled = sec.bool("enabled", False)
    listen = sec.str("listen", DEFAULT_LISTEN, nonempty=True)
    host, port = DEFAULT_LISTEN.split(":")[0], 8080
    match = _LISTEN.fullmatch(listen)
    if match is None:
        sec.report("listen", f'"{listen}" is not host:port (e.g. "127.0.0.1:8080", "[::1]:8080")')
    elif not 1 <= int(match["port"]) <= 65535:
        sec.report("listen", f'port {match["port"]} is outside 1-65535')
    else:
        host, port = match["ipv6"] or match["host"], int(match["port"])
    tokens_file = sec.str("tokens_file", DEFAULT_TOKENS_FILE, nonempty=True)
    sender = sec.str("sender", None, nonempty=True)
    if sender is not None:
        from ..config import sender_problem  # config imports this module

        problem = sender_problem(sender)
        if problem:
            sec.report("sender", problem)
    max_segments = sec.int("max_segments", 10, min=1, max=10)
    max_body_bytes = sec.int("max_body_bytes", 65536, min=1024, max=1048576)
    sec.done()
    if not enabled:
        return None
    tokens, warnings = _read_tokens(sec, tokens_file)
    return ApiConfig(host, port, tokens_file, tokens, sender, max_segments, max_body_bytes, warnings)


def _read_tokens(sec: Section, tokens_file: str) -> tuple[tuple[ApiToken, ...], tuple[tuple[str, str], ...]]:
    key = "tokens_file"
    path = Path(tokens_file)
    if not path.is_absolute():
        raise sec.error(key, f'"{tokens_file}" is not an absolute path')
    try:
        info = path.stat()
        raw = path.read_bytes()
    except FileNotFoundError:
        raise sec.error(key, f"{tokens_file}: no such file (one name:token per line)") from None
    except OSError as exc:
        raise sec.error(key, f"{tokens_file}: cannot read: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise sec.error(key, f"{tokens_file}: not a regular file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise sec.error(key, f"{tokens_file}: not UTF-8 text") from None
    tokens: list[ApiToken] = []
    names: set[str] = set()
    secrets: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{tokens_file}: line {number}"
        name, sep, token = line.partition(":")
        name, token = name.strip(), token.strip()
        # The reasons below never quote the line: it may be nothing but a token.
        if not sep:
            raise sec.error(key, f"{where}: not name:token")
        if not _TOKEN_NAME.fullmatch(name):
            raise sec.error(key, f"{where}: the name is not 1-64 letters, digits and _.@-")
        if len(token) < MIN_TOKEN_LENGTH:
            raise sec.error(key, f"{where}: the token of {name!r} is shorter than {MIN_TOKEN_LENGTH} characters "
                                 f"(make one with: openssl rand -hex 24)")
        if not _TOKEN.fullmatch(token):
            raise sec.error(key, f"{where}: the token of {name!r} holds characters a Bearer header cannot carry "
                                 f"(letters, digits and -._~+/ only)")
        if name in names:
            raise sec.error(key, f"{where}: the name {name!r} is given twice")
        if token in secrets:
            raise sec.error(key, f"{where}: the token of {name!r} is another name's too: "
                                 f"the logs could not tell who sent what")
        names.add(name)
        secrets.add(token)
        tokens.append(ApiToken(name, token))
    if not tokens:
        raise sec.error(key, f"{tokens_file}: no tokens in it: nobody could use the API (one name:token per line)")
    warnings: list[tuple[str, str]] = []
    if info.st_mode & (stat.S_IROTH | stat.S_IWOTH):
        warnings.append((sec.key(key), f"{tokens_file} can be read or written by every user "
                                       f"(mode {stat.S_IMODE(info.st_mode):04o}): chmod 640 it, owned by root, "
                                       f"group aftercalld"))
    return tuple(tokens), tuple(warnings)

"""[[webhook]] tables: where events are posted, which ones, and with which secret."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from ..configreader import DependsOnFailedPart, Section
from .events import EVENT_TYPES, event_matches

_NAME = r"[A-Za-z0-9_.-]{1,64}"
# A secret shorter than this is guessable from captured signatures.
MIN_SECRET_BYTES = 16


@dataclass(frozen=True)
class WebhookEndpoint:
    name: str
    url: str
    secret: bytes = field(repr=False)  # never in a log line, an error or a repr
    events: tuple[str, ...] = ("*",)
    timeout_seconds: float = 10.0
    concurrency: int = 4  # posts in flight at once to this endpoint
    ttl_seconds: float = 86400.0  # retried for this long after the event, then failed
    retry_initial_seconds: float = 1.0
    retry_max_seconds: float = 600.0

    def wants(self, event_type: str) -> bool:
        return any(event_matches(pattern, event_type) for pattern in self.events)


def parse_webhooks(root: Section) -> tuple[WebhookEndpoint, ...]:
    problems = root.problems
    assert problems is not None
    endpoints: list[WebhookEndpoint] = []
    names: set[str] = set()
    for sec in root.sections("webhook"):
        endpoint = problems.attempt(lambda sec=sec: _endpoint(sec, names), None)  # type: ignore[misc]
        if endpoint is not None:
            endpoints.append(endpoint)
    return tuple(endpoints)


def _endpoint(sec: Section, names: set[str]) -> WebhookEndpoint:
    problems = sec.problems
    assert problems is not None
    errors_before = len(problems.errors)
    name = sec.str("name", pattern=_NAME)
    if name in names:
        sec.report("name", f'duplicate webhook name "{name}"')
    names.add(name)
    url = sec.str("url", nonempty=True)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        sec.report("url", f'"{url}" is not an http:// or https:// URL with a host')
    elif parts.username or parts.password:
        # It would end up in logs with the URL; the signature is the authentication.
        sec.report("url", "must not carry a user name or password (the signature authenticates us)")
    secret = _secret(sec)
    events = tuple(sec.str_list("events", ["*"]))
    if not events:
        sec.report("events", 'must name at least one event (or "*" for all)')
    for pattern in events:
        if not any(event_matches(pattern, known) for known in EVENT_TYPES):
            sec.report("events", f'unknown event "{pattern}" (known: {", ".join(EVENT_TYPES)}; '
                                 f'"message.*" or "*" for groups)')
    endpoint = WebhookEndpoint(
        name=name, url=url, secret=secret, events=events,
        timeout_seconds=sec.float("timeout_seconds", 10.0, min=0.1, max=300),
        concurrency=sec.int("concurrency", 4, min=1, max=256),
        ttl_seconds=sec.float("ttl_seconds", 86400.0, min=1, max=30 * 86400),
        retry_initial_seconds=sec.float("retry_initial_seconds", 1.0, min=0.01, max=3600),
        retry_max_seconds=sec.float("retry_max_seconds", 600.0, min=0.01, max=86400),
    )
    if endpoint.retry_max_seconds < endpoint.retry_initial_seconds:
        sec.report("retry_max_seconds", "must not be less than retry_initial_seconds")
    sec.done()
    if len(problems.errors) > errors_before:
        raise DependsOnFailedPart
    return endpoint


def _secret(sec: Section) -> bytes:
    """From `secret_file` (preferred: the config can stay readable) or `secret`. Errors
    say what is wrong, never the value."""
    if sec.has("secret") == sec.has("secret_file"):
        sec.skip("secret", "secret_file")
        raise sec.error("secret_file", "give exactly one of secret_file (a file holding the secret) or secret")
    if sec.has("secret"):
        value = sec.secret("secret").strip().encode()
        where = "secret"
    else:
        path = sec.str("secret_file", nonempty=True)
        where = "secret_file"
        try:
            value = Path(path).read_bytes().strip()
        except OSError as exc:
            raise sec.error("secret_file", f"cannot read {path}: {exc.strerror}") from None
    if len(value) < MIN_SECRET_BYTES:
        raise sec.error(where, f"the secret is shorter than {MIN_SECRET_BYTES} bytes "
                               f"(e.g. `openssl rand -hex 32` makes one)")
    return value


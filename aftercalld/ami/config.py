"""AMI-specific keys of a ``[[pbx]]`` table with ``type = "asterisk"``."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..classify import DirectionSettings, parse_direction_keys
from ..configreader import Section

DEFAULT_INBOUND_CONTEXTS = ("from-trunk", "from-pstn", "from-external", "from-did-direct")


@dataclass(frozen=True)
class AmiSettings(DirectionSettings):
    host: str = "127.0.0.1"
    port: int = 5038
    username: str = "aftercalld"
    secret: str = field(default="", repr=False)  # never printed, not even by repr()
    connect_timeout: float = 5.0
    # Keep-alive: a Ping every ping_interval; no answer within ping_timeout = dead link.
    ping_interval: float = 10.0
    ping_timeout: float = 5.0
    # Reconnect backoff (capped exponential with jitter), seconds.
    reconnect_min: float = 0.5
    reconnect_max: float = 30.0
    # Asterisk's carrier contexts (FreePBX's among them); extension_pattern: DirectionSettings.
    inbound_contexts: tuple[str, ...] = DEFAULT_INBOUND_CONTEXTS
    # Finished call ids remembered to drop duplicated events (e.g. after a reconnect).
    remember_finished: int = 20000


def parse_settings(section: Section) -> AmiSettings:
    """Read the AMI keys of one ``[[pbx]]`` table; the core has already read the common
    keys from the same section. Errors name the key, never the secret's value."""
    host = section.str("host", "127.0.0.1", nonempty=True)
    port = section.int("port", 5038, min=1, max=65535)
    username = section.str("username", nonempty=True)
    secret = section.secret("secret")
    if not secret:
        section.report("secret", "must not be empty")
    connect_timeout = section.float("connect_timeout", 5.0, min=0.1, max=300)
    ping_interval = section.float("ping_interval", 10.0, min=0.1, max=3600)
    ping_timeout = section.float("ping_timeout", 5.0, min=0.1, max=600)
    reconnect_min, reconnect_max = section.backoff(0.5, 30.0)
    direction_keys = parse_direction_keys(section, DEFAULT_INBOUND_CONTEXTS)
    remember_finished = section.int("remember_finished", 20000, min=100, max=10_000_000)
    section.done()
    return AmiSettings(
        host=host,
        port=port,
        username=username,
        secret=secret,
        connect_timeout=connect_timeout,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        reconnect_min=reconnect_min,
        reconnect_max=reconnect_max,
        **direction_keys,  # type: ignore[arg-type]
        remember_finished=remember_finished,
    )

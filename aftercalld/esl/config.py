"""The ESL-specific keys of a ``[[pbx]]`` table with ``type = "freeswitch"``.

Key names match the AMI table's where the meaning is the same (connect_timeout,
reconnect_min/max, inbound_contexts, extension_pattern), so one config reads alike.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..classify import DirectionSettings, parse_direction_keys
from ..configreader import Section
from ..logutil import redact

EVENT_FORMATS = ("plain", "json")
DEFAULT_PASSWORD = "ClueCon"  # FreeSWITCH's shipped default; we warn when it is used
DEFAULT_INBOUND_CONTEXTS = ("public",)


@dataclass(frozen=True)
class EslSettings(DirectionSettings):
    host: str = "127.0.0.1"
    port: int = 8021
    password: str = field(default=DEFAULT_PASSWORD, repr=False)  # never printed, not even by repr()
    events_format: str = "plain"
    # Extra `filter <header> <value>` lines sent before subscribing (e.g. one domain of a
    # multi-tenant box). A filter must never hide one leg of a call from us.
    filters: tuple[tuple[str, str], ...] = ()
    connect_timeout: float = 5.0
    # Reconnect backoff (capped exponential with jitter), seconds.
    reconnect_min: float = 0.5
    reconnect_max: float = 30.0
    # FreeSWITCH sends HEARTBEAT every 20 s; this long without any traffic means the TCP
    # connection is dead even if the kernel has not noticed yet. 0 disables.
    heartbeat_timeout: float = 65.0
    # Channel variable the dialplan sets to inbound/outbound/local on the call leg
    # (FusionPBX: call_direction). When absent: inbound_contexts and extension_pattern decide.
    direction_variable: str = "call_direction"
    inbound_contexts: tuple[str, ...] = DEFAULT_INBOUND_CONTEXTS  # extension_pattern: DirectionSettings
    # Optional channel variable naming the agent's extension (e.g. cc_agent); empty: the
    # extension the call leg rang (inbound) or the caller (outbound).
    agent_variable: str = ""

    def describe(self) -> str:
        """For logs: everything but the password."""
        return (f"{self.host}:{self.port} (events {self.events_format}, password {redact(self.password)}, "
                f"{len(self.filters)} filter(s))")


def parse_settings(section: Section) -> EslSettings:
    host = section.str("host", "127.0.0.1", nonempty=True)
    port = section.int("port", 8021, min=1, max=65535)
    password = section.secret("password", DEFAULT_PASSWORD)
    if not password:
        section.report("password", "must not be empty (event_socket.conf.xml's password param)")
    if any(ch in password for ch in "\r\n"):
        section.report("password", "must be one line")
    events_format = section.str("events_format", "plain", choices=EVENT_FORMATS)
    filters: list[tuple[str, str]] = []
    for i, item in enumerate(section.str_list("filters", [])):
        header, _, value = item.strip().partition(" ")
        if not header or not value.strip() or "\n" in item or "\r" in item:
            section.report(f"filters[{i}]", f'"{item}" is not "<Header-Name> <value>"')
            continue
        filters.append((header, value.strip()))
    connect_timeout = section.float("connect_timeout", 5.0, min=0.1, max=300)
    reconnect_min, reconnect_max = section.backoff(0.5, 30.0)
    heartbeat = section.float("heartbeat_timeout", 65.0, min=0, max=3600)
    if 0 < heartbeat <= 20:
        section.report("heartbeat_timeout", "must be 0 (off) or more than FreeSWITCH's 20 s HEARTBEAT interval")
    direction_variable = section.str("direction_variable", "call_direction", pattern=r"[A-Za-z0-9_]*")
    direction_keys = parse_direction_keys(section, DEFAULT_INBOUND_CONTEXTS)
    agent_variable = section.str("agent_variable", "", pattern=r"[A-Za-z0-9_]*")
    section.done()
    return EslSettings(
        host=host,
        port=port,
        password=password,
        events_format=events_format,
        filters=tuple(filters),
        connect_timeout=connect_timeout,
        reconnect_min=reconnect_min,
        reconnect_max=reconnect_max,
        heartbeat_timeout=heartbeat,
        direction_variable=direction_variable,
        **direction_keys,  # type: ignore[arg-type]
        agent_variable=agent_variable,
    )

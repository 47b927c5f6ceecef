"""The ESL-specific keys of a ``[[pbx]]`` table with ``type = "freeswitch"``."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..configreader import Section
from ..logutil import redact

EVENT_FORMATS = ("plain", "json")
# FreeSWITCH's documented default; refusing to start without a password would be friendlier
# to nobody, but we warn about it (see source.py).
DEFAULT_PASSWORD = "ClueCon"


@dataclass(frozen=True)
class EslSettings:
    host: str = "127.0.0.1"
    port: int = 8021
    password: str = field(default=DEFAULT_PASSWORD, repr=False)
    events_format: str = "plain"
    # Extra `filter <header> <value>` lines sent before subscribing (e.g. one FreeSWITCH
    # domain of several). They must never hide one leg of a call from us.
    filters: tuple[tuple[str, str], ...] = ()
    connect_timeout_seconds: float = 5.0
    reconnect_min_seconds: float = 0.5
    reconnect_max_seconds: float = 30.0
    # FreeSWITCH sends HEARTBEAT every 20 s; this long without any traffic means the TCP
    # connection is dead even if the kernel has not noticed yet. 0 disables.
    heartbeat_timeout_seconds: float = 65.0
    # Channel variable the dialplan sets to inbound/outbound/local on the call leg
    # (FusionPBX: call_direction). Empty: derive the direction from context and numbers.
    direction_variable: str = "call_direction"
    # Optional channel variable naming the agent's extension (e.g. cc_agent, agent_id);
    # empty: the extension the call leg dialled (inbound) or the caller (outbound).
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
        raise section.error("password", "must not be empty (event_socket.conf.xml's password param)")
    events_format = section.str("events_format", "plain", choices=EVENT_FORMATS)
    filters: list[tuple[str, str]] = []
    for i, item in enumerate(section.str_list("filters", [], allow_single=True)):
        header, _, value = item.strip().partition(" ")
        if not header or not value.strip() or "\n" in item or "\r" in item:
            raise section.error(f"filters[{i}]", f'"{item}" is not "<Header-Name> <value>"')
        filters.append((header, value.strip()))
    connect_timeout = section.float("connect_timeout_seconds", 5.0, min=0.1, max=300)
    backoff_min = section.float("reconnect_min_seconds", 0.5, min=0.01, max=3600)
    backoff_max = section.float("reconnect_max_seconds", 30.0, min=0.01, max=3600)
    if backoff_max < backoff_min:
        raise section.error("reconnect_max_seconds", f"must be at least reconnect_min_seconds ({backoff_min:g})")
    heartbeat = section.float("heartbeat_timeout_seconds", 65.0, min=0, max=3600)
    if 0 < heartbeat < 21:
        raise section.error("heartbeat_timeout_seconds",
                            "must be 0 (off) or more than FreeSWITCH's 20 s HEARTBEAT interval")
    direction_variable = section.str("direction_variable", "call_direction", pattern=r"[A-Za-z0-9_]*")
    agent_variable = section.str("agent_variable", "", pattern=r"[A-Za-z0-9_]*")
    section.done()
    return EslSettings(
        host=host,
        port=port,
        password=password,
        events_format=events_format,
        filters=tuple(filters),
        connect_timeout_seconds=connect_timeout,
        reconnect_min_seconds=backoff_min,
        reconnect_max_seconds=backoff_max,
        heartbeat_timeout_seconds=heartbeat,
        direction_variable=direction_variable,
        agent_variable=agent_variable,
    )

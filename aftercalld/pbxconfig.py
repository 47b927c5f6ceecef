"""What the core knows about one PBX connection; the protocol packages add the rest.

`[[pbx]]` tables are read in two steps: the common keys here, then the same `Section` is
handed to the protocol's own parser (`aftercalld.ami.config.parse_settings` or
`aftercalld.esl.config.parse_settings`), which reads its keys and calls `done()`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

PBX_TYPES = ("asterisk", "freeswitch")


@dataclass(frozen=True)
class PbxConfig:
    name: str
    type: str  # "asterisk" | "freeswitch"
    timezone: ZoneInfo
    # Channel variable that carries the department (Asterisk: set with Set(__DEPARTMENT=...)).
    department_variable: str = "DEPARTMENT"
    # Channel variables copied onto CallRecord.variables (usable in rules and templates).
    variables: tuple[str, ...] = ()
    # Calls whose end never arrives are dropped from the tracker after this long.
    call_timeout_seconds: float = 4 * 3600.0
    # Protocol-specific settings object (host, port, credentials, …), or None for replay.
    settings: Any = field(default=None, compare=False)
    # Where the PBX writes its CDRs (an `aftercalld.cdr.config.CdrConfig`), or None: no backfill.
    cdr: Any = field(default=None, compare=False)
    # A call recovered from the CDRs that ended longer ago than this is recorded, not texted.
    backfill_max_age: float = 600.0

    @property
    def backfills_from_cdr(self) -> bool:
        """A call that ended while aftercalld was not connected is then the CDR backfill's
        to record (with what the CDR knows), not the reconciliation's (with what we knew)."""
        return self.cdr is not None


def default_pbx(type_: str, name: str = "replay", timezone: str = "UTC") -> PbxConfig:
    """What `aftercalld replay` uses when no config file is given."""
    return PbxConfig(
        name=name,
        type=type_,
        timezone=ZoneInfo(timezone),
        department_variable="DEPARTMENT" if type_ == "asterisk" else "department",
    )

"""command_status names and what each means for the outbox: retry, slow down, or give up."""
from __future__ import annotations

import enum

from smpplib import consts

ESME_ROK = 0x00
ESME_RINVBNDSTS = 0x04
ESME_RALYBND = 0x05
ESME_RSYSERR = 0x08
ESME_RINVSRCADR = 0x0A
ESME_RINVDSTADR = 0x0B
ESME_RBINDFAIL = 0x0D
ESME_RINVPASWD = 0x0E
ESME_RINVSYSID = 0x0F
ESME_RMSGQFUL = 0x14
ESME_RINVCMDID = 0x03
ESME_RSUBMITFAIL = 0x45
ESME_RTHROTTLED = 0x58
ESME_RX_T_APPN = 0x64
ESME_RDELIVERYFAILURE = 0xFE
ESME_RUNKNOWNERR = 0xFF

_NAMES = {
    value: name[len("SMPP_"):]
    for name, value in vars(consts).items()
    if name.startswith("SMPP_ESME_") and isinstance(value, int)
}


class Verdict(enum.Enum):
    OK = "ok"
    THROTTLED = "throttled"  # pause this session, then retry the same part
    TRANSIENT = "transient"  # retry, possibly on another session
    PERMANENT = "permanent"  # failed(reason): retrying cannot help


THROTTLING = frozenset({ESME_RTHROTTLED, ESME_RMSGQFUL})

# The SMSC's own trouble, or a state ours can repair by re-binding. RSUBMITFAIL is the
# SMSC's catch-all "could not take it now"; aggregators use it for transient routing faults.
TRANSIENT = frozenset({
    ESME_RINVBNDSTS, ESME_RSYSERR, ESME_RSUBMITFAIL, ESME_RX_T_APPN, ESME_RDELIVERYFAILURE,
    ESME_RUNKNOWNERR,
})


def status_name(status: int) -> str:
    """`ESME_RTHROTTLED`, or `0x00000401` for vendor-specific codes."""
    return _NAMES.get(status, f"0x{status:08X}")


def describe(status: int) -> str:
    """For log lines support staff read: name, number and the spec's wording."""
    text = consts.DESCRIPTIONS.get(status)
    base = f"{status_name(status)} (0x{status:02X})"
    return f"{base}: {text}" if text and text != "<Desc Not Set>" else base


def classify(status: int, extra_transient: frozenset[int] = frozenset()) -> Verdict:
    """Unknown and vendor codes are permanent unless configured as transient
    (`transient_statuses`): retrying a rejection forever would hide it from support, while
    a wrongly permanent code shows up as `failed` with its name and can be configured."""
    if status == ESME_ROK:
        return Verdict.OK
    if status in THROTTLING:
        return Verdict.THROTTLED
    if status in TRANSIENT or status in extra_transient:
        return Verdict.TRANSIENT
    return Verdict.PERMANENT

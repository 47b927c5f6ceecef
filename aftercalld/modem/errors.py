"""What a modem's ``+CMS ERROR`` / ``+CME ERROR`` means, and whether retrying can help.

The rule of thumb: an error is *permanent* only when it is about this message (a bad
destination, a barred recipient, a PDU the network will never take). Anything about the
modem, the SIM or the network (no signal, SIM busy, storage full, "operation not
allowed" while the modem is still booting) is *transient*: the text waits in the outbox
until the modem is fit again, and the dispatcher's time-to-live decides when to give up.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# 3GPP TS 27.005 3.2.5: 1–127 are RP causes (TS 24.011 E.2), 128–255 TP-FCS (TS 23.040
# 9.2.3.22), 300+ ME/TA errors. (meaning, permanent)
CMS_ERRORS: dict[int, tuple[str, bool]] = {
    1: ("unassigned (unallocated) number", True),
    8: ("operator determined barring", True),
    10: ("call barred", True),
    17: ("network failure", False),
    21: ("short message transfer rejected (often: no credit on a prepaid SIM, or SMS barred)", False),
    22: ("memory capacity exceeded", False),
    27: ("destination out of service", False),
    28: ("unidentified subscriber", True),
    29: ("facility rejected", True),
    30: ("unknown subscriber", True),
    38: ("network out of order", False),
    41: ("temporary failure", False),
    42: ("congestion", False),
    47: ("resources unavailable", False),
    50: ("requested facility not subscribed", True),
    69: ("requested facility not implemented", True),
    81: ("invalid short message transfer reference value", False),
    95: ("invalid message", True),
    96: ("invalid mandatory information", True),
    97: ("message type non-existent or not implemented", True),
    98: ("message not compatible with short message protocol state", False),
    99: ("information element non-existent or not implemented", True),
    111: ("protocol error", False),
    127: ("interworking error", False),
    128: ("telematic interworking not supported", True),
    129: ("short message type 0 not supported", True),
    130: ("cannot replace short message", True),
    143: ("unspecified TP-PID error", True),
    144: ("data coding scheme (alphabet) not supported", True),
    145: ("message class not supported", True),
    159: ("unspecified TP-DCS error", True),
    160: ("command cannot be actioned", True),
    161: ("command unsupported", True),
    175: ("unspecified TP-Command error", True),
    176: ("TPDU not supported", True),
    192: ("SC busy", False),
    193: ("no SC subscription", True),
    194: ("SC system failure", False),
    195: ("invalid SME address", True),
    196: ("destination SME barred", True),
    197: ("SM rejected: duplicate SM", True),
    198: ("TP-VPF not supported", True),
    199: ("TP-VP not supported", True),
    208: ("SIM SMS storage full", False),
    209: ("no SMS storage capability in SIM", False),
    210: ("error in MS", False),
    211: ("memory capacity exceeded", False),
    212: ("SIM application toolkit busy", False),
    213: ("SIM data download error", False),
    255: ("unspecified error", False),
    300: ("ME failure", False),
    301: ("SMS service of ME reserved", False),
    302: ("operation not allowed (modem not ready?)", False),
    303: ("operation not supported", True),
    304: ("invalid PDU mode parameter", True),
    305: ("invalid text mode parameter", True),
    310: ("SIM not inserted", False),
    311: ("SIM PIN required", False),
    312: ("PH-SIM PIN required", False),
    313: ("SIM failure", False),
    314: ("SIM busy", False),
    315: ("SIM wrong", False),
    316: ("SIM PUK required", False),
    317: ("SIM PIN2 required", False),
    318: ("SIM PUK2 required", False),
    320: ("memory failure", False),
    321: ("invalid memory index", False),
    322: ("memory full", False),
    330: ("SMSC address unknown (set smsc in the config?)", False),
    331: ("no network service", False),
    332: ("network timeout", False),
    340: ("no +CNMA acknowledgement expected", False),
    500: ("unknown error", False),
}

# 3GPP TS 27.007 9.2. None of these is about one message, so all are transient.
CME_ERRORS: dict[int, str] = {
    0: "phone failure",
    1: "no connection to phone",
    3: "operation not allowed",
    4: "operation not supported",
    10: "SIM not inserted",
    11: "SIM PIN required",
    12: "SIM PUK required",
    13: "SIM failure",
    14: "SIM busy",
    15: "SIM wrong",
    16: "incorrect password",
    17: "SIM PIN2 required",
    18: "SIM PUK2 required",
    20: "memory full",
    21: "invalid index",
    22: "not found",
    23: "memory failure",
    30: "no network service",
    31: "network timeout",
    32: "network not allowed, emergency calls only",
    100: "unknown",
}

_FINAL_ERROR = re.compile(r"^\+(CMS|CME) ERROR:\s*(.*)$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    kind: str  # "CMS", "CME" or "ERROR" (a bare ERROR, without AT+CMEE=1)
    code: int | None
    meaning: str
    permanent: bool

    def __str__(self) -> str:
        if self.kind == "ERROR":
            return "ERROR (command rejected, no error code given)"
        if self.code is None:
            return f"+{self.kind} ERROR: {self.meaning}"
        return f"+{self.kind} ERROR: {self.code} ({self.meaning})"


def describe(result_line: str) -> ErrorInfo:
    """Interpret a final error result line: ``+CMS ERROR: 38``, ``+CME ERROR: 10``,
    ``+CME ERROR: SIM PIN required`` (verbose AT+CMEE=2) or a bare ``ERROR``."""
    m = _FINAL_ERROR.match(result_line.strip())
    if not m:
        return ErrorInfo("ERROR", None, "command rejected", False)
    kind, detail = m.group(1).upper(), m.group(2).strip()
    try:
        code = int(detail)
    except ValueError:
        return ErrorInfo(kind, None, detail or "no detail", False)
    if kind == "CMS":
        if code in CMS_ERRORS:
            meaning, permanent = CMS_ERRORS[code]
        elif code >= 512:
            meaning, permanent = "manufacturer-specific error", False
        else:
            meaning, permanent = "unknown error code", False
        return ErrorInfo(kind, code, meaning, permanent)
    return ErrorInfo(kind, code, CME_ERRORS.get(code, "unknown error code"), False)


class ModemError(Exception):
    """Base of what the AT channel raises."""


class CommandError(ModemError):
    """The modem answered a command with an error result."""

    def __init__(self, command: str, result_line: str) -> None:
        self.command = command
        self.result_line = result_line
        self.info = describe(result_line)
        super().__init__(f"{command}: {self.info}")


class CommandTimeout(ModemError):
    """No final result within the time allowed: the modem is hung, or gone."""

    def __init__(self, command: str, timeout: float, lines: list[str] | None = None) -> None:
        self.command = command
        self.lines = lines or []  # what did arrive before the modem fell silent
        super().__init__(f"{command}: no answer within {timeout:g} s")


class PortClosed(ModemError):
    """The serial device went away (USB unplugged, modem reset) or was closed."""

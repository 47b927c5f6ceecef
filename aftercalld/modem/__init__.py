"""GSM modem transport: texts through a USB GSM modem over a serial port (AT commands,
PDU mode), with status reports and replies."""
from __future__ import annotations

from ..transport import Transport
from .config import ModemSettings, parse_settings
from .metrics import register_metrics
from .transport import ModemTransport


def make_transport(settings: ModemSettings, name: str = "modem") -> Transport:
    return ModemTransport(settings, name)


__all__ = ["ModemSettings", "ModemTransport", "make_transport", "parse_settings", "register_metrics"]

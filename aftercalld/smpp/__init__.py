"""SMPP 3.4 transport: binds, window and rate limits, concatenation, receipts, replies."""
from __future__ import annotations

from ..transport import Transport
from .config import SmppSettings, parse_settings
from .receipts import message_id_keys


def make_transport(settings: SmppSettings, name: str = "smpp") -> Transport:
    from .transport import SmppTransport

    return SmppTransport(settings, name)


__all__ = ["SmppSettings", "make_transport", "message_id_keys", "parse_settings"]

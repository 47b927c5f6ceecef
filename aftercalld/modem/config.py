"""The ``[transport]`` table when ``type = "modem"``."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..configreader import Section

BAUD_RATES = (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)


@dataclass(frozen=True, slots=True)
class ModemSettings:
    device: str
    baud: int = 115200
    rtscts: bool = False
    pin: str = field(default="", repr=False)  # secret: never logged
    smsc: str = ""  # empty: keep the SMSC stored on the SIM
    rate_per_minute: float = 6.0  # parts on the wire, not messages
    status_reports: bool = True
    validity_minutes: int = 1440  # 0: let the SC decide
    command_timeout: float = 10.0
    send_timeout: float = 60.0  # AT+CMGS: the network round trip can take this long
    registration_timeout: float = 120.0  # then warn and go on waiting
    poll_interval: float = 30.0  # signal and registration checks when idle
    reopen_max_seconds: float = 60.0  # backoff ceiling for a modem that is gone or hung
    init_commands: tuple[str, ...] = ()

    @property
    def send_interval(self) -> float:
        return 60.0 / self.rate_per_minute

    def describe(self) -> dict[str, object]:
        """For logs and status: everything but the PIN's value."""
        return {
            "device": self.device, "baud": self.baud, "pin": "<set>" if self.pin else "<empty>",
            "smsc": self.smsc or "(SIM default)", "rate_per_minute": self.rate_per_minute,
            "status_reports": self.status_reports,
        }


def parse_settings(section: Section) -> ModemSettings:
    device = section.str("device", nonempty=True)
    if not device.startswith("/"):
        section.report(
            "device", f'"{device}" is not a device path (e.g. /dev/serial/by-id/usb-...-if00 or /dev/ttyUSB0)')
    pin = section.secret("pin", "")
    if pin and not (pin.isdigit() and 4 <= len(pin) <= 8):
        section.report("pin", "must be 4 to 8 digits")
    smsc = section.str("smsc", "", pattern=r"(\+?[0-9]{3,20})?")
    init_commands = section.str_list("init_commands", [])
    for i, cmd in enumerate(init_commands):
        if not cmd.upper().startswith("AT") or any(c in cmd for c in "\r\n\x1a\x1b"):
            section.report(f"init_commands[{i}]", f'"{cmd}" is not a single AT command')
    settings = ModemSettings(
        device=device,
        baud=section.int("baud", 115200),
        rtscts=section.bool("rtscts", False),
        pin=pin,
        smsc=smsc,
        rate_per_minute=section.float("rate_per_minute", 6.0, min=0.1, max=600.0),
        status_reports=section.bool("status_reports", True),
        validity_minutes=section.int("validity_minutes", 1440, min=0, max=63 * 7 * 1440),
        command_timeout=section.float("command_timeout", 10.0, min=0.05, max=300.0),
        send_timeout=section.float("send_timeout", 60.0, min=0.05, max=600.0),
        registration_timeout=section.float("registration_timeout", 120.0, min=0.0, max=3600.0),
        poll_interval=section.float("poll_interval", 30.0, min=0.05, max=3600.0),
        reopen_max_seconds=section.float("reopen_max_seconds", 60.0, min=0.05, max=3600.0),
        init_commands=tuple(init_commands),
    )
    if settings.baud not in BAUD_RATES:
        section.report("baud", f"{settings.baud} is not a serial rate (one of {', '.join(map(str, BAUD_RATES))})")
    section.done()
    return settings

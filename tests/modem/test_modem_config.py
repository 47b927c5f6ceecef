"""The [transport] table for type = "modem", and what +CMS/+CME errors mean."""
from __future__ import annotations

import pytest
from testdata import SHIPPED

from aftercalld.configreader import ConfigError, Section
from aftercalld.modem import parse_settings
from aftercalld.modem.errors import describe


def section(**data):
    return Section(data, "transport", "/etc/aftercalld/aftercalld.toml")


def test_defaults():
    s = parse_settings(section(device="/dev/ttyUSB0"))
    assert (s.baud, s.pin, s.smsc, s.status_reports, s.rate_per_minute) == (115200, "", "", True, 6.0)
    assert s.send_interval == 10.0


def test_every_key():
    s = parse_settings(section(
        device="/dev/serial/by-id/usb-Huawei-if00-port0", baud=9600, rtscts=True, pin="1234",
        smsc="+447785016005", rate_per_minute=2, status_reports=False, validity_minutes=0,
        command_timeout=5, send_timeout=90, registration_timeout=300, poll_interval=60,
        reopen_max_seconds=120, init_commands=["AT^CURC=0"]))
    assert s.baud == 9600 and s.rtscts and s.pin == "1234" and s.init_commands == ("AT^CURC=0",)
    assert "1234" not in repr(s)
    assert s.describe()["pin"] == "<set>"


@pytest.mark.parametrize("data, key, reason", [
    ({}, "transport.device", "missing"),
    ({"device": "ttyUSB0"}, "transport.device", "not a device path"),
    ({"device": "/dev/ttyUSB0", "baud": 12345}, "transport.baud", "not a serial rate"),
    ({"device": "/dev/ttyUSB0", "pin": "12ab"}, "transport.pin", "4 to 8 digits"),
    ({"device": "/dev/ttyUSB0", "smsc": "+44 77"}, "transport.smsc", "expected form"),
    ({"device": "/dev/ttyUSB0", "rate_per_minute": 0}, "transport.rate_per_minute", "at least"),
    ({"device": "/dev/ttyUSB0", "init_commands": ["ATZ\rAT+CFUN=0"]}, "transport.init_commands[0]", "single AT"),
    ({"device": "/dev/ttyUSB0", "baudrate": 9600}, "transport.baudrate", "unknown key"),
])
def test_errors_name_the_key(data, key, reason):
    with pytest.raises(ConfigError) as err:
        parse_settings(section(**data))
    assert err.value.key == key
    assert reason in err.value.reason


def test_wrong_pin_value_is_not_echoed():
    with pytest.raises(ConfigError) as err:
        parse_settings(section(device="/dev/ttyUSB0", pin="98x76"))
    assert "98x76" not in str(err.value)


@pytest.mark.parametrize("line, permanent, text", [
    ("+CMS ERROR: 1", True, "unassigned"),
    ("+CMS ERROR: 38", False, "network out of order"),
    ("+CMS ERROR: 304", True, "invalid PDU mode parameter"),
    ("+CMS ERROR: 330", False, "SMSC address unknown"),
    ("+CMS ERROR: 517", False, "manufacturer-specific"),
    ("+CME ERROR: 10", False, "SIM not inserted"),
    ("+CME ERROR: SIM busy", False, "SIM busy"),
    ("ERROR", False, "rejected"),
])
def test_error_meanings(line, permanent, text):
    info = describe(line)
    assert info.permanent is permanent
    assert text in str(info)


def test_example_fragment_parses():
    import tomllib

    example = SHIPPED / "examples" / "modem.toml"
    data = tomllib.loads(example.read_text())["transport"]
    sec = Section(data, "transport", str(example))
    assert sec.str("type") == "modem"
    settings = parse_settings(sec)
    assert settings.device.startswith("/dev/serial/by-id/")

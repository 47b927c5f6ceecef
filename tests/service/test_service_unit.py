"""The systemd unit is valid and hardened (systemd-analyze verify / security)."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from testdata import SHIPPED

UNIT = SHIPPED / "systemd" / "aftercalld.service"
DROP_IN = UNIT.parent / "aftercalld.service.d" / "modem.conf"

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze not installed (.ci/run installs it)")


def _unit_for_this_machine(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this install's aftercalld, since verify checks
    that the binary exists."""
    exe = shutil.which("aftercalld") or str(Path(sys.executable).with_name("aftercalld"))
    unit = tmp_path / "aftercalld.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/aftercalld", exe))
    return unit


@needs_analyze
def test_unit_verifies(tmp_path):
    unit = _unit_for_this_machine(tmp_path)
    res = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


@needs_analyze
def test_unit_security_exposure_at_most_2_5(tmp_path):
    unit = _unit_for_this_machine(tmp_path)
    res = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)],
                         capture_output=True, text=True)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", res.stdout + res.stderr)
    assert match, res.stdout + res.stderr
    assert float(match.group(1)) <= 2.5


def test_unit_keeps_what_the_daemon_needs():
    text = UNIT.read_text()
    assert "Type=notify" in text and "WatchdogSec=" in text
    families = re.search(r"^RestrictAddressFamilies=(.*)$", text, re.M).group(1).split()
    assert "AF_UNIX" in families  # sd_notify and the journal


def _settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_a_bad_config_stops_the_service_instead_of_restarting_it_forever(tmp_path):
    """Issue 13 item 16: `run` exits 2 on a bad config, and exit 2 of the main process
    prevents the restart. An ExecStartPre check would not: systemd tests only the main
    process's status against RestartPreventExitStatus=."""
    unit = _settings(UNIT.read_text())
    assert unit["RestartPreventExitStatus"] == ["2"]
    assert "ExecStartPre" not in unit
    bad = tmp_path / "bad.toml"
    bad.write_text('[general]\ntimezone = "America"\n')
    res = subprocess.run([sys.executable, "-m", "aftercalld", "run", "-c", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stderr
    assert f"{bad}: general.timezone: " in res.stderr and "Traceback" not in res.stderr


def test_serial_device_access_only_in_the_modem_drop_in():
    unit = _settings(UNIT.read_text())
    modem = _settings(DROP_IN.read_text())
    assert "SupplementaryGroups" not in unit and "DeviceAllow" not in unit
    assert unit["PrivateDevices"] == ["yes"] and unit["DevicePolicy"] == ["closed"]
    assert modem["SupplementaryGroups"] == ["dialout"] and modem["PrivateDevices"] == ["no"]
    assert {"char-ttyUSB rw", "char-ttyACM rw", "char-ttyS rw"} <= set(modem["DeviceAllow"])


@needs_analyze
def test_unit_with_the_modem_drop_in_verifies(tmp_path):
    unit = _unit_for_this_machine(tmp_path)
    drop_in_dir = tmp_path / "aftercalld.service.d"
    drop_in_dir.mkdir()
    (drop_in_dir / "modem.conf").write_text(DROP_IN.read_text())
    res = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr

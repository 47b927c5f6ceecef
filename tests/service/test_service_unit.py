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
    assert "SupplementaryGroups=dialout" in text  # GSM modems
    assert "PrivateDevices=yes" not in text  # would hide /dev/ttyUSB*

"""`aftercalld files`: what the package ships for an install, listed, printed and installed."""
from __future__ import annotations

import subprocess
import sys
import tomllib

from testdata import SHIPPED

from aftercalld.files import SHIPPED as SHIPPED_FILES


def aftercalld(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aftercalld", "files", *args], capture_output=True, text=True)


def test_every_listed_file_is_in_the_package_and_nothing_else_is():
    on_disk = {str(p.relative_to(SHIPPED)) for p in SHIPPED.rglob("*") if p.is_file()}
    assert on_disk == {s.name for s in SHIPPED_FILES}
    listing = aftercalld()
    assert listing.returncode == 0, listing.stderr
    for s in SHIPPED_FILES:
        assert s.name in listing.stdout


def test_prints_a_file_by_its_short_name():
    res = aftercalld("aftercalld.example.toml")
    assert res.returncode == 0, res.stderr
    assert tomllib.loads(res.stdout)["general"]  # the example config itself, parseable
    missing = aftercalld("nope.toml")
    assert missing.returncode == 2 and "no shipped file named 'nope.toml'" in missing.stderr


def test_install_puts_files_in_place_with_this_executable_and_keeps_a_sites_config(tmp_path):
    res = aftercalld("--install", "--root", str(tmp_path))
    assert res.returncode == 0, res.stderr
    config = tmp_path / "etc/aftercalld/aftercalld.toml"
    unit = tmp_path / "etc/systemd/system/aftercalld.service"
    assert (config.stat().st_mode & 0o777) == 0o640  # it will hold secrets
    assert (tmp_path / "usr/lib/sysusers.d/aftercalld.conf").is_file()
    assert (tmp_path / "usr/lib/tmpfiles.d/aftercalld.conf").is_file()
    exec_start = next(line for line in unit.read_text().splitlines() if line.startswith("ExecStart="))
    program = exec_start.split("=", 1)[1].split()[0]
    assert program != "/usr/local/bin/aftercalld" and program.endswith("/aftercalld")
    config.write_text("# the site's own\n")
    again = aftercalld("--install", "--root", str(tmp_path), "--force")
    assert config.read_text() == "# the site's own\n"
    assert f"kept {config} (exists)" in again.stdout
    assert f"installed {unit}" in again.stdout


def test_examples_have_no_place_to_be_installed(tmp_path):
    res = aftercalld("--install", "--root", str(tmp_path), "examples/smpp.toml")
    assert res.returncode == 1 and "example to copy from" in res.stderr

"""The man page and the shell completion come from the argparse definitions: every
command is in both, the page renders cleanly, and bash completes what a user types."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from aftercalld.cli import COMMANDS


def aftercalld(*args: str, env: dict | None = None) -> str:
    res = subprocess.run([sys.executable, "-m", "aftercalld", *args], capture_output=True, text=True,
                         env={**os.environ, **(env or {})})
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_man_page_lists_every_command_and_is_reproducible():
    page = aftercalld("man", env={"SOURCE_DATE_EPOCH": "1796000000"})
    assert page.startswith('.TH AFTERCALLD 1 "2026-11-30"')
    for name in COMMANDS:
        assert f".SS \\fB{name.replace('-', chr(92) + '-')}\\fR" in page, name
    assert page == aftercalld("man", env={"SOURCE_DATE_EPOCH": "1796000000"})


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff not installed")
def test_man_page_renders_without_warnings(tmp_path):
    page = tmp_path / "aftercalld.1"
    page.write_text(aftercalld("man"))
    res = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(page)], capture_output=True, text=True)
    assert res.returncode == 0 and res.stderr == "", res.stderr


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_bash_completes_commands_choices_and_options(tmp_path):
    script = tmp_path / "aftercalld.bash"
    script.write_text(aftercalld("completion", "bash"))

    def complete(*words: str) -> set[str]:
        probe = (f'source {script}; COMP_WORDS=({" ".join(repr(w) for w in words)}); '
                 'COMP_CWORD=$((${#COMP_WORDS[@]}-1)); _aftercalld; printf "%s\\n" "${COMPREPLY[@]}"')
        res = subprocess.run(["bash", "-c", probe], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        return set(res.stdout.split())

    assert complete("aftercalld", "") == set(COMMANDS)
    assert complete("aftercalld", "-c", "x.toml", "dnd", "") == {"add", "remove", "list", "import"}
    assert complete("aftercalld", "report", "--format", "") == {"table", "csv", "json"}
    assert "--older-than" in complete("aftercalld", "prune", "--")
    assert complete("aftercalld", "completion", "z") == {"zsh"}

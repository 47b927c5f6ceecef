"""Fixtures shared by every part of the suite."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from testdata import TRACES


@pytest.fixture(scope="session")
def traces() -> Path:
    """The recorded PBX traces inside the checkout (tests/data/traces)."""
    return TRACES


@pytest.fixture
def python_exe() -> str:
    return sys.executable

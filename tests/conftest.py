"""Fixtures shared by every part of the suite."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TRACES = SHARED / "traces"


@pytest.fixture(scope="session")
def shared_traces() -> Path:
    if not TRACES.is_dir():
        pytest.fail(f"shared traces not found at {TRACES} (the repo must sit beside shared/)")
    return TRACES


@pytest.fixture
def python_exe() -> str:
    return sys.executable

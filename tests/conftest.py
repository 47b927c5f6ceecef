"""Fixtures shared by every part of the suite."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from testdata import TRACES

# The protocol peers (tests/ami/ami_server.py, tests/smpp/smsc_sim.py) import as top-level
# modules, as the test files of their folders import them.
_TESTS = Path(__file__).resolve().parent
sys.path[:0] = [str(_TESTS / "ami"), str(_TESTS / "smpp")]


@pytest.fixture(scope="session")
def traces() -> Path:
    """The recorded PBX traces inside the checkout (tests/data/traces)."""
    return TRACES


@pytest.fixture
async def peers():
    """The repo's AMI test server and SMSC simulator on 127.0.0.1, for one test that runs a
    daemon between them."""
    from ami_server import AmiServer
    from smsc_sim import SmscSim

    ami = await AmiServer().start()
    smsc = SmscSim()
    await smsc.start()
    yield ami, smsc
    await ami.stop()
    await smsc.stop()


@pytest.fixture
def python_exe() -> str:
    return sys.executable


@pytest.fixture(scope="session")
def pg_server():
    """One real PostgreSQL server for the session (tests/pgserver.py)."""
    from pgserver import PgServer, server_programs

    if server_programs() is None:
        pytest.skip("PostgreSQL server programs not found: install Debian's postgresql package")
    server = PgServer().start()
    yield server
    server.remove()


@pytest.fixture
def pg_dsn(pg_server) -> str:
    """The connection string of a fresh, empty database on the session's server."""
    return pg_server.new_database()

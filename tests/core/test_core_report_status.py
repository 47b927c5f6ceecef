"""`aftercalld status`: readable blocks per connection, one time zone, and exit 3 when the
daemon is not running (no status.json, its process gone, or its status stale)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from core_helpers import DEFAULT_RULES, call, write_config

from aftercalld import cli
from aftercalld.config import load
from aftercalld.daemon import STATUS_EVERY_SECONDS, Daemon, make_sources, status_path
from aftercalld.logtransport import LogTransport
from aftercalld.pipeline import CallHandler
from aftercalld.report import EXIT_NOT_RUNNING
from aftercalld.store import Outbox

# Summer in Europe/London: times in the config's zone read BST, an hour after UTC.
STARTED = datetime(2026, 7, 1, 8, 0, tzinfo=UTC).timestamp()
NOW = STARTED + 3600

PBX = '''
[[pbx]]
name = "main"
type = "asterisk"
host = "127.0.0.1"
port = 5038
username = "u"
secret = "s"
'''

# What an SMPP transport's status() holds (aftercalld/smpp/transport.py), for the sessions list.
SMPP_STATUS = {
    "name": "smpp", "type": "smpp", "state": "bound", "bound": 1, "configured": 2,
    "sessions": [
        {"session": 1, "mode": "transceiver", "bound": True, "smsc": "10.0.0.9:2775", "outstanding": 0, "binds": 1},
        {"session": 2, "mode": "transceiver", "bound": False, "smsc": "", "outstanding": 0, "binds": 3},
    ],
    "in_flight": 0, "messages_submitted": 12,
}


def aftercalld(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aftercalld", *args], capture_output=True, text=True)


def daemon_status(config, clock, *, pid: int | None = None) -> dict:
    """The status record a daemon with this config writes, built by the real Daemon and
    AMI source (connected an hour ago, after one refused login), written where it writes it."""
    daemon = Daemon(config, config.file, clock=lambda: STARTED)
    daemon.clock = clock
    daemon.sources = make_sources(config, clock)
    source = daemon.sources[0]
    source.state, source.connected_since, source.last_error = "connected", STARTED + 60, ""
    daemon.transport = LogTransport()
    info = daemon.status()
    info["transport"] = SMPP_STATUS
    if pid is not None:
        info["pid"] = pid
    daemon._write_status(info)
    return info


@pytest.fixture
def config(tmp_path):
    path = write_config(tmp_path, DEFAULT_RULES + PBX)
    config = load(path)
    outbox = Outbox.open(config.outbox_path)
    CallHandler(config, outbox, clock=lambda: STARTED + 120).handle(call(call_id="m1"))
    outbox.close()
    return config


def run_status(capsys, config, *args, now: float = NOW):
    code = cli.main(["status", "-c", config.file, *args], clock=lambda: now)
    return code, capsys.readouterr().out


def test_a_running_daemon_is_shown_in_readable_blocks_in_one_time_zone(config, capsys):
    daemon_status(config, lambda: NOW - 2)
    code, out = run_status(capsys, config)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == (f"daemon: running, pid {os.getpid()}, up since 2026-07-01 09:00:00 BST; "
                        "status of 2026-07-01 09:59:58 BST")
    assert "pbx main (asterisk) at 127.0.0.1:5038: connected since 2026-07-01 09:01:00 BST" in lines
    assert "transport smpp (smpp): bound, 1 of 2 session(s) bound" in lines
    assert "  session 1 transceiver: bound yes, smsc 10.0.0.9:2775, outstanding 0, binds 1" in lines
    assert "  session 2 transceiver: bound no, outstanding 0, binds 3" in lines
    assert "  messages submitted: 12" in lines
    assert "  last call: 2026-07-01 09:02:00 BST" in lines
    # No Python reprs, no epochs, no empty fields, no UTC.
    assert "[{" not in out and "{'" not in out and "1782" not in out
    assert "last error" not in out and "last event" not in out and "+00:00" not in out and "UTC" not in out


def test_json_keeps_the_daemons_record_for_scripts(config, capsys):
    written = daemon_status(config, lambda: NOW - 2)
    code, out = run_status(capsys, config, "--format", "json")
    assert code == 0
    info = json.loads(out)
    assert info["running"] is True and info["not_running"] is None
    assert info["daemon"] == written and info["daemon"]["sources"][0]["connected_since"] == STARTED + 60


def test_a_stale_status_means_not_running(config, capsys):
    daemon_status(config, lambda: NOW - 3 * STATUS_EVERY_SECONDS + 1)
    assert run_status(capsys, config)[0] == 0  # missed fewer than three updates: still running
    daemon_status(config, lambda: NOW - 3 * STATUS_EVERY_SECONDS - 1)
    code, out = run_status(capsys, config)
    assert code == EXIT_NOT_RUNNING == 3
    assert out.startswith("daemon: NOT RUNNING (its status was last written 2026-07-01 09:59:44 BST, 16 s ago: "
                          "it is hung")
    assert json.loads(run_status(capsys, config, "--format", "json")[1])["running"] is False


def test_no_status_file_or_a_dead_pid_exits_3(config):
    res = aftercalld("status", "-c", config.file)
    assert res.returncode == 3, res.stderr
    assert res.stdout.startswith(f"daemon: NOT RUNNING (no {status_path(config)}: it was not started, or stopped)")
    assert "configured: transport log; PBXs: main (asterisk)" in res.stdout

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    daemon_status(config, lambda: NOW, pid=int(gone.stdout))
    res = aftercalld("status", "-c", config.file, "--format", "json")
    assert res.returncode == 3
    assert "is gone: it stopped without cleaning up" in json.loads(res.stdout)["not_running"]


def test_a_status_file_naming_no_process_is_not_a_running_daemon(config, capsys):
    daemon_status(config, lambda: NOW, pid=0)  # kill(0, 0) would succeed: it asks about our own group
    code, out = run_status(capsys, config)
    assert code == EXIT_NOT_RUNNING and f"({status_path(config)} names no process)" in out

"""A real `aftercalld run` with two SMPP transports, the primary down from the start: the
text of a call goes out through the secondary once failover_after has passed, and status
and metrics name each transport."""
from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import sys
import urllib.request

from test_service_daemon import CONFIG, AmiServer, Daemon, SmscSim, trace_bytes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def routed(config: str, primary_port: int, metrics_port: int) -> str:
    """The service tests' config with a dead primary in front of its SMSC."""
    primary = (f'[[transport]]\nname = "primary"\ntype = "smpp"\nhosts = ["127.0.0.1:{primary_port}"]\n'
               'system_id = "esme"\npassword = "secret"\nprobe_interval = 0.1\nfailover_after = 0.5\n\n'
               '[[transport]]\nname = "secondary"\n')
    return (config.replace("[transport]\n", primary)
            + f'\n[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n')


async def test_primary_down_the_daemon_sends_via_the_secondary_and_says_so(tmp_path, traces):
    ami = await AmiServer().start()
    secondary = SmscSim()
    await secondary.start()
    metrics_port = free_port()
    config = tmp_path / "aftercalld.toml"
    config.write_text(routed(CONFIG.format(outbox=tmp_path / "outbox.sqlite3", ami_port=ami.port,
                                           smpp_port=secondary.port, text="Sorry we missed you."),
                             free_port(), metrics_port))
    daemon = await Daemon(config).start()
    try:
        await ami.wait_until(lambda: ami.ok_logins >= 1, timeout=10)
        await ami.send(trace_bytes("inbound_missed_noanswer.ami", traces))
        await secondary.wait_until(lambda: len(secondary.accepted) >= 1, timeout=15)
        await daemon.wait_for_line("transport primary has not been up for 0.5s (failover_after)")
        await daemon.wait_for_line("submitted")
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        assert 'aftercalld_transport_failovers_total{transport="primary"} 1.0' in metrics
        assert 'aftercalld_transport_submitted_total{transport="secondary"} 1.0' in metrics
        assert 'aftercalld_transport_passed_over{transport="primary"} 1.0' in metrics
        # Both SMPP transports in one family each (Prometheus refuses a name twice).
        assert metrics.count("# TYPE aftercalld_smpp_sessions_bound gauge") == 1
        assert 'aftercalld_smpp_sessions_bound{transport="primary"} 0.0' in metrics
        assert 'aftercalld_smpp_sessions_bound{transport="secondary"} 2.0' in metrics
        status = subprocess.run([sys.executable, "-m", "aftercalld", "status", "-c", str(config), "--format", "json"],
                                capture_output=True, text=True)
        assert status.returncode == 0, status.stderr
        transports = json.loads(status.stdout)["daemon"]["transports"]
        assert [(t["name"], t["type"]) for t in transports] == [("primary", "smpp"), ("secondary", "smpp")]
        assert transports[0]["up"] is False and transports[0]["bound"] == 0
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0
    finally:
        await daemon.kill()
        await ami.stop()
        await secondary.stop()
    with sqlite3.connect(tmp_path / "outbox.sqlite3") as db:
        assert db.execute("SELECT state, transport FROM messages").fetchall() == [("submitted", "secondary")]

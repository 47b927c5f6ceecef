"""A running daemon and what an admin does next: a second `run` on the same outbox, a
SIGHUP after editing what a reload cannot apply, Ctrl-C, a metrics port already taken."""
from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ami"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "smpp"))

from daemon_proc import Daemon  # noqa: E402
from smsc_sim import SmscSim  # noqa: E402
from test_service_daemon import write_config  # noqa: E402


async def test_a_second_daemon_on_the_same_outbox_is_refused_naming_the_first(tmp_path, peers):
    config = write_config(tmp_path, *peers)
    first = await Daemon(config).start()
    try:
        await first.wait_for_line("aftercalld running")
        second = await Daemon(config).start()
        assert await second.wait() == 1
        assert f"another aftercalld (pid {first.proc.pid}) is already running on {tmp_path / 'outbox.sqlite3'}" \
            in second.log, second.log
        first.signal(signal.SIGINT)  # Ctrl-C in a terminal
        assert await first.wait() == 0
        assert "SIGINT (Ctrl-C): draining" in first.log and "SIGTERM" not in first.log
    finally:
        await first.kill()
    # The lock goes with the process: the next start is fine.
    again = await Daemon(config).start()
    try:
        await again.wait_for_line("aftercalld running")
    finally:
        again.signal(signal.SIGTERM)
        assert await again.wait() == 0


async def test_sighup_says_which_changes_need_a_restart(tmp_path, peers):
    ami, smsc = peers
    config = write_config(tmp_path, ami, smsc)
    daemon = await Daemon(config).start()
    try:
        await daemon.wait_for_line("aftercalld running")
        text = config.read_text()
        config.write_text(text.replace(f"port = {ami.port}", f"port = {ami.port + 1}", 1))
        daemon.signal(signal.SIGHUP)
        await daemon.wait_for_line("reloaded")
        assert "[[pbx]] 'main' was changed; a reload cannot apply that: it takes effect at the next restart" \
            in daemon.log, daemon.log
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0
    finally:
        await daemon.kill()


async def test_a_metrics_port_in_use_is_named(tmp_path, peers):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, *peers)
        config.write_text(config.read_text() + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
        daemon = await Daemon(config).start()
        assert await asyncio.wait_for(daemon.wait(), 30) == 1
    assert f"cannot serve metrics on 127.0.0.1:{port} ([metrics] listen): Address already in use" in daemon.log


async def test_send_test_fails_fast_with_the_reason_when_the_smsc_cannot_be_bound(tmp_path, peers):
    """It used to wait 30 s through repeated warnings before failing: now one connect and
    bind attempt, then the reason."""
    ami, _ = peers
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead_port = closed.getsockname()[1]  # nothing listens here once the socket is closed
    refusing = SmscSim(password="other")  # our password is wrong for it: bind refused
    await refusing.start()
    try:
        for port, reason in ((dead_port, f"cannot bind to 127.0.0.1:{dead_port}"),
                             (refusing.port, f"bind_transceiver refused by 127.0.0.1:{refusing.port}")):
            config = write_config(tmp_path, ami, refusing)
            config.write_text(config.read_text().replace(f"127.0.0.1:{refusing.port}", f"127.0.0.1:{port}"))
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "aftercalld", "send-test", "09876543210", "-c", str(config),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            _, err = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode == 1, err.decode()
            assert reason in err.decode() and "not sent" in err.decode(), err.decode()
            assert "retrying" not in err.decode()  # no retry loop before the verdict
        assert len(refusing.binds) == 1  # one attempt at the refusing SMSC, not a retry loop
    finally:
        await refusing.stop()

"""The HTTP API of the real `aftercalld run` process: it listens once the daemon is up, a
text queued over it reaches the SMSC simulator, SIGTERM still exits 0, and the token never
reaches the daemon's log."""
from __future__ import annotations

import signal
import sys
from pathlib import Path

import aiohttp
from api_helpers import TOKEN, check_against_document, write_config, write_tokens
from smsc_sim import SmscSim, decode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))
from daemon_proc import Daemon  # noqa: E402


async def test_the_daemon_process_serves_the_api_and_stops_cleanly(tmp_path):
    smsc = SmscSim()
    await smsc.start()
    # Readable by everyone: the daemon starts, and says so.
    write_tokens(tmp_path / "api-tokens", f"crm:{TOKEN}\n", mode=0o644)
    config = write_config(tmp_path, smsc)
    daemon = await Daemon(config).start()
    try:
        await daemon.wait_for_line("HTTP API listening on 127.0.0.1:")
        assert "api.tokens_file: " in daemon.log and "can be read or written by every user" in daemon.log
        port = int(daemon.log.split("HTTP API listening on 127.0.0.1:")[1].split(";")[0])
        headers = {"Authorization": f"Bearer {TOKEN}", "Idempotency-Key": "svc-1"}
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://127.0.0.1:{port}/v1/messages", headers=headers,
                                    json={"to": "+447400123456", "text": "From the CRM."}) as resp:
                body = await resp.json()
                assert resp.status == 201, body
                check_against_document("POST", "/v1/messages", resp.status, body)
            await smsc.wait_until(lambda: len(smsc.accepted) >= 1)
            assert [decode(s.short_message, s.data_coding) for s in smsc.accepted] == ["From the CRM."]
            async with session.get(f"http://127.0.0.1:{port}/v1/status", headers=headers) as resp:
                status = await resp.json()
                assert resp.status == 200 and status["pid"] == daemon.proc.pid
                check_against_document("GET", "/v1/status", resp.status, status)
            async with session.get(f"http://127.0.0.1:{port}/v1/status",
                                   headers={"Authorization": "Bearer not-the-right-token-at-all"}) as resp:
                assert resp.status == 401
        await daemon.wait_for_line("HTTP API: crm queued message 1 to +447400123456")
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0
    finally:
        if daemon.proc.returncode is None:
            daemon.proc.kill()
            await daemon.proc.wait()
        await smsc.stop()
    assert TOKEN not in daemon.log and "not-the-right-token-at-all" not in daemon.log
    assert "Traceback" not in daemon.log

"""A real `aftercalld run` whose SMSC does not answer binds: the PBX is connected at once,
the text of a call that ends meanwhile waits in the outbox and goes when a bind is up."""
from __future__ import annotations

import signal

from test_service_daemon import CONFIG, AmiServer, Daemon, SmscSim, states, texts, trace_bytes


async def test_a_silent_smsc_does_not_hold_back_the_pbx(tmp_path, traces):
    ami = await AmiServer().start()
    smsc = SmscSim(bind_statuses=[None] * 1000)  # every bind left unanswered
    await smsc.start()
    config = tmp_path / "aftercalld.toml"
    # Before, start waited connect_timeout + response_timeout (here 10 + 5 s) for a bind
    # before any PBX connection was opened.
    config.write_text(CONFIG.format(outbox=tmp_path / "outbox.sqlite3", ami_port=ami.port,
                                    smpp_port=smsc.port, text="Sorry we missed you.")
                      .replace("reconnect_max = 0.2\n\n[dispatch]",
                               "reconnect_max = 0.2\nresponse_timeout = 5\nconnect_timeout = 10\n\n[dispatch]"))
    daemon = await Daemon(config).start()
    try:
        await ami.wait_until(lambda: ami.ok_logins >= 1, timeout=4)
        await smsc.wait_until(lambda: len(smsc.binds) >= 1)
        assert not smsc.bound()
        await ami.send(trace_bytes("inbound_missed_noanswer.ami", traces))
        await daemon.wait_for_line("queued", timeout=5)
        assert smsc.accepted == []

        smsc.bind_statuses = []  # the SMSC comes back: the next bind is answered
        await smsc.wait_until(lambda: len(smsc.accepted) >= 1, timeout=15)
        assert texts(smsc) == [("919876543210", "Sorry we missed you.")]
        await daemon.wait_for_line("submitted")
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0
    finally:
        await daemon.kill()
        await ami.stop()
        await smsc.stop()
    assert states(tmp_path) == {"submitted": 1}

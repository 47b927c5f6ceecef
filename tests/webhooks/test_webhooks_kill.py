"""A real `aftercalld run` killed with SIGKILL while webhook deliveries wait and are in
flight: after a restart every event reaches the receiver (0 lost); the duplicates that
at-least-once allows carry the same event id."""
from __future__ import annotations

import collections
import signal
import sys
from pathlib import Path

from receiver import Receiver
from smsc_sim import SmscSim

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))
from daemon_proc import Daemon  # noqa: E402

SECRET = "kill-test-secret-0123456789abcdef"

CONFIG = '''
[general]
timezone = "Europe/London"
default_region = "GB"
outbox = "{outbox}"

[transport]
type = "smpp"
hosts = ["127.0.0.1:{smpp_port}"]
system_id = "esme"
password = "secret"
reconnect_min = 0.05
reconnect_max = 0.2

[[webhook]]
name = "crm"
url = "{url}"
secret_file = "{secret_file}"
events = ["reply.received"]
retry_initial_seconds = 0.05
retry_max_seconds = 0.2
concurrency = 8
'''

REPLIES = 200


async def test_no_webhook_delivery_is_lost_across_kill_9(tmp_path):
    sim = SmscSim()
    await sim.start()
    receiver = await Receiver(SECRET.encode(), default=503).start()  # failing while the daemon lives
    (tmp_path / "secret").write_text(SECRET + "\n")
    config = tmp_path / "aftercalld.toml"
    config.write_text(CONFIG.format(outbox=tmp_path / "outbox.sqlite3", smpp_port=sim.port, url=receiver.url,
                                    secret_file=tmp_path / "secret"))
    daemon = await Daemon(config).start()
    try:
        await sim.wait_until(lambda: len(sim.bound()) >= 1, timeout=20)
        for i in range(REPLIES):
            # An answer of 0 means the reply and its webhook row are committed.
            assert await sim.send_mo(f"4474001{i:05d}", f"reply number {i}") == 0
        await receiver.wait_until(lambda: len(receiver.received) >= REPLIES, timeout=20)
        daemon.signal(signal.SIGKILL)
        assert await daemon.wait() == -signal.SIGKILL
        assert receiver.accepted() == []
        assert SECRET not in daemon.log

        receiver.default = 200
        daemon = await Daemon(config).start()
        await receiver.wait_until(lambda: len({e["id"] for e in receiver.accepted()}) >= REPLIES, timeout=30)
        accepted = receiver.accepted()
        texts = {e["data"]["text"] for e in accepted}
        assert texts == {f"reply number {i}" for i in range(REPLIES)}  # 0 lost
        per_id = collections.Counter(e["id"] for e in accepted)
        by_text = collections.defaultdict(set)
        for e in accepted:
            by_text[e["data"]["text"]].add(e["id"])
        assert all(len(ids) == 1 for ids in by_text.values())  # a duplicate is the same event
        assert receiver.bad_signatures == 0
        print(f"kill -9: {REPLIES} events, 0 lost, {sum(per_id.values()) - len(per_id)} duplicate(s)")
    finally:
        await daemon.kill()
        await receiver.stop()
        await sim.stop()

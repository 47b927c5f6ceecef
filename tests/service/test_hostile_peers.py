"""The real `aftercalld run` against peers that misbehave as an attacker or a broken PBX
would, over real sockets: a line with no end, a 4 GB length field, junk after login or
bind, endless calls that never hang up. Each time the daemon says what happened in one
clear (escaped) log line, keeps its memory bounded, and recovers.
"""
from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS / "ami"), str(TESTS / "esl"), str(TESTS / "smpp")]

from ami_server import AmiServer  # noqa: E402
from daemon_proc import Daemon  # noqa: E402

AMI_CONFIG = """
[general]
timezone = "Asia/Kolkata"
default_region = "IN"
outbox = "{outbox}"

[[pbx]]
name = "main"
type = "asterisk"
host = "127.0.0.1"
port = {port}
username = "aftercalld"
secret = "test"
ping_interval = 1
reconnect_min = 0.05
reconnect_max = {reconnect_max}

[transport]
type = "log"

[[rules]]
name = "Missed"
recipients = ["caller"]
when = {{ status = ["missed", "voicemail"] }}
caller = {{ text = "Sorry we missed you.", sender = "ACME" }}
"""


def trace_bytes(name: str, traces: Path) -> bytes:
    raw = (traces / "asterisk" / name).read_bytes()
    return b"\r\n".join(line for line in raw.split(b"\r\n") if not line.startswith(b"#"))


def ami_config(tmp_path: Path, ami: AmiServer, reconnect_max: float = 0.2) -> Path:
    path = tmp_path / "aftercalld.toml"
    path.write_text(AMI_CONFIG.format(outbox=tmp_path / "outbox.sqlite3", port=ami.port,
                                      reconnect_max=reconnect_max))
    return path


async def test_ami_greeting_without_a_line_end_is_logged_and_the_source_reconnects(tmp_path, traces):
    """Issue 13 item 2: 300 KiB without a newline where the banner should be made
    readline() raise ValueError, which ended the source's task without a word, for good."""
    ami = await AmiServer().start()
    ami.greetings.append(b"\x1b[31mA" * (300 * 1024 // 6))
    daemon = await Daemon(ami_config(tmp_path, ami)).start()
    try:
        await daemon.wait_for_line("not an AMI server (no banner:")
        line = next(x for x in daemon.log.splitlines() if "no banner" in x)
        assert "bytes without a line end" in line and "\x1b" not in line
        await ami.wait_until(lambda: ami.ok_logins >= 1)  # the next connection meets a sane server
        await daemon.wait_for_line("AMI main: connected to")
        await ami.send(trace_bytes("inbound_missed_noanswer.ami", traces))
        await daemon.wait_for_line("dry run: would send")
    finally:
        await daemon.kill()
        await ami.stop()

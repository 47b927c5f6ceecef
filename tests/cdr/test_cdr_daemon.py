"""Backfill through the real `aftercalld run` process: Master.csv is appended while the
daemon runs and the AMI link drops; the calls come out of the CDR as texts on the SMSC.
Restarted later, it reads only what was written meanwhile, and texts none of it when it
is older than backfill_max_age.

The CDR rows are the recorded Asterisk 22.10.1 rows (tests/data/traces/asterisk-actions/
Master.csv) moved in time to just before the moment they are written, with new ids and
Indian caller numbers; the daemon reads the system clock, and so does this test to place
them, so nothing here depends on the date."""
from __future__ import annotations

import csv
import io
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS / "ami"), str(TESTS / "smpp"), str(TESTS / "service")]

from smsc_sim import SmscSim, decode  # noqa: E402
from test_service_daemon import Daemon  # noqa: E402

CONFIG = """
[general]
timezone = "UTC"
default_region = "IN"
outbox = "{outbox}"

[[pbx]]
name = "main"
type = "asterisk"
timezone = "UTC"
host = "127.0.0.1"
port = {ami_port}
username = "aftercalld"
secret = "test"
ping_interval = 1
reconnect_min = 0.05
reconnect_max = 0.2
cdr = "{cdr}"

[transport]
type = "smpp"
hosts = ["127.0.0.1:{smpp_port}"]
system_id = "esme"
password = "secret"
reconnect_min = 0.05
reconnect_max = 0.2

[[rules]]
name = "Missed"
recipients = ["caller"]
when = {{ status = "missed", direction = "inbound" }}
caller = {{ text = "Sorry we missed you.", sender = "ACME" }}

[[rules]]
name = "Connected"
recipients = ["caller"]
when = {{ status = "connected", direction = "inbound" }}
caller = {{ text = "Thanks for calling.", sender = "ACME" }}
"""
CALLERS = {"2025550191": "9876500191", "2025550192": "9876500192", "2025550193": "9876500193"}
FORMAT = "%Y-%m-%d %H:%M:%S"


def shifted_calls(traces: Path, ended_at: float, id_prefix: str) -> str:
    """The recorded CDR rows, the last call ending at `ended_at`, ids 1796469765.N → prefix.N."""
    rows = list(csv.reader((traces / "asterisk-actions" / "Master.csv").open(newline="")))
    last_end = max(datetime.strptime(r[11], FORMAT).replace(tzinfo=UTC).timestamp() for r in rows)
    delta = int(ended_at - last_end)
    out = io.StringIO()
    for row in rows:
        for i in (9, 10, 11):
            if row[i]:
                moved = datetime.strptime(row[i], FORMAT).replace(tzinfo=UTC).timestamp() + delta
                row[i] = datetime.fromtimestamp(moved, UTC).strftime(FORMAT)
        for i in (16, 19):
            row[i] = row[i].replace("1796469765.", f"{id_prefix}.")
        line = ",".join(f'"{v}"' for v in row)
        for old, new in CALLERS.items():
            line = line.replace(old, new)
        out.write(line + "\n")
    return out.getvalue()



def texts(smsc: SmscSim) -> list[tuple[str, str]]:
    return sorted((s.destination, decode(s.short_message, s.data_coding)) for s in smsc.accepted)


async def test_calls_written_to_master_csv_during_a_link_loss_are_texted_and_old_ones_are_not(tmp_path, peers, traces):
    ami, smsc = peers
    master = tmp_path / "cdr-csv" / "Master.csv"
    master.parent.mkdir()
    master.write_text(shifted_calls(traces, time.time() - 86400, "1700000000"))  # yesterday's
    config = tmp_path / "aftercalld.toml"
    config.write_text(CONFIG.format(outbox=tmp_path / "outbox.sqlite3", ami_port=ami.port, smpp_port=smsc.port,
                                    cdr=master))
    daemon = await Daemon(config).start()
    try:
        await daemon.wait_for_line("CDR backfill starts from now")
        await ami.wait_until(lambda: ami.ok_logins >= 1)
        # One run at start, one when the link came up: neither texts yesterday's calls.
        await daemon.wait_for_line("backfilled 0 call(s) from CDR", count=2)

        # The link drops; meanwhile the PBX finishes four calls and writes their CDRs.
        ami.drop_clients()
        with master.open("a") as f:
            f.write(shifted_calls(traces, time.time() - 5, "1800000000"))
        await ami.wait_until(lambda: ami.ok_logins >= 2)
        await daemon.wait_for_line("backfilled 4 call(s) from CDR, 0 too old to text")
        await smsc.wait_until(lambda: len(smsc.accepted) >= 3)
        assert texts(smsc) == [("919876500191", "Thanks for calling."), ("919876500192", "Sorry we missed you."),
                               ("919876500193", "Thanks for calling.")]
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0

        # Down for an hour: the calls of that hour are recorded at the next start, not texted.
        with master.open("a") as f:
            f.write(shifted_calls(traces, time.time() - 3600, "1900000000"))
        daemon = await Daemon(config).start()
        await daemon.wait_for_line("backfilled 4 call(s) from CDR, 4 too old to text")
        await ami.wait_until(lambda: ami.ok_logins >= 3)
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0
        assert len(smsc.accepted) == 3
        assert "CDR backfill starts from now" not in daemon.log  # it went on from where it stopped
    finally:
        await daemon.kill()

    res = subprocess.run([sys.executable, "-m", "aftercalld", "why", "-c", str(config), "1900000000.36"],
                         capture_output=True, text=True)
    out = res.stdout
    assert res.returncode == 0, res.stderr
    assert "(backfilled from the PBX's CDR)" in out and "backfilled call older than backfill_max_age" in out

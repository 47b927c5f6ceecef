"""Failover: the primary SMSC dies mid-run, every text still goes out, via the secondary.

A real `aftercalld run` process with two `[[transport]]` SMPP tables ("primary",
"secondary"; no routes: every text may use both, primary first) sits between the AMI test
server and two SMSC simulators, all three in this process so one clock measures every end.
Calls (the recorded `inbound_missed_noanswer.ami` trace, fresh ids and numbers) arrive at
`--rate`; once the primary has taken `--kill-after` texts it is killed: its listening
socket and links close at once, as when its process dies. Target (issue 18): all texts
go out, counted on the SMSC sides, those after the kill via the secondary within
`failover_after` seconds.

Texts that were on the wire to the primary when it died (taken, never answered) are sent
again once the transport gives up on them, after at most its `response_timeout`: set
`response_timeout` no longer than `failover_after` to have those fail over in time too.

    python bench/failover.py [--texts 2000] [--rate 200] [--kill-after 1000]
                             [--failover-after 5] [--response-timeout 5]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "ami"), str(REPO / "tests" / "smpp"), str(REPO / "bench")]

from ami_server import AmiServer  # noqa: E402
from e2e import call_template  # noqa: E402
from smsc_sim import SmscSim, parse_submit  # noqa: E402

CONFIG = """
[general]
timezone = "UTC"
default_region = "IN"
outbox = "{outbox}"
log_level = "warning"
[metrics]
listen = "127.0.0.1:{metrics_port}"
[[pbx]]
name = "bench"
type = "asterisk"
port = {ami_port}
username = "aftercalld"
secret = "test"
[[transport]]
name = "primary"
type = "smpp"
hosts = ["127.0.0.1:{primary_port}"]
system_id = "esme"
password = "secret"
window = 10
response_timeout = {response_timeout}
failover_after = {failover_after}
[[transport]]
name = "secondary"
type = "smpp"
hosts = ["127.0.0.1:{secondary_port}"]
system_id = "esme"
password = "secret"
window = 10
response_timeout = {response_timeout}
failover_after = {failover_after}
[[rules]]
name = "Missed"
recipients = ["caller"]
when = {{ status = "missed" }}
caller = {{ text = "Sorry we missed your call. We will call you back.", sender = "ACME" }}
"""


class TimedSmsc(SmscSim):
    """Notes when each destination's submit arrived (the answer may never go out)."""

    def __init__(self, response_delay: float = 0.0) -> None:
        super().__init__(response_delay=response_delay)
        self.arrivals: dict[str, float] = {}

    def _submit(self, conn, seq, body):  # noqa: ANN001 - the simulator's hook
        self.arrivals.setdefault(parse_submit(body).destination, time.perf_counter())
        super()._submit(conn, seq, body)


def taken(sim: SmscSim) -> set[str]:
    """Destinations the SMSC accepted (answered ESME_ROK)."""
    return {s.destination for s in sim.accepted}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[tuple[str, str], float]:
    """aftercalld_transport_* samples by (metric, transport)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("aftercalld_transport_") and 'transport="' in line:
            name, _, rest = line.partition("{")
            transport = rest.split('transport="', 1)[1].split('"', 1)[0]
            out[(name, transport)] = float(line.rsplit(" ", 1)[1])
    return out


async def main(texts: int, rate: float, kill_after: int, failover_after: float, response_timeout: float,
               primary_delay: float) -> None:
    head, tail = call_template()
    ami = await AmiServer().start()
    primary, secondary = TimedSmsc(primary_delay), TimedSmsc()
    await primary.start()
    await secondary.start()
    metrics_port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        outbox = Path(tmp) / "outbox.sqlite3"
        config = Path(tmp) / "bench.toml"
        config.write_text(CONFIG.format(outbox=outbox, metrics_port=metrics_port, ami_port=ami.port,
                                        primary_port=primary.port, secondary_port=secondary.port,
                                        failover_after=failover_after, response_timeout=response_timeout))
        daemon = await asyncio.create_subprocess_exec(sys.executable, "-m", "aftercalld.cli", "run", "-c", str(config),
                                                      env={**os.environ, "PYTHONPATH": str(REPO)})
        killed_at = 0.0
        try:
            await ami.wait_until(lambda: ami.ok_logins >= 1, timeout=30)
            await primary.wait_until(lambda: len(primary.bound()) >= 1, timeout=30)
            await secondary.wait_until(lambda: len(secondary.bound()) >= 1, timeout=30)
            sent_at: dict[str, float] = {}

            async def kill_primary() -> None:
                nonlocal killed_at
                await primary.wait_until(lambda: primary.accepted_count >= kill_after, timeout=120)
                killed_at = time.perf_counter()
                await primary.stop()

            killer = asyncio.create_task(kill_primary())
            interval = 1.0 / rate
            began = time.perf_counter()
            for k in range(texts):
                number = f"98{k:08d}"
                uid_prefix = f"{1900000000 + k}.".encode()
                call = (head + tail).replace(b"1796012888.", uid_prefix).replace(b"9876543210", number.encode())
                sent_at["91" + number] = time.perf_counter()
                await ami.send(call)
                await asyncio.sleep(max(0.0, began + (k + 1) * interval - time.perf_counter()))
            await killer

            def everything_out() -> bool:
                return len(taken(primary) | taken(secondary)) >= texts

            await secondary.wait_until(everything_out, timeout=120 + 2 * failover_after)
            finished = time.perf_counter()
            counted = scrape(metrics_port)
        finally:
            daemon.terminate()
            await daemon.wait()
            await ami.stop()
            await secondary.stop()
            if not killed_at:
                await primary.stop()
        with sqlite3.connect(outbox) as db:
            by_transport = dict(db.execute("SELECT transport, COUNT(*) FROM messages WHERE state = 'submitted' "
                                           "GROUP BY transport").fetchall())
    on_primary, on_secondary = taken(primary), taken(secondary)
    after_kill = [n for n, t in sent_at.items() if t >= killed_at]
    waits = sorted(secondary.arrivals[n] - max(sent_at[n], killed_at) for n in on_secondary)
    print(f"texts: {texts} at {rate:g} calls/s; primary killed after {primary.accepted_count} texts, "
          f"{killed_at - began:.1f} s into the run; failover_after {failover_after:g} s, "
          f"response_timeout {response_timeout:g} s")
    unanswered = set(primary.arrivals) - on_primary
    print(f"on the SMSCs: primary {len(on_primary)}, secondary {len(on_secondary)}, "
          f"both {len(on_primary & on_secondary)}, distinct {len(on_primary | on_secondary)} of {texts}; "
          f"{texts - len(on_primary | on_secondary)} lost; {len(unanswered)} on the primary's wire unanswered "
          f"when it died, {len(unanswered & on_secondary)} of them sent again via the secondary")
    print(f"outbox (submitted, by transport): {by_transport}")
    print(f"first text on the secondary {min(secondary.arrivals[n] for n in on_secondary) - killed_at:.2f} s "
          f"after the kill; "
          f"all out {finished - killed_at:.2f} s after it ({len(after_kill)} calls ended after the kill)")
    if waits:
        q = statistics.quantiles(waits, n=100) if len(waits) > 1 else waits * 99
        print(f"secondary: wait from the kill (or the call's end, if later) to its submit_sm: "
              f"p50 {q[49]:.2f} s, p99 {q[98]:.2f} s, max {waits[-1]:.2f} s")
    print("metrics: " + ", ".join(f"{name.removeprefix('aftercalld_transport_')}{{{transport}}} {value:g}"
                                  for (name, transport), value in sorted(counted.items())))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=200.0, help="calls per second")
    parser.add_argument("--kill-after", type=int, default=1000, help="texts the primary takes before it dies")
    parser.add_argument("--failover-after", type=float, default=5.0)
    parser.add_argument("--response-timeout", type=float, default=5.0)
    parser.add_argument("--primary-delay", type=float, default=0.0,
                        help="the primary answers each submit_sm this late: texts on its wire when it dies")
    args = parser.parse_args()
    asyncio.run(main(args.texts, args.rate, args.kill_after, args.failover_after, args.response_timeout,
                     args.primary_delay))

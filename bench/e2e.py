"""End to end: the last Hangup on the AMI wire → the submit_sm on the SMSC's wire.

A real `aftercalld run` process sits between a test AMI server and the SMSC simulator (both
in this process, so one clock measures both ends). Each call is the recorded
`inbound_missed_noanswer.ami` trace with fresh ids and a fresh caller number; everything up
to the call's last Hangup is sent first, then the rest, and the clock starts when the last
Hangup is written. Target (issue 3/4): p50 ≤ 5 ms, p99 ≤ 15 ms at 50 calls/s, grace
periods included. A dialplan hangup handler that curls Kannel measured p50 12 ms.

    python bench/e2e.py [--calls 1000] [--rate 50]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "ami"), str(REPO / "tests" / "smpp")]

from ami_server import AmiServer  # noqa: E402
from smsc_sim import SmscSim, parse_submit  # noqa: E402

TRACE = REPO / "tests" / "data" / "traces" / "asterisk" / "inbound_missed_noanswer.ami"
SAMPLE = REPO / "aftercalld" / "samples" / "traces" / "mixed_concurrent.ami"

CONFIG = """
[general]
timezone = "UTC"
default_region = "IN"
outbox = "{outbox}"
log_level = "warning"
[[pbx]]
name = "bench"
type = "asterisk"
port = {ami_port}
username = "aftercalld"
secret = "test"
[transport]
type = "smpp"
hosts = ["127.0.0.1:{smpp_port}"]
system_id = "esme"
password = "secret"
window = 10
[[rules]]
name = "Missed"
recipients = ["caller"]
when = {{ status = "missed" }}
caller = {{ text = "Sorry we missed your call. We will call you back.", sender = "ACME" }}
"""


def call_template() -> tuple[bytes, bytes]:
    """The trace as (everything before the last Hangup, the last Hangup onwards)."""
    raw = TRACE.read_bytes()
    data = b"\r\n".join(line for line in raw.split(b"\r\n") if not line.startswith(b"#"))
    blocks = [b for b in data.split(b"\r\n\r\n") if b.strip() and not b.startswith(b"Event: FullyBooted")]
    last = max(i for i, b in enumerate(blocks) if b.startswith(b"Event: Hangup"))
    head = b"".join(b + b"\r\n\r\n" for b in blocks[:last])
    tail = b"".join(b + b"\r\n\r\n" for b in blocks[last:])
    return head, tail


class TimedSmsc(SmscSim):
    def __init__(self) -> None:
        super().__init__()
        self.arrivals: dict[str, float] = {}

    def _submit(self, conn, seq, body):  # noqa: ANN001 - the simulator's hook
        self.arrivals[parse_submit(body).destination] = time.perf_counter()
        super()._submit(conn, seq, body)


async def main(calls: int, rate: float) -> None:
    head, tail = call_template()
    ami = await AmiServer().start()
    smsc = TimedSmsc()
    await smsc.start()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.toml"
        config.write_text(CONFIG.format(outbox=Path(tmp) / "outbox.sqlite3", ami_port=ami.port, smpp_port=smsc.port))
        daemon = await asyncio.create_subprocess_exec(sys.executable, "-m", "aftercalld.cli", "run", "-c", str(config),
                                                      env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            await ami.wait_until(lambda: ami.ok_logins >= 1, timeout=30)
            await smsc.wait_until(lambda: len(smsc.bound()) >= 1, timeout=30)
            sent_at: dict[str, float] = {}
            interval = 1.0 / rate
            began = time.perf_counter()
            for k in range(calls):
                uid_prefix = f"{1900000000 + k}.".encode()
                number = f"98{k:08d}"
                def fresh(b: bytes, uid_prefix: bytes = uid_prefix, number: str = number) -> bytes:
                    return b.replace(b"1796012888.", uid_prefix).replace(b"9876543210", number.encode())

                await ami.send(fresh(head))
                await asyncio.sleep(0.01)  # let the daemon take in the call so far
                sent_at["91" + number] = time.perf_counter()
                await ami.send(fresh(tail))
                next_at = began + (k + 1) * interval
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            await smsc.wait_until(lambda: len(smsc.arrivals) >= calls, timeout=60)
            elapsed = time.perf_counter() - began
        finally:
            daemon.terminate()
            await daemon.wait()
            await ami.stop()
            await smsc.stop()
    latencies = sorted((smsc.arrivals[n] - t) * 1000 for n, t in sent_at.items())
    q = statistics.quantiles(latencies, n=100)
    print(f"calls: {calls} at {rate:g}/s over {elapsed:.1f} s; texts on the SMSC: {len(smsc.arrivals)}")
    print(f"last Hangup → submit_sm latency: p50 {q[49]:.2f} ms, p90 {q[89]:.2f} ms, "
          f"p99 {q[98]:.2f} ms, max {latencies[-1]:.2f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=50.0)
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.rate))

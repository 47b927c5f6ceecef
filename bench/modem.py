#!/usr/bin/env python3
"""Modem transport overhead. A real modem takes a few texts a minute, so these figures only
show that aftercalld's side is never the bottleneck:

  (a) PDU encoding and decoding (aftercalld/modem/pdu.py), parts/s, for a single GSM 7-bit
      text, a 3-part GSM 7-bit text and a UCS-2 text;
  (b) AT round trips through a pseudo-terminal to the modem simulator
      (tests/modem/modem_sim.py) running in its own process: parts/s with no send rate,
      i.e. AT+CMGS, prompt, PDU, +CMGS answer, per part.

    /work/venv/bin/python bench/modem.py [--count 2000] [--parts 500]
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "modem"))

from modem_helpers import RecordingEvents, fast_settings, message  # noqa: E402

from aftercalld.model import Encoding  # noqa: E402
from aftercalld.modem import make_transport, pdu  # noqa: E402
from aftercalld.rules.encoding import split_segments  # noqa: E402

SIM_MAIN = """
import asyncio, sys
from pathlib import Path
sys.path[:0] = [{root!r}, {tests!r}]
from modem_sim import ModemSim

async def main():
    sim = ModemSim(Path({link!r}))
    sim.plug()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


def bench_pdu(count: int) -> None:
    cases = {
        "gsm7, 1 part": ("Sorry we missed your call. We will ring you back. 5€ [ACME]", Encoding.GSM7),
        "gsm7, 3 parts": ("Sorry we missed your call, we will ring you back shortly. " * 7, Encoding.GSM7),
        "ucs2, 1 part": ("Мы пропустили ваш звонок 📞 перезвоним!", Encoding.UCS2),
    }
    print(f"(a) PDU codec, {count} messages per case")
    for name, (text, enc) in cases.items():
        pieces = split_segments(text, enc)
        t0 = time.perf_counter()
        for i in range(count):
            parts = pdu.build_message("+447700900123", pieces, enc, reference=i, status_report=True,
                                      validity_minutes=1440)
        t1 = time.perf_counter()
        for _ in range(count):
            for p in parts:
                pdu.decode_submit(p.hex, p.tpdu_length)
        t2 = time.perf_counter()
        n = count * len(parts)
        print(f"    {name:14s}: encode {n / (t1 - t0):>9,.0f} parts/s   decode {n / (t2 - t1):>9,.0f} parts/s")


async def bench_at(parts: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        link = Path(tmp) / "ttyUSB-bench"
        code = SIM_MAIN.format(root=str(ROOT), tests=str(ROOT / "tests" / "modem"), link=str(link))
        proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            transport = make_transport(fast_settings(link, command_timeout=5.0, send_timeout=5.0,
                                                     poll_interval=60.0, rate_per_minute=1e9), name="bench")
            await transport.start(RecordingEvents())
            t0 = time.perf_counter()
            sent = 0
            while sent < parts:
                outcome = await transport.send(message(f"bench text {sent}"))
                assert outcome.kind.value == "submitted", outcome
                sent += 1
            elapsed = time.perf_counter() - t0
            long_text = "x" * 450
            t1 = time.perf_counter()
            for _ in range(parts // 3):
                assert (await transport.send(message(long_text))).kind.value == "submitted"
            elapsed_long = time.perf_counter() - t1
            await transport.close()
        finally:
            if proc.stdin:
                proc.stdin.close()
            proc.wait(10)
    print("(b) AT over a pty, simulator in its own process, no send rate")
    print(f"    single-part texts : {parts / elapsed:>7,.0f} parts/s ({elapsed / parts * 1000:.2f} ms per text: "
          f"AT+CMGF? check and AT+CMGS round trip)")
    print(f"    3-part texts      : {3 * (parts // 3) / elapsed_long:>7,.0f} parts/s")
    print("    a real modem      :       0.1-1 parts/s (rate_per_minute default 6)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--parts", type=int, default=500)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpu(s)")
    bench_pdu(args.count)
    asyncio.run(bench_at(args.parts))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""SMPP throughput on loopback against the simulator (tests/smpp/smsc_sim.py, run in its own
process so it does not share a core with the client):

  (a) a bare smpplib loop: bind_transmitter, a listener thread, send as fast as it goes
      (optionally with a window enforced by a semaphore), no persistence;
  (b) aftercalld: messages queued in the SQLite outbox, the real Dispatcher claiming them
      and recording every state change durably, the SMPP transport submitting them.

For each window size it prints submits/s for both, the ratio b/a, and how many SQLite
transactions (b) used: to claim messages, and to write outcomes (and receipts). Column (c)
is the SMPP transport alone, without the outbox, to show where the rest of (b) goes.

    /work/venv/bin/python bench/smpp.py [--count 20000] [--windows 1,10,50] [--receipts]
                                         [--synchronous normal|full]

`--slow-smsc` instead runs the fidelity case of an SMSC slower than response_timeout
(answers after 2 s, response_timeout = 1, window 10; 20 messages, half of them 2 parts)
through the outbox and dispatcher, and prints how many submits the SMSC accepted per
message and part (the README promises at most two copies; the aim is one).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "smpp"))

from smpp_util import enqueue, settings  # noqa: E402

from aftercalld.config import DispatchConfig  # noqa: E402
from aftercalld.dispatcher import Dispatcher  # noqa: E402
from aftercalld.model import MessageState  # noqa: E402
from aftercalld.smpp import make_transport  # noqa: E402
from aftercalld.store import Outbox  # noqa: E402


class Simulator:
    def __init__(self, receipts: bool = False) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "smpp" / "smsc_sim.py"), "--port", "0"]
            + (["--receipts"] if receipts else []),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            raise SystemExit(f"simulator did not start: {line!r}")
        self.port = int(line.split()[1])

    def stop(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


def bare_smpplib(port: int, count: int, window: int | None) -> float:
    """Submits per second for a plain smpplib client; window None = no limit at all."""
    import smpplib.client
    import smpplib.consts

    warnings.simplefilter("ignore", DeprecationWarning)
    client = smpplib.client.Client("127.0.0.1", port, allow_unknown_opt_params=True)
    done = threading.Event()
    got = 0
    gate = threading.Semaphore(window) if window else None

    def sent(pdu, **kw):
        nonlocal got
        got += 1
        if gate:
            gate.release()
        if got == count:
            done.set()

    client.set_message_sent_handler(sent)
    client.set_error_pdu_handler(lambda pdu: sent(pdu))
    client.connect()
    client.bind_transmitter(system_id="esme", password="secret")

    def listen() -> None:
        try:
            while not done.is_set():
                client.read_once()
        except Exception:
            done.set()

    reader = threading.Thread(target=listen, daemon=True)
    reader.start()
    started = time.perf_counter()
    for i in range(count):
        if gate:
            gate.acquire()
        client.send_message(source_addr_ton=5, source_addr="ACME", dest_addr_ton=1, dest_addr_npi=1,
                            destination_addr=f"447700900{i % 1000:03d}", short_message=b"Sorry we missed your call",
                            data_coding=0, registered_delivery=1)
    done.wait(120)
    elapsed = time.perf_counter() - started
    if got != count:
        raise SystemExit(f"smpplib: only {got}/{count} responses")
    try:
        client.unbind()
    except Exception:
        pass
    client.disconnect()
    return count / elapsed


async def aftercalld_durable(port: int, count: int, window: int, db: Path,
                             synchronous: str, receipts: bool = False) -> tuple[float, int, int]:
    """(submits/s — or delivered/s with receipts —, SQLite transactions claiming messages,
    transactions recording outcomes and receipts)."""
    outbox = Outbox.open(db, synchronous=synchronous)
    enqueue(outbox, ["Sorry we missed your call"] * count)
    transactions = 0

    def trace(sql: str) -> None:
        nonlocal transactions
        if sql.lstrip().upper().startswith("BEGIN"):
            transactions += 1

    outbox.conn.set_trace_callback(trace)
    claims = 0
    claim_due = outbox.claim_due

    def counting_claim_due(*args, **kwargs):
        nonlocal claims
        claims += 1
        return claim_due(*args, **kwargs)

    outbox.claim_due = counting_claim_due  # counts; the real method does the work
    transport = make_transport(settings(port, window=window, sessions=1, response_timeout=10.0))
    submitted = 0
    finished = asyncio.get_running_loop().create_future()

    wanted = MessageState.DELIVERED if receipts else MessageState.SUBMITTED

    def on_transition(t) -> None:
        nonlocal submitted
        if t.state is wanted:
            submitted += 1
            if submitted == count and not finished.done():
                finished.set_result(None)

    dispatcher = Dispatcher(outbox, transport, DispatchConfig(batch_size=max(window, 50)),
                            on_transition=on_transition)
    started = time.perf_counter()
    await dispatcher.start()
    await asyncio.wait_for(finished, 300)
    elapsed = time.perf_counter() - started
    await dispatcher.stop()
    states = outbox.counts_by_state()
    outbox.conn.set_trace_callback(None)
    outbox.close()
    if states != {wanted.value: count}:
        raise SystemExit(f"aftercalld: unexpected states {states}")
    return count / elapsed, claims, transactions - claims


async def transport_only(port: int, count: int, window: int) -> float:
    """Submits per second through the SMPP transport alone (no outbox): where (b) spends
    the difference is the dispatcher and SQLite."""
    from aftercalld.model import OutboundMessage, RecipientKind
    from aftercalld.rules.encoding import choose_encoding

    class NoEvents:
        def delivery_report(self, report) -> None:
            pass

        def inbound_message(self, message) -> None:
            pass

    transport = make_transport(settings(port, window=window, sessions=1, response_timeout=10.0))
    await transport.start(NoEvents())
    await transport.until_bound(10.0)
    text = "Sorry we missed your call"
    queued_at = datetime.now(UTC)  # the transport does not read it; only the dispatcher's TTL does
    messages = [OutboundMessage(id=i, key=f"k{i}", call_id=f"c{i}", rule="r",
                                recipient_kind=RecipientKind.CALLER,
                                destination=f"+447700900{i % 1000:03d}", sender="ACME", text=text,
                                encoding=choose_encoding(text), segments=1, created_at=queued_at)
                for i in range(count)]
    gate = asyncio.Semaphore(transport.max_in_flight)

    async def one(m):
        async with gate:
            return await transport.send(m)

    started = time.perf_counter()
    outcomes = await asyncio.gather(*(one(m) for m in messages))
    elapsed = time.perf_counter() - started
    await transport.close()
    if any(o.kind.value != "submitted" for o in outcomes):
        raise SystemExit("transport only: not every message was submitted")
    return count / elapsed


async def slow_smsc(db: Path, delay: float, timeout: float, messages: int) -> None:
    import collections

    from smsc_sim import SmscSim

    sim = SmscSim(response_delay=delay)
    await sim.start()
    outbox = Outbox.open(db)
    texts = [f"Sorry we missed your call {i}" + (" - we will call you back" * 6 if i % 2 else "")
             for i in range(messages)]
    enqueue(outbox, texts)
    transport = make_transport(settings(sim.port, window=10, response_timeout=timeout))
    dispatcher = Dispatcher(outbox, transport, DispatchConfig(retry_initial_seconds=1.0, retry_max_seconds=5.0))
    started = time.perf_counter()
    await dispatcher.start()
    try:
        await asyncio.wait_for(dispatcher.wait_idle(), 30)
    except TimeoutError:
        pass
    elapsed = time.perf_counter() - started
    status = transport.status()
    await dispatcher.stop()
    rows = outbox.messages()
    outbox.close()
    await sim.stop()
    per_part = collections.Counter(
        (s.destination, s.short_message[5] if s.esm_class & 0x40 else 1) for s in sim.accepted)
    per_message = collections.Counter(s.destination for s in sim.accepted)
    parts = sum(r["segments"] for r in rows)
    print(f"SMSC answering after {delay:g}s, response_timeout {timeout:g}s, window 10: {messages} messages "
          f"({parts} parts) in {elapsed:.1f}s")
    segments = {r["destination"].lstrip("+"): r["segments"] for r in rows}
    copies = [n / segments[d] for d, n in per_message.items()]
    print(f"  accepted submits: {len(sim.accepted)} for {parts} parts; per message (submits / its parts) "
          f"min {min(copies):g} max {max(copies):g}; copies of one part at most {max(per_part.values())}; "
          f"messages never accepted {messages - len(per_message)}")
    states = dict(collections.Counter(r["state"] for r in rows))
    print(f"  most outstanding at the SMSC: {sim.max_inflight}; response timeouts "
          f"{status.get('response_timeouts', 0)}, late answers {status.get('late_responses', 0)}; states {states}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=20000, help="messages per run (window 1 uses a fifth)")
    ap.add_argument("--windows", default="1,10,50")
    ap.add_argument("--synchronous", choices=("normal", "full"), default="normal",
                    help="SQLite synchronous mode for the outbox (the daemon's default is normal)")
    ap.add_argument("--receipts", action="store_true",
                    help="the SMSC sends a receipt for every submit; (b) runs until all are delivered")
    ap.add_argument("--slow-smsc", action="store_true",
                    help="instead: the duplicate check against an SMSC slower than response_timeout")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.slow_smsc:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(slow_smsc(Path(tmp) / "outbox.sqlite3", 2.0, 1.0, 20))
        return
    windows = [int(w) for w in args.windows.split(",")]

    sim = Simulator(receipts=args.receipts)
    try:
        print(f"SMSC simulator pid {sim.proc.pid} on 127.0.0.1:{sim.port}; {os.cpu_count()} CPUs; "
              f"outbox synchronous={args.synchronous}; load average {os.getloadavg()[0]:.2f}"
              + ("; receipts on: (b) counts messages delivered" if args.receipts else ""))
        n = args.count
        free = bare_smpplib(sim.port, n, None)
        print(f"(a) bare smpplib, no window:        {free:9,.0f} submits/s")
        print()
        print(f"{'window':>6} {'count':>7} {'(a) smpplib/s':>14} {'(b) aftercalld/s':>17} {'b/a':>6} "
              f"{'claim tx':>9} {'write tx':>9} {'msgs/write tx':>14} {'(c) transport/s':>16}")
        with tempfile.TemporaryDirectory() as tmp:
            for w in windows:
                count = max(1000, n // 5) if w == 1 else n
                a = bare_smpplib(sim.port, count, w)
                b, claim_tx, write_tx = asyncio.run(aftercalld_durable(
                    sim.port, count, w, Path(tmp) / f"outbox-{w}.sqlite3", args.synchronous,
                    args.receipts))
                c = asyncio.run(transport_only(sim.port, count, w))
                print(f"{w:>6} {count:>7} {a:>14,.0f} {b:>17,.0f} {b / a:>6.2f} {claim_tx:>9,} "
                      f"{write_tx:>9,} {count / write_tx:>14.1f} {c:>16,.0f}")
    finally:
        sim.stop()


if __name__ == "__main__":
    main()

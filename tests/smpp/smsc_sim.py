"""An SMSC simulator over real sockets, for the SMPP tests and bench/smpp.py.

It has its own small PDU codec, written apart from aftercalld.smpp.pdu on purpose, so a
mistake in ours is not mirrored here. It can accept or refuse binds, answer after a delay,
throttle, fail chosen destinations, drop the TCP link after N submits, send receipts (with
or without TLVs, ids in hex or decimal, even before the submit_sm_resp) and replies.

Run standalone for the benchmark: ``python tests/smpp/smsc_sim.py --port 0`` prints
``PORT <n>`` and serves until stdin closes.
"""
from __future__ import annotations

import argparse
import asyncio
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import gsm0338  # noqa: F401

HDR = struct.Struct(">IIII")
BIND_RX, BIND_TX, BIND_TRX = 0x01, 0x02, 0x09
SUBMIT, DELIVER, UNBIND, ENQUIRE, DATA_SM = 0x04, 0x05, 0x06, 0x15, 0x103
GENERIC_NACK = 0x80000000
RESP = 0x80000000
OK, RINVBNDSTS, RINVCMDID, RINVPASWD, RTHROTTLED = 0x00, 0x04, 0x03, 0x0E, 0x58


def _cstr(buf: bytes, pos: int) -> tuple[bytes, int]:
    end = buf.index(b"\x00", pos)
    return buf[pos:end], end + 1


def _tlvs(buf: bytes, pos: int) -> dict[int, bytes]:
    out = {}
    while pos + 4 <= len(buf):
        tag, length = struct.unpack_from(">HH", buf, pos)
        out[tag] = buf[pos + 4:pos + 4 + length]
        pos += 4 + length
    return out


@dataclass
class Submit:
    conn: int
    source_ton: int
    source_npi: int
    source: str
    dest_ton: int
    dest_npi: int
    destination: str
    esm_class: int
    registered_delivery: int
    data_coding: int
    short_message: bytes
    tlvs: dict[int, bytes]
    service_type: str = ""
    message_id: str = ""
    number: int = 0  # the simulator's running message number


def parse_submit(body: bytes, conn: int = 0) -> Submit:
    service_type, p = _cstr(body, 0)
    ston, snpi = body[p], body[p + 1]
    source, p = _cstr(body, p + 2)
    dton, dnpi = body[p], body[p + 1]
    dest, p = _cstr(body, p + 2)
    esm = body[p]
    _, p = _cstr(body, p + 3)
    _, p = _cstr(body, p)
    regdel, dc, smlen = body[p], body[p + 2], body[p + 4]
    sm = body[p + 5:p + 5 + smlen]
    return Submit(conn, ston, snpi, source.decode(), dton, dnpi, dest.decode(), esm, regdel, dc,
                  sm, _tlvs(body, p + 5 + smlen), service_type.decode())


def decode(payload: bytes, dc: int) -> str:
    if dc == 8:
        return payload.decode("utf-16-be")
    if dc == 0:
        return payload.decode("gsm03.38")
    if dc == 1:
        return payload.decode("ascii")
    return payload.decode("latin-1")


@dataclass
class Reassembled:
    destination: str
    source: str
    text: str
    method: str  # single / udh8 / udh16 / sar / payload
    parts: list[Submit] = field(default_factory=list)


def reassemble(submits: list[Submit]) -> list[Reassembled]:
    """What a handset would show: concatenated parts joined by reference, in order."""
    out: list[Reassembled] = []
    groups: dict[tuple, dict[int, tuple[Submit, bytes]]] = {}
    meta: dict[tuple, tuple[str, int]] = {}
    for s in submits:
        sm = s.short_message
        if s.esm_class & 0x40:
            udh_len = sm[0]
            udh = sm[1:1 + udh_len]
            if udh[0] == 0x00:
                ref, total, seq, method = udh[2], udh[3], udh[4], "udh8"
            elif udh[0] == 0x08:
                ref, total, seq, method = (udh[2] << 8) | udh[3], udh[4], udh[5], "udh16"
            else:
                raise AssertionError(f"unexpected UDH {udh.hex()}")
            payload = sm[1 + udh_len:]
        elif 0x020C in s.tlvs:
            ref = int.from_bytes(s.tlvs[0x020C], "big")
            total, seq, method = s.tlvs[0x020E][0], s.tlvs[0x020F][0], "sar"
            payload = sm
        elif 0x0424 in s.tlvs:
            out.append(Reassembled(s.destination, s.source, decode(s.tlvs[0x0424], s.data_coding),
                                   "payload", [s]))
            continue
        else:
            out.append(Reassembled(s.destination, s.source, decode(sm, s.data_coding), "single", [s]))
            continue
        key = (s.destination, method, ref)
        groups.setdefault(key, {})[seq] = (s, payload)
        meta[key] = (method, total)
    for key, parts in groups.items():
        method, total = meta[key]
        assert sorted(parts) == list(range(1, total + 1)), f"missing parts for {key}: {sorted(parts)}"
        submits_in_order = [parts[i][0] for i in range(1, total + 1)]
        text = "".join(decode(parts[i][1], parts[i][0].data_coding) for i in range(1, total + 1))
        out.append(Reassembled(key[0], submits_in_order[0].source, text, method, submits_in_order))
    return out


class _Conn(asyncio.Protocol):
    def __init__(self, sim: SmscSim, index: int) -> None:
        self.sim = sim
        self.index = index
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.bound_as = 0
        self.system_id = ""
        self.seq = 0
        self.pending: dict[int, asyncio.Future] = {}
        self.closed = False
        self.inflight = 0  # submits received and not yet answered
        self.out: list[bytes] = []

    def connection_made(self, transport) -> None:
        self.transport = transport
        # numbered here, not in the factory: several accepts can precede the first of these
        self.index = len(self.sim.connections)
        self.sim.connections.append(self)

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.bound_as = 0
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("closed"))
        self.sim._changed()

    def write(self, command: int, status: int, seq: int, body: bytes = b"") -> None:
        if not self.closed:
            if not self.out:
                asyncio.get_running_loop().call_soon(self.flush)
            self.out.append(HDR.pack(16 + len(body), command, status, seq) + body)

    def flush(self) -> None:
        out, self.out = self.out, []
        if out and not self.closed:
            self.transport.write(b"".join(out))

    def request(self, command: int, body: bytes) -> asyncio.Future:
        self.seq += 1
        fut = asyncio.get_running_loop().create_future()
        self.pending[self.seq] = fut
        self.write(command, 0, self.seq, body)
        return fut

    def drop(self) -> None:
        self.closed = True
        self.bound_as = 0
        self.transport.abort()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = 0
        while len(buf) - pos >= 16:
            length, command, status, seq = HDR.unpack_from(buf, pos)
            if len(buf) - pos < length:
                break
            body = bytes(buf[pos + 16:pos + length])
            pos += length
            self.sim._pdu(self, command, status, seq, body)
            if self.closed:
                break
        del buf[:pos]


class SmscSim:
    def __init__(self, *, system_id: str = "esme", password: str = "secret",
                 bind_statuses: list[int | None] | None = None,  # None: no answer
                 response_delay: float = 0.0,
                 throttle: Callable[[int], bool] | None = None,
                 fail_destinations: dict[str, int] | None = None,
                 drop_after: int | None = None,
                 nack_destinations: set[str] | None = None,
                 fail_nth: dict[int, int] | None = None,  # submit number (1-based) → status
                 receipts: str | None = None,  # None / "tlv" (TLVs + text) / "text" / "tlv_only"
                 resp_id: Callable[[int], str] = lambda n: format(n, "X"),
                 receipt_id: Callable[[int], str] | None = None,
                 receipt_stat: Callable[[Submit], tuple[str, str]] = lambda s: ("DELIVRD", "000"),
                 receipt_before_resp: bool = False,
                 answer_enquire_link: bool = True,
                 silent_destinations: set[str] | None = None,  # taken, never answered
                 keep_unanswered: bool = False,  # a submit taken before its link closed counts
                 fast: bool = False) -> None:
        self.system_id = system_id
        self.password = password
        self.bind_statuses = list(bind_statuses or [])
        self.response_delay = response_delay
        self.throttle = throttle
        self.fail_destinations = fail_destinations or {}
        self.drop_after = drop_after
        self.nack_destinations = nack_destinations or set()
        self.fail_nth = fail_nth or {}
        self.receipts = receipts
        self.resp_id = resp_id
        self.receipt_id = receipt_id or resp_id
        self.receipt_stat = receipt_stat
        self.receipt_before_resp = receipt_before_resp
        self.answer_enquire_link = answer_enquire_link
        self.silent_destinations = silent_destinations or set()
        self.keep_unanswered = keep_unanswered
        self.fast = fast
        # Answers wait in `held` until release(): an SMSC slow to answer, for as long as a
        # test needs, without a timer.
        self.holding = False
        self.held: list[Callable[[], None]] = []
        self.connections: list[_Conn] = []
        self.accepted: list[Submit] = []
        self.accepted_count = 0
        self.submits_seen = 0
        self.throttled = 0
        self.binds: list[dict] = []
        self.enquire_links = 0
        self.unbinds = 0
        self.deliver_resps: list[int] = []
        self.receipts_sent_before_resp = 0
        self.max_inflight = 0  # most unanswered submits seen on one connection
        self._number = 0
        self._server: asyncio.base_events.Server | None = None
        self._cond: asyncio.Condition | None = None
        self._watchers: list[tuple[Callable[[], bool], asyncio.Future]] = []

    # -- control ---------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0, ssl=None) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Conn(self, -1), host, port, ssl=ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for c in self.connections:
                if not c.closed:
                    c.drop()
            await self._server.wait_closed()

    def _changed(self) -> None:
        for pred, fut in list(self._watchers):
            if not fut.done() and pred():
                fut.set_result(None)
        self._watchers = [(p, f) for p, f in self._watchers if not f.done()]

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        if predicate():
            return
        fut = asyncio.get_running_loop().create_future()
        self._watchers.append((predicate, fut))
        await asyncio.wait_for(fut, timeout)

    def release(self) -> None:
        """Stop holding answers, and send the ones held."""
        self.holding = False
        held, self.held = self.held, []
        for answer in held:
            answer()

    def bound(self, kinds=(BIND_TRX, BIND_TX, BIND_RX)) -> list[_Conn]:
        return [c for c in self.connections if not c.closed and c.bound_as in kinds]

    def drop_all(self) -> None:
        for c in self.connections:
            if not c.closed:
                c.drop()

    async def unbind_all(self) -> None:
        """The SMSC says goodbye (maintenance): unbind every session."""
        futs = [c.request(UNBIND, b"") for c in self.bound()]
        await asyncio.gather(*futs, return_exceptions=True)

    def _receiver(self) -> _Conn:
        conns = self.bound((BIND_TRX, BIND_RX))
        if not conns:
            raise RuntimeError("no receiver bound")
        return conns[0]

    async def send_deliver(self, *, source: str, destination: str = "ACME", short_message: bytes = b"",
                           esm_class: int = 0, data_coding: int = 0, source_ton: int = 1,
                           tlvs: dict[int, bytes] | None = None, use_data_sm: bool = False,
                           conn: _Conn | None = None) -> int:
        """Send a deliver_sm (or data_sm); return the command_status of the answer."""
        conn = conn or self._receiver()
        tlv_bytes = b"".join(struct.pack(">HH", t, len(v)) + v for t, v in (tlvs or {}).items())
        if use_data_sm:
            body = (b"\x00" + bytes((source_ton, 1)) + source.encode() + b"\x00"
                    + bytes((5, 0)) + destination.encode() + b"\x00"
                    + bytes((esm_class, 0, data_coding)) + tlv_bytes)
            command = DATA_SM
        else:
            body = (b"\x00" + bytes((source_ton, 1)) + source.encode() + b"\x00"
                    + bytes((5, 0)) + destination.encode() + b"\x00"
                    + bytes((esm_class, 0, 0)) + b"\x00\x00"
                    + bytes((0, 0, data_coding, 0, len(short_message))) + short_message + tlv_bytes)
            command = DELIVER
        return await conn.request(command, body)

    async def send_mo(self, source: str, text: str, *, data_coding: int = 0, **kw) -> int:
        payload = text.encode("utf-16-be") if data_coding == 8 else text.encode("gsm03.38")
        return await self.send_deliver(source=source, short_message=payload,
                                       data_coding=data_coding, **kw)

    def receipt_body(self, sub: Submit, mode: str) -> tuple[bytes, dict[int, bytes]]:
        rid = self.receipt_id(sub.number)
        stat, err = self.receipt_stat(sub)
        text = (f"id:{rid} sub:001 dlvrd:{'001' if stat == 'DELIVRD' else '000'} "
                f"submit date:2611300800 done date:2611300801 stat:{stat} err:{err} text:hello")
        tlvs: dict[int, bytes] = {}
        if mode in ("tlv", "tlv_only"):
            states = {"DELIVRD": 2, "EXPIRED": 3, "DELETED": 4, "UNDELIV": 5, "ACCEPTD": 6,
                      "UNKNOWN": 7, "REJECTD": 8, "ENROUTE": 1}
            tlvs = {0x001E: rid.encode() + b"\x00", 0x0427: bytes((states[stat],))}
        return (b"" if mode == "tlv_only" else text.encode()), tlvs

    def _send_receipt(self, sub: Submit) -> None:
        try:
            conn = self._receiver()
        except RuntimeError:
            return
        text, tlvs = self.receipt_body(sub, self.receipts)
        tlv_bytes = b"".join(struct.pack(">HH", t, len(v)) + v for t, v in tlvs.items())
        body = (b"\x00" + bytes((sub.dest_ton, sub.dest_npi)) + sub.destination.encode() + b"\x00"
                + bytes((sub.source_ton, sub.source_npi)) + sub.source.encode() + b"\x00"
                + bytes((0x04, 0, 0)) + b"\x00\x00" + bytes((0, 0, 0, 0, len(text))) + text + tlv_bytes)
        fut = conn.request(DELIVER, body)
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())

    # -- protocol --------------------------------------------------------------------------

    def _pdu(self, conn: _Conn, command: int, status: int, seq: int, body: bytes) -> None:
        if command & RESP:
            fut = conn.pending.pop(seq, None)
            if fut is not None and not fut.done():
                fut.set_result(status)
            if command in (DELIVER | RESP, DATA_SM | RESP):
                self.deliver_resps.append(status)
                self._changed()
            return
        if command == SUBMIT:
            self._submit(conn, seq, body)
        elif command in (BIND_RX, BIND_TX, BIND_TRX):
            sid, p = _cstr(body, 0)
            pwd, p = _cstr(body, p)
            stype, p = _cstr(body, p)
            self.binds.append({"command": command, "system_id": sid.decode(),
                               "password": pwd.decode(), "system_type": stype.decode(),
                               "interface_version": body[p], "conn": conn.index})
            if self.bind_statuses:
                st = self.bind_statuses.pop(0)
            elif sid.decode() != self.system_id or pwd.decode() != self.password:
                st = RINVPASWD
            else:
                st = OK
            if st is None:  # silence: the ESME's bind must time out
                self._changed()
                return
            conn.write(command | RESP, st, seq, b"SIMSMSC\x00" if st == OK else b"")
            if st == OK:
                conn.bound_as = command
                conn.system_id = sid.decode()
            self._changed()
        elif command == ENQUIRE:
            self.enquire_links += 1
            if self.answer_enquire_link:
                conn.write(ENQUIRE | RESP, OK, seq)
            self._changed()
        elif command == UNBIND:
            self.unbinds += 1
            conn.write(UNBIND | RESP, OK, seq)
            conn.flush()
            conn.transport.close()
            conn.closed = True
            self._changed()
        else:
            conn.write(GENERIC_NACK, RINVCMDID, seq)

    def _submit(self, conn: _Conn, seq: int, body: bytes) -> None:
        self.submits_seen += 1
        n = self.submits_seen
        if conn.bound_as not in (BIND_TX, BIND_TRX):
            conn.write(SUBMIT | RESP, RINVBNDSTS, seq)
            return
        if self.drop_after is not None and n >= self.drop_after:
            self.drop_after = None  # once
            conn.drop()
            self._changed()
            return
        conn.inflight += 1
        if conn.inflight > self.max_inflight:
            self.max_inflight = conn.inflight
        if self.fast:
            conn.inflight -= 1
            self._number += 1
            self.accepted_count += 1
            mid = self.resp_id(self._number).encode()
            conn.write(SUBMIT | RESP, OK, seq, mid + b"\x00")
            if self.receipts and conn.bound_as == BIND_TRX:
                # minimal receipt, without parsing the submit: the benchmark's delivered path
                text = b"id:" + mid + b" sub:001 dlvrd:001 stat:DELIVRD err:000"
                conn.seq += 1
                conn.write(DELIVER, 0, conn.seq,
                           b"\x00\x01\x01447700900000\x00\x05\x00ACME\x00\x04\x00\x00\x00\x00"
                           + bytes((0, 0, 0, 0, len(text))) + text
                           + struct.pack(">HH", 0x001E, len(mid) + 1) + mid + b"\x00"
                           + struct.pack(">HHB", 0x0427, 1, 2))
            return
        if self._watchers:
            self._changed()  # e.g. a test waiting for a full window
        if n in self.fail_nth:
            self._reply_later(conn, SUBMIT | RESP, self.fail_nth[n], seq, b"", None)
            return
        if self.throttle is not None and self.throttle(n):
            self.throttled += 1
            self._reply_later(conn, SUBMIT | RESP, RTHROTTLED, seq, b"", None)
            return
        sub = parse_submit(body, conn.index)
        failure = self.fail_destinations.get(sub.destination)
        if sub.destination in self.silent_destinations:
            # Taken (the handset will get it) but the answer is lost inside the SMSC.
            self._number += 1
            sub.number = self._number
            self.accepted.append(sub)
            self.accepted_count += 1
            self._changed()
            return
        if sub.destination in self.nack_destinations:
            self._reply_later(conn, GENERIC_NACK, failure or 0x02, seq, b"", None)
            return
        if failure is not None:
            self._reply_later(conn, SUBMIT | RESP, failure, seq, b"", None)
            return
        self._number += 1
        sub.number = self._number
        sub.message_id = self.resp_id(self._number)
        self._reply_later(conn, SUBMIT | RESP, OK, seq, sub.message_id.encode() + b"\x00", sub)

    def _reply_later(self, conn: _Conn, command: int, status: int, seq: int, body: bytes,
                     sub: Submit | None) -> None:
        def go() -> None:
            conn.inflight -= 1
            if conn.closed:
                # The link went down first: this one was never answered. A real SMSC
                # may have delivered it all the same.
                if sub is not None and self.keep_unanswered:
                    self.accepted.append(sub)
                    self.accepted_count += 1
                    self._changed()
                return
            if sub is not None and self.receipts and sub.registered_delivery & 1 and self.receipt_before_resp:
                self._send_receipt(sub)
                self.receipts_sent_before_resp += 1
            conn.write(command, status, seq, body)
            if sub is not None:
                self.accepted.append(sub)
                self.accepted_count += 1
                if self.receipts and sub.registered_delivery & 1 and not self.receipt_before_resp:
                    self._send_receipt(sub)
            self._changed()

        if self.holding:
            self.held.append(go)
            self._changed()
        elif self.response_delay > 0:
            asyncio.get_running_loop().call_later(self.response_delay, go)
        else:
            go()


async def _main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--receipts", action="store_true", help="a DELIVRD receipt after every submit")
    args = ap.parse_args()
    sim = SmscSim(response_delay=args.delay, fast=True, receipts="tlv" if args.receipts else None)
    port = await sim.start(port=args.port)
    print(f"PORT {port}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    print(f"ACCEPTED {sim.accepted_count}", flush=True)
    await sim.stop()


if __name__ == "__main__":
    asyncio.run(_main())

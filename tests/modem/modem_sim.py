"""A GSM modem on a pseudo-terminal, for tests: it speaks the AT commands aftercalld uses,
decodes the PDUs it is sent (with its own reading of TS 23.040 via aftercalld.modem.pdu's
decoder, checked against published vectors in test_modem_pdu.py), and injects the faults
real modems show: PIN required, no network, +CMS ERROR, silence, garbage, unsolicited
lines in the middle of an answer, and the device vanishing and coming back.

The device path is a symlink (like /dev/serial/by-id/...) that follows the current pty,
so a re-plug gives the client the same path to a new device.
"""
from __future__ import annotations

import asyncio
import os
import re
import tty
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from aftercalld.model import Encoding
from aftercalld.modem import pdu


@dataclass
class Received:
    """One SMS-SUBMIT as the network would see it."""

    mr: int
    tpdu_length: int
    hex: str
    decoded: pdu.DecodedSubmit


@dataclass
class Stored:
    status: int  # 0 REC UNREAD, 1 REC READ
    hex: str
    tpdu_length: int


@dataclass
class ModemSim:
    link: Path
    pin: str | None = None  # a SIM that wants this PIN
    registration: int = 1  # +CREG stat
    echo: bool = True  # real modems start with echo on
    cereg: int | None = None  # +CEREG stat on an LTE modem; None: the command is unknown
    ignore_ate0: bool = False  # firmware that keeps echoing
    csq: tuple[int, int] = (21, 99)
    silent: bool = False  # hung: reads everything, answers nothing
    garbage: bool = False  # line noise before every answer
    urcs_mid_answer: list[str] = field(default_factory=list)  # injected between info lines and OK
    cms_errors: deque = field(default_factory=deque)  # codes for the next AT+CMGS answers
    cnmi_reject: set[str] = field(default_factory=set)  # AT+CNMI settings to answer ERROR
    cds_with_sca: bool = True
    prompt: bytes = b"\r\n> "
    pin_delay_polls: int = 0  # after a right PIN, answer SIM PIN to this many more AT+CPIN?
    hang_after_cmgs: bool = False  # answer +CMGS: <mr>, then fall silent before the OK
    cmgs_reference: str | None = None  # say this instead of the real <mr> (a broken modem)

    def __post_init__(self) -> None:
        self.received: list[Received] = []
        self.commands: list[str] = []
        self.storage: dict[int, Stored] = {}
        self.pin_ok = self.pin is None
        self.pin_attempts: list[str] = []
        self._pin_polls_left = 0
        self.cnmi = ""
        self.cmgf = None
        self.csca = ""
        self.next_mr = 0x41
        self.plugged = False
        self._master: int | None = None
        self._slave: int | None = None
        self._inbuf = b""
        self._prompt_len: int | None = None
        self._changed = asyncio.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- plumbing ---------------------------------------------------------------------

    def plug(self) -> None:
        self._loop = asyncio.get_running_loop()
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        tmp = self.link.with_suffix(".tmp")
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink()
        tmp.symlink_to(os.ttyname(slave))
        os.replace(tmp, self.link)
        self._loop.add_reader(master, self._readable)
        self.plugged = True
        self._inbuf = b""
        self._prompt_len = None
        self.echo = True
        self.pin_ok = self.pin is None  # a re-plugged modem asks for its PIN again

    def unplug(self) -> None:
        """The USB device goes away: the client's reads fail, the path disappears."""
        self.plugged = False
        if self._master is not None:
            assert self._loop is not None
            self._loop.remove_reader(self._master)
            os.close(self._master)
            self._master = None
        if self._slave is not None:
            os.close(self._slave)
            self._slave = None
        if self.link.is_symlink():
            self.link.unlink()

    def close(self) -> None:
        self.unplug()

    def reboot(self, *, announce: bool = True) -> None:
        """The modem restarts on its own (power dip, firmware watchdog): back to text mode,
        no message routing, echo on, SIM locked again."""
        self.cmgf = None
        self.cnmi = ""
        self.echo = True
        self.pin_ok = self.pin is None
        if announce:
            for line in ("RDY", "+CFUN: 1", "+CPIN: READY" if self.pin_ok else "+CPIN: SIM PIN",
                         "Call Ready", "SMS Ready"):
                self.emit(line)

    def _write(self, data: bytes) -> None:
        if self._master is None:
            return
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._master, view)
            except BlockingIOError:
                continue
            view = view[n:]

    def emit(self, line: str) -> None:
        """An unsolicited line, as the modem would send it at any time."""
        self._write(b"\r\n" + line.encode() + b"\r\n")

    def _readable(self) -> None:
        try:
            data = os.read(self._master, 4096)  # type: ignore[arg-type]
        except OSError:
            return  # the client closed its side; it may reopen
        if not data:
            return
        self._inbuf += data
        self._process()

    def _process(self) -> None:
        while True:
            if self._prompt_len is not None:
                for i, b in enumerate(self._inbuf):
                    if b in (0x1A, 0x1B):
                        body, self._inbuf = self._inbuf[:i], self._inbuf[i + 1 :]
                        length, self._prompt_len = self._prompt_len, None
                        if b == 0x1A and not self.silent:
                            if self.echo:  # echo mode echoes the PDU as it is typed
                                self._write(body)
                            self._submit(body.decode("ascii", "replace").strip(), length)
                            self._notify()
                        break
                else:
                    return
                continue
            cut = self._inbuf.find(b"\r")
            if cut < 0:
                return
            raw, self._inbuf = self._inbuf[:cut], self._inbuf[cut + 1 :]
            # Ctrl-Z / ESC outside a prompt end whatever was typed before them.
            raw = re.split(rb"[\x1a\x1b]", raw)[-1]
            line = raw.decode("ascii", "replace").strip()
            if not line:
                continue
            self.commands.append(line)
            if not self.silent:
                if self.echo:
                    self._write(line.encode() + b"\r")
                if self.garbage:
                    self._write(b"\r\n\xff\xfe#@!garbage\x07\r\n\r\n+++ATH?\r\n")
                self._command(line)
            self._notify()

    def _notify(self) -> None:
        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()
        assert self._loop is not None
        self._loop.create_task(notify())

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until `predicate()` holds, re-checked after every command the sim handles."""
        async def waiter() -> None:
            async with self._changed:
                await self._changed.wait_for(predicate)
        await asyncio.wait_for(waiter(), timeout)

    # --- answers ----------------------------------------------------------------------

    def _answer(self, *lines: str, final: str = "OK") -> None:
        out = b""
        for i, line in enumerate(lines):
            out += b"\r\n" + line.encode() + b"\r\n"
            if i == 0:
                for urc in self.urcs_mid_answer:
                    out += b"\r\n" + urc.encode() + b"\r\n"
        if not lines:
            for urc in self.urcs_mid_answer:
                out += b"\r\n" + urc.encode() + b"\r\n"
        out += b"\r\n" + final.encode() + b"\r\n"
        self._write(out)

    def _error(self, code: int, kind: str = "CMS") -> None:
        self._answer(final=f"+{kind} ERROR: {code}")

    def _command(self, line: str) -> None:
        upper = line.upper()
        if not upper.startswith("AT"):
            self._answer(final="ERROR")
            return
        cmd = upper[2:]
        if cmd in ("", "Z"):
            if cmd == "Z":
                self.echo = True
            self._answer()
        elif cmd in ("E0", "E1"):
            self.echo = cmd == "E1" or self.ignore_ate0
            self._answer()
        elif cmd.startswith("+CMEE="):
            self._answer()
        elif cmd == "+CPIN?":
            if not self.pin_ok and self._pin_polls_left:
                self._pin_polls_left -= 1
                self.pin_ok = self._pin_polls_left == 0
                self._answer("+CPIN: SIM PIN")
                return
            self._answer("+CPIN: READY" if self.pin_ok else "+CPIN: SIM PIN")
        elif cmd.startswith("+CPIN="):
            given = line.split("=", 1)[1].strip('"')
            self.pin_attempts.append(given)
            if self.pin_ok:
                self._error(3, "CME")
            elif given == self.pin:
                self._answer()
                if self.pin_delay_polls:
                    self._pin_polls_left = self.pin_delay_polls  # the SIM takes its time
                else:
                    self.pin_ok = True
            else:
                self._error(16, "CME")
        elif not self.pin_ok and cmd.startswith(("+CMG", "+CREG", "+CNMI", "+CSCA", "+CEREG", "+CSQ", "+CPMS")):
            self._error(11, "CME")
        elif cmd == "+CREG?":
            self._answer(f"+CREG: 0,{self.registration}")
        elif cmd == "+CEREG?":
            if self.cereg is not None:
                self._answer(f"+CEREG: 0,{self.cereg}")
            else:
                self._answer(final="ERROR")
        elif cmd == "+CSQ":
            self._answer(f"+CSQ: {self.csq[0]},{self.csq[1]}")
        elif cmd == "+CMGF?":
            self._answer(f"+CMGF: {1 if self.cmgf is None else self.cmgf}")
        elif cmd.startswith("+CMGF="):
            self.cmgf = int(cmd.split("=")[1])
            self._answer()
        elif cmd.startswith("+CSCA="):
            self.csca = line.split("=", 1)[1]
            self._answer()
        elif cmd.startswith("+CNMI="):
            value = cmd.split("=", 1)[1]
            if value in self.cnmi_reject:
                self._error(303)
            else:
                self.cnmi = value
                self._answer()
        elif cmd.startswith("+CSMS="):
            self._answer("+CSMS: 1,1,1")
        elif cmd.startswith("+CPMS="):
            self._answer("+CPMS: 1,30,1,30,1,30")
        elif cmd.startswith("+CMGS="):
            if self.cmgf != 0:
                self._error(304)
                return
            self._prompt_len = int(cmd.split("=")[1])
            self._write(self.prompt)
            self._process()
        elif cmd.startswith("+CMGR="):
            index = int(cmd.split("=")[1])
            stored = self.storage.get(index)
            if stored is None:
                self._error(321)
                return
            self._answer(f"+CMGR: {stored.status},,{stored.tpdu_length}", stored.hex)
            stored.status = 1
        elif cmd.startswith("+CMGD="):
            index = int(cmd.split("=")[1].split(",")[0])
            self.storage.pop(index, None)
            self._answer()
        elif cmd.startswith("+CMGL="):
            lines: list[str] = []
            for index, stored in sorted(self.storage.items()):
                lines += [f"+CMGL: {index},{stored.status},,{stored.tpdu_length}", stored.hex]
            self._answer(*lines)
        else:
            self._answer(final="ERROR")

    def _submit(self, hex_pdu: str, length: int) -> None:
        try:
            decoded = pdu.decode_submit(hex_pdu, length)
            if len(bytes.fromhex(hex_pdu)) - 1 - bytes.fromhex(hex_pdu)[0] != length:
                raise pdu.PduError("AT+CMGS length does not match the PDU")
        except ValueError:
            self._error(304)
            return
        if self.cms_errors:
            self._error(self.cms_errors.popleft())
            return
        mr = self.next_mr
        self.next_mr = (self.next_mr + 1) % 256
        self.received.append(Received(mr, length, hex_pdu, decoded))
        if self.hang_after_cmgs:
            self._write(f"\r\n+CMGS: {mr}\r\n".encode())
            self.silent = True
            return
        self._answer(f"+CMGS: {mr if self.cmgs_reference is None else self.cmgs_reference}")

    # --- the network side ---------------------------------------------------------------

    def deliver_sms(self, sender: str, text: str, encoding: Encoding | None = None, *,
                    concat: pdu.Concat | None = None, notify: bool = True) -> int:
        """A text arrives: stored on the SIM, announced with +CMTI."""
        enc = encoding or (Encoding.GSM7 if all(_fits(c) for c in text) else Encoding.UCS2)
        hex_pdu = pdu.build_deliver(sender, text, enc, datetime.now(UTC), concat=concat)
        raw = bytes.fromhex(hex_pdu)
        index = max(self.storage, default=0) + 1
        self.storage[index] = Stored(0, hex_pdu, len(raw) - 1 - raw[0])
        if notify:
            self.emit(f'+CMTI: "SM",{index}')
        return index

    def status_report(self, mr: int, status: int = 0, recipient: str | None = None) -> None:
        """The SC reports on a part we sent: +CDS straight to the client."""
        if recipient is None:
            match = [r for r in self.received if r.mr == mr]
            recipient = match[-1].decoded.destination if match else "+15551234567"
        now = datetime.now(UTC).replace(microsecond=0)
        hex_pdu, length = pdu.build_status_report(mr, recipient, status, now, now,
                                                  smsc="+15550000000" if self.cds_with_sca else None)
        self._write(f"\r\n+CDS: {length}\r\n{hex_pdu}\r\n".encode())

    def texts(self) -> list[str]:
        return [r.decoded.text for r in self.received]


def _fits(c: str) -> bool:
    from aftercalld.rules.encoding import gsm_septets

    return bool(gsm_septets(c))


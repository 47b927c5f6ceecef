"""The AT command channel: one command at a time, its response lines apart from the
unsolicited ones a modem interleaves (``RING``, ``+CMTI``, ``+CREG``, ``+CDS`` …).

It knows the framing of 3GPP TS 27.007/27.005 and nothing of what an SMS is: the
transport decides what to send and what an unsolicited line means.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import serial_asyncio_fast

from .errors import CommandError, CommandTimeout, PortClosed

log = logging.getLogger(__name__)

# Lines a modem may send at any time. Some (+CREG, +CEREG) are also the answer to a query;
# a command that expects them names them as its prefix and sorts them out itself.
URC_PREFIXES = (
    "RING", "+CRING:", "+CLIP:", "NO CARRIER", "+CMTI:", "+CDSI:", "+CMT:", "+CDS:", "+CBM:",
    "+CREG:", "+CEREG:", "+CGREG:", "+CUSD:", "+CIEV:", "+CPIN:", "+CFUN:", "^", "RDY",
    "+QIND:", "SMS READY", "CALL READY", "+PBREADY", "+STIN:",
)
# Unsolicited results whose PDU follows on the next line (27.005 3.4.1).
TWO_LINE_URCS = ("+CMT:", "+CDS:", "+CBM:")

FINAL_OK = ("OK",)
FINAL_ERROR = ("ERROR", "+CMS ERROR:", "+CME ERROR:", "COMMAND NOT SUPPORT", "TOO MANY PARAMETERS")

CTRL_Z = b"\x1a"
ESC = b"\x1b"


@dataclass(slots=True)
class Urc:
    """An unsolicited result: its line, and for +CMT/+CDS/+CBM the PDU line after it."""

    line: str
    pdu: str = ""


@dataclass(slots=True)
class _Pending:
    command: str
    prefix: str | None
    with_pdu: bool
    future: asyncio.Future = field(repr=False)
    lines: list[str] = field(default_factory=list)
    want_prompt: bool = False
    prompt: asyncio.Event = field(default_factory=asyncio.Event)
    pdu_next: bool = False


def _is_final_error(line: str) -> bool:
    upper = line.upper()
    return any(upper == e or (e.endswith(":") and upper.startswith(e)) for e in FINAL_ERROR)


_HEX = frozenset("0123456789abcdefABCDEF")


def _is_hex(line: str) -> bool:
    return len(line) % 2 == 0 and all(c in _HEX for c in line)


def _is_urc(line: str) -> bool:
    upper = line.upper()
    return any(upper.startswith(p) for p in URC_PREFIXES)


class ATChannel(asyncio.Protocol):
    """Owns one open serial port. `on_urc` is called for every unsolicited line (and for
    lines it cannot place, so the caller can log them); it must not block."""

    def __init__(self, on_urc: Callable[[Urc], None], *, name: str = "modem") -> None:
        self._on_urc = on_urc
        self._name = name
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._pending: _Pending | None = None
        self._urc_header: str | None = None
        self._lock = asyncio.Lock()
        self._opened = asyncio.Event()
        self._closed = asyncio.Event()
        self.close_reason = ""

    # --- lifecycle ----------------------------------------------------------------------

    @classmethod
    async def open(cls, device: str, baud: int, on_urc: Callable[[Urc], None], *,
                   rtscts: bool = False, name: str = "modem") -> ATChannel:
        """Open the port. Raises OSError/serial.SerialException if it is not there or not
        ours to open (permissions: the dialout group)."""
        channel = cls(on_urc, name=name)
        loop = asyncio.get_running_loop()
        await serial_asyncio_fast.create_serial_connection(
            loop, lambda: channel, device, baudrate=baud, rtscts=rtscts, exclusive=True)
        # connection_made arrives on a later loop iteration.
        await channel._opened.wait()
        return channel

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._opened.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.close_reason = str(exc) if exc else "closed"
        self._transport = None
        self._opened.set()
        self._closed.set()
        pending = self._pending
        if pending and not pending.future.done():
            pending.future.set_exception(PortClosed(f"serial port lost: {self.close_reason}"))
            pending.prompt.set()

    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            # abort, not close: close() drains the output first, and on a hung or unplugged
            # modem that can wait forever.
            self._transport.abort()
        try:
            # The port's close runs in a thread; a wedged USB driver must not wedge us.
            async with asyncio.timeout(5.0):
                await self._closed.wait()
        except TimeoutError:
            log.warning("%s: the serial port did not close within 5 s", self._name)
            self._closed.set()

    # --- commands -----------------------------------------------------------------------

    async def command(self, command: str, *, timeout: float, prefix: str | None = None,
                      with_pdu: bool = False, log_as: str | None = None) -> list[str]:
        """Send one command, return its information lines (those starting with `prefix`,
        or every non-unsolicited line if no prefix is given; with `with_pdu` the line after
        each prefixed line too). Raises CommandError, CommandTimeout or PortClosed."""
        async with self._lock:
            pending = self._start(command, prefix, with_pdu, log_as)
            return await self._finish(pending, timeout, log_as or command,
                                      command.encode("ascii") + b"\r")

    async def send_pdu(self, tpdu_length: int, pdu_hex: str, *, prompt_timeout: float,
                       timeout: float) -> list[str]:
        """``AT+CMGS=<length>``, wait for the ``>`` prompt, send the PDU and Ctrl-Z.
        Returns the ``+CMGS:`` lines."""
        command = f"AT+CMGS={tpdu_length}"
        async with self._lock:
            pending = self._start(command, "+CMGS:", False, None)
            pending.want_prompt = True
            try:
                self._write(command.encode("ascii") + b"\r")
                try:
                    async with asyncio.timeout(prompt_timeout):
                        await pending.prompt.wait()
                except TimeoutError:
                    # ESC abandons the input mode, should the prompt turn up late.
                    self._write(ESC)
                    raise CommandTimeout(command + " (waiting for the > prompt)", prompt_timeout) from None
                if pending.future.done():  # an error instead of a prompt
                    self._pending = None
                    return pending.future.result()
            except BaseException:
                if self._pending is pending:
                    self._pending = None
                raise
            pending.want_prompt = False
            log.debug("%s: > %s", self._name, pdu_hex)
            return await self._finish(pending, timeout, command, pdu_hex.encode("ascii") + CTRL_Z)

    def _start(self, command: str, prefix: str | None, with_pdu: bool, log_as: str | None) -> _Pending:
        if not self.is_open:
            raise PortClosed(f"serial port is closed ({self.close_reason or 'not open'})")
        log.debug("%s: -> %s", self._name, log_as or command)
        future = asyncio.get_running_loop().create_future()
        self._pending = _Pending(command, prefix.upper() if prefix else None, with_pdu, future)
        return self._pending

    async def _finish(self, pending: _Pending, timeout: float, shown: str, data: bytes) -> list[str]:
        """Write `data`, then wait for the final result of `pending`."""
        try:
            self._write(data)
            async with asyncio.timeout(timeout):
                return await asyncio.shield(pending.future)
        except TimeoutError:
            raise CommandTimeout(shown, timeout, list(pending.lines)) from None
        finally:
            if self._pending is pending:
                self._pending = None

    def _write(self, data: bytes) -> None:
        if self._transport is None:
            raise PortClosed(f"serial port is closed ({self.close_reason or 'not open'})")
        self._transport.write(data)

    # --- reading ------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            cut = min((i for i in (self._buffer.find(b"\r"), self._buffer.find(b"\n")) if i >= 0),
                      default=-1)
            if cut < 0:
                break
            raw, self._buffer = self._buffer[:cut], self._buffer[cut + 1 :]
            line = raw.decode("ascii", errors="replace").strip().strip("\x00")
            if line:
                self._line(line)
        pending = self._pending
        if pending and pending.want_prompt and self._buffer.strip().startswith(b">"):
            self._buffer = b""
            pending.prompt.set()
        elif len(self._buffer) > 4096:
            # A modem spewing bytes without line ends (wrong baud rate): drop, don't grow.
            log.warning("%s: discarding %d bytes without a line end (wrong baud rate?)",
                        self._name, len(self._buffer))
            self._buffer = b""

    def _line(self, line: str) -> None:
        # A PDU line is bare hex; anything else that turns up before it (vendor chatter
        # such as ^RSSI) is its own line, and the PDU is still awaited.
        pdu_line = _is_hex(line)
        if self._urc_header is not None and pdu_line:
            header, self._urc_header = self._urc_header, None
            self._dispatch(Urc(header, line))
            return
        pending = self._pending
        if pending is None or pending.future.done():
            self._unsolicited(line)
            return
        upper = line.upper()
        if upper == pending.command.upper():
            return  # echo (before ATE0 took effect, or a modem that ignores it)
        if pending.want_prompt and line.startswith(">"):
            pending.prompt.set()  # a modem that ends its prompt with a line break
            return
        if pending.pdu_next and pdu_line:
            pending.pdu_next = False
            pending.lines.append(line)
            return
        if upper in FINAL_OK:
            log.debug("%s: <- OK", self._name)
            pending.future.set_result(pending.lines)
            pending.prompt.set()
            return
        if _is_final_error(line):
            log.debug("%s: <- %s", self._name, line)
            pending.future.set_exception(CommandError(pending.command, line))
            pending.prompt.set()
            return
        if pending.prefix is not None and upper.startswith(pending.prefix):
            log.debug("%s: <- %s", self._name, line)
            pending.lines.append(line)
            pending.pdu_next = pending.with_pdu
            return
        if pending.prefix is None and not _is_urc(line):
            log.debug("%s: <- %s", self._name, line)
            pending.lines.append(line)
            return
        self._unsolicited(line)

    def _unsolicited(self, line: str) -> None:
        upper = line.upper()
        if any(upper.startswith(p) for p in TWO_LINE_URCS):
            self._urc_header = line
            return
        self._dispatch(Urc(line))

    def _dispatch(self, urc: Urc) -> None:
        try:
            self._on_urc(urc)
        except Exception:  # a bug in a handler must not kill the reader
            log.exception("%s: handling unsolicited line %r failed", self._name, urc.line)


def params(line: str) -> list[str]:
    """The comma-separated parameters after a result line's ``+XYZ:``."""
    return [p.strip() for p in line.split(":", 1)[1].split(",")] if ":" in line else []


def number(text: str, max_digits: int = 6) -> int | None:
    """A decimal parameter the modem sent, or None if it is not a small one. A hostile or
    broken modem must not get a ValueError out of us: ``'²'.isdigit()`` is true but
    ``int('²')`` fails, and int() refuses more than 4,300 digits."""
    if 0 < len(text) <= max_digits and text.isascii() and text.isdigit():
        return int(text)
    return None


def open_error_hint(exc: BaseException) -> str:
    """A PBX admin's next step for a port that will not open."""
    text = str(exc)
    if isinstance(exc, PermissionError) or "Permission denied" in text or "[Errno 13]" in text:
        return f"{text} (is the service user in the dialout group? see the README, 'Sending through a GSM modem')"
    if "No such file" in text or "[Errno 2]" in text:
        return f"{text} (modem unplugged, or a different /dev name: prefer /dev/serial/by-id/...)"
    if "lock" in text.lower() or "[Errno 11]" in text:
        return f"{text} (another program holds the port: ModemManager? see the README, 'Sending through a GSM modem')"
    return text


__all__ = ["ATChannel", "Urc", "number", "open_error_hint", "params"]

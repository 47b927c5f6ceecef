"""GSM modem transport: texts go out as PDUs through ``AT+CMGS``, status reports and
replies come back as ``+CDS`` / ``+CMTI``.

One supervisor task owns the modem's life: open the port, initialise, wait for the
network, then poll signal and registration and handle what the modem announces. When the
modem stops answering or the device disappears (USB re-plug), it closes the port and
starts again with backoff; `send` meanwhile answers *transient*, so the outbox simply
keeps the texts queued.
"""
from __future__ import annotations

import asyncio
import logging
import random
import re
from collections import OrderedDict
from typing import Any

from ..logutil import fields
from ..model import DeliveryReport, InboundMessage, OutboundMessage, SubmitOutcome
from ..rules.encoding import split_segments
from ..transport import Transport, TransportEvents
from . import pdu
from .at import ATChannel, Urc, open_error_hint
from .config import ModemSettings
from .errors import CommandError, CommandTimeout, ModemError, PortClosed

log = logging.getLogger(__name__)

# AT+CNMI settings to try, best first: status reports straight to us (+CDS), then stored
# with a notice (+CDSI), for modems that refuse one or the other.
CNMI_CHOICES = ("2,1,0,1,0", "2,1,0,2,0", "1,1,0,1,0", "1,1,0,2,0")
CNMI_NO_REPORTS = ("2,1,0,0,0", "1,1,0,0,0")

# +CREG/+CEREG <stat> (3GPP TS 27.007 7.2, 10.1.22).
REG_STATES = {0: "not registered, not searching", 1: "registered (home)", 2: "searching",
              3: "registration denied", 4: "unknown", 5: "registered (roaming)",
              6: "registered for SMS only (home)", 7: "registered for SMS only (roaming)",
              8: "emergency calls only", 9: "registered (home, CSFB not preferred)",
              10: "registered (roaming, CSFB not preferred)"}
# Every state in which the network takes texts: LTE modems often say "SMS only".
REGISTERED_STATES = frozenset({1, 5, 6, 7, 9, 10})

# What modems say when they (re)start; settings such as PDU mode are gone by then. (A
# SIM800 also says "SMS Ready" a few seconds after a PIN; that costs one extra re-init.)
RESTART_URCS = frozenset({"RDY", "SMS READY", "CALL READY", "+PBREADY"})

PART_RETRIES = 2  # for parts after the first, whose message is already half out
INBOUND_PARTS_KEPT = 100

_INDEX_URC = re.compile(r'^\+(CMTI|CDSI):\s*"?([A-Z]*)"?\s*,\s*(\d+)', re.IGNORECASE)


class SimLocked(ModemError):
    """The SIM needs a PIN we do not have, rejected ours, or wants the PUK. Retrying on
    our own could lock it for good, so the transport stops until the config is fixed."""


def _params(line: str) -> list[str]:
    return [p.strip() for p in line.split(":", 1)[1].split(",")] if ":" in line else []


def _reg_from_query(line: str) -> int | None:
    """``+CREG: <n>,<stat>[,...]`` (the answer to AT+CREG?) → stat."""
    p = _params(line)
    if len(p) >= 2 and p[0].isdigit() and p[1].isdigit():
        return int(p[1])
    return None


def _reg_from_urc(line: str) -> int | None:
    """``+CREG: <stat>[,"<lac>","<ci>"[,<AcT>]]`` (unsolicited) → stat."""
    p = _params(line)
    if p and p[0].isdigit() and (len(p) == 1 or p[1].startswith('"')):
        return int(p[0])
    return None


class ModemTransport(Transport):
    max_in_flight = 1

    def __init__(self, settings: ModemSettings, name: str = "modem") -> None:
        super().__init__(name)
        self.settings = settings
        self._events: TransportEvents | None = None
        self._channel: ATChannel | None = None
        self._supervisor: asyncio.Task | None = None
        self._ready = asyncio.Event()
        # Ready, or clearly not soon: no device, SIM locked, init failed, no network for
        # registration_timeout. start() waits for it so that `send-test` and the first
        # texts after boot do not meet a modem that is still registering.
        self._settled = asyncio.Event()
        self._closing = False
        self._closing_event = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._work: asyncio.Queue[tuple[str, str, int]] = asyncio.Queue()
        self._next_send_at = 0.0
        self._concat_ref = random.randrange(256)
        self._inbound_parts: OrderedDict[tuple[str, int, int], dict[int, str]] = OrderedDict()
        self._storage = ""
        self._background: set[asyncio.Task] = set()
        self._reset_reason = ""
        self._no_cereg = False
        self._open_error = ""
        self.state = "stopped"
        self.last_error = ""
        self.registration: int | None = None
        self.rssi: int | None = None
        self.resets = 0
        self.parts_sent = 0

    # --- Transport ---------------------------------------------------------------------

    async def start(self, events: TransportEvents) -> None:
        self._events = events
        self._closing = False
        self._closing_event.clear()
        self._settled.clear()
        log.info("%s: starting on %s", self.name, self.settings.device,
                 extra=fields(transport=self.name))
        self._supervisor = asyncio.create_task(self._supervise(), name=f"modem-{self.name}")
        s = self.settings
        try:
            async with asyncio.timeout(3 * s.command_timeout + min(s.registration_timeout, 30.0)):
                await self._settled.wait()
        except TimeoutError:
            pass  # still trying in the background; send() answers transient meanwhile

    async def wait_ready(self, timeout: float | None = None) -> bool:
        """True once the modem can take sends (for the CLI's send-test and for tests)."""
        try:
            async with asyncio.timeout(timeout):
                await self._ready.wait()
            return True
        except TimeoutError:
            return False

    async def send(self, message: OutboundMessage) -> SubmitOutcome:
        async with self._send_lock:
            return await self._send(message)

    async def close(self) -> None:
        self._closing = True
        self._closing_event.set()
        self._ready.clear()
        try:
            # Let an in-flight send finish: a part half handed to the modem is the worst
            # moment to pull the port. Bounded well inside systemd's TimeoutStopSec.
            async with asyncio.timeout(min(self.settings.send_timeout, 10.0)):
                await self._send_lock.acquire()
            self._send_lock.release()
        except TimeoutError:
            log.warning("%s: a send did not finish before close", self.name)
        if self._supervisor is not None:
            # Repeated: a cancel that arrives just as an awaited answer does can be
            # swallowed by library code (Python 3.11's wait_for() did it).
            while not self._supervisor.done():
                self._supervisor.cancel()
                await asyncio.wait({self._supervisor}, timeout=0.5)
            self._supervisor = None
        await self._close_channel()
        self._set_state("stopped")

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": "modem",
            "device": self.settings.device,
            "state": self.state,
            "ready": self._ready.is_set(),
            "registration": REG_STATES.get(self.registration, "unknown") if self.registration is not None else "unknown",
            "signal_rssi": self.rssi,
            "signal_dbm": None if self.rssi is None else -113 + 2 * self.rssi,
            "last_error": self.last_error,
            "resets": self.resets,
            "parts_sent": self.parts_sent,
        }

    # --- sending -----------------------------------------------------------------------

    async def _send(self, message: OutboundMessage) -> SubmitOutcome:
        log_fields = fields(transport=self.name, msg_id=message.id, call_id=message.call_id,
                            recipient=message.destination)
        if self._closing:
            return SubmitOutcome.transient("modem transport is closing")
        if not self._ready.is_set():
            return SubmitOutcome.transient(f"modem not ready ({self.state}{': ' + self.last_error if self.last_error else ''})",
                                           retry_after=min(30.0, self.settings.poll_interval))
        try:
            pieces = split_segments(message.text, message.encoding)
            self._concat_ref = (self._concat_ref + 1) % 256
            parts = pdu.build_message(
                message.destination, pieces, message.encoding, reference=self._concat_ref,
                status_report=self.settings.status_reports,
                validity_minutes=self.settings.validity_minutes or None)
        except ValueError as exc:
            return SubmitOutcome.permanent(f"cannot encode for the modem: {exc}")
        problem = await self._check_pdu_mode()
        if problem:
            return SubmitOutcome.transient(problem)
        if message.sender:
            log.debug("%s: sender id %r ignored: a modem always sends from its SIM's number",
                      self.name, message.sender, extra=log_fields)
        log.debug("%s: text for %s: %r", self.name, message.destination, message.text, extra=log_fields)
        ids: list[str] = []
        for index, part in enumerate(parts):
            tries = 1 if index == 0 else 1 + PART_RETRIES
            for attempt in range(1, tries + 1):
                outcome = await self._send_part(part, index, len(parts), log_fields)
                if isinstance(outcome, str):
                    ids.append(outcome)
                    break
                if outcome.kind == "permanent" or attempt == tries:
                    return self._partial(outcome, ids, len(parts), message, log_fields)
                log.warning("%s: part %d/%d: %s; trying that part again", self.name, index + 1,
                            len(parts), outcome.reason, extra=log_fields)
                if not self._ready.is_set() and not await self._resume():
                    return self._partial(outcome, ids, len(parts), message, log_fields)
        log.info("%s: sent %d part(s) to %s, reference(s) %s", self.name, len(ids),
                 message.destination, ",".join(ids), extra=log_fields)
        return SubmitOutcome.submitted(*ids)

    async def _check_pdu_mode(self) -> str:
        """A modem that restarted on its own (power dip, firmware watchdog) comes back in
        text mode, where AT+CMGS=<length> would text our hex to the number <length>. One
        cheap query per message rules that out. Returns a problem, or ""."""
        channel = self._channel
        if channel is None:
            return f"modem not ready ({self.state})"
        try:
            lines = await channel.command("AT+CMGF?", prefix="+CMGF:", timeout=self.settings.command_timeout)
        except CommandError:
            return ""  # a modem that cannot say; it took AT+CMGF=0 at initialisation
        except CommandTimeout as exc:
            self._request_reset(str(exc))
            return "modem stopped answering"
        except PortClosed as exc:
            self._ready.clear()
            return f"modem disappeared: {exc}"
        mode = _params(lines[0])[0] if lines and _params(lines[0]) else ""
        if mode != "0":
            self._request_reset(f"the modem is in text mode (AT+CMGF: {mode or '?'}): it restarted on its own")
            return "modem restarted on its own; re-initialising"
        return ""

    async def _resume(self) -> bool:
        """Mid-message, the modem is being reset or re-plugged: the first parts are out, so
        wait for it (bounded) and send the rest under the same concatenation reference,
        which the phone still joins to them."""
        s = self.settings
        ready = asyncio.ensure_future(self._ready.wait())
        closing = asyncio.ensure_future(self._closing_event.wait())
        try:
            await asyncio.wait({ready, closing}, timeout=min(120.0, 3 * s.command_timeout + s.reopen_max_seconds),
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            closing.cancel()
        return self._ready.is_set() and not self._closing

    def _partial(self, outcome: SubmitOutcome, ids: list[str], total: int, message: OutboundMessage,
                 log_fields: dict) -> SubmitOutcome:
        if not ids:
            log.warning("%s: not sent to %s: %s (%s)", self.name, message.destination,
                        outcome.reason, outcome.kind, extra=log_fields)
            return outcome
        # Some parts are already on their way: a retry would send them twice, so this
        # message ends here, and the reason says what the recipient got.
        reason = f"only {len(ids)} of {total} parts sent (references {','.join(ids)}): {outcome.reason}"
        log.error("%s: %s to %s; not retried, to avoid a double text", self.name, reason,
                  message.destination, extra=log_fields)
        return SubmitOutcome.permanent(reason)

    async def _send_part(self, part: pdu.SubmitPdu, index: int, total: int,
                         log_fields: dict) -> str | SubmitOutcome:
        await self._pace()
        channel = self._channel
        if channel is None or not self._ready.is_set():
            return SubmitOutcome.transient(f"modem not ready ({self.state})")
        s = self.settings
        try:
            lines = await channel.send_pdu(part.tpdu_length, part.hex,
                                           prompt_timeout=s.command_timeout, timeout=s.send_timeout)
        except CommandError as exc:
            info = exc.info
            kind = SubmitOutcome.permanent if info.permanent else SubmitOutcome.transient
            return kind(f"modem refused part {index + 1}/{total}: {info}")
        except CommandTimeout as exc:
            self._request_reset(str(exc))
            if not any(line.upper().startswith("+CMGS:") for line in exc.lines):
                # The modem may or may not have sent it; it is hung either way. A retry
                # risks a duplicate, which beats losing the text.
                return SubmitOutcome.transient(f"modem stopped answering while sending part {index + 1}/{total}")
            lines = exc.lines  # it had said +CMGS: <mr>, so the part is out; only the OK is missing
        except PortClosed as exc:
            self._ready.clear()  # before the supervisor notices, so a retry waits for the reopen
            return SubmitOutcome.transient(f"modem disappeared while sending: {exc}")
        finally:
            self._next_send_at = asyncio.get_running_loop().time() + s.send_interval
        for line in lines:
            p = _params(line)
            if p and p[0].isdigit():
                self.parts_sent += 1
                return p[0]
        # OK without a reference: sent, but no report can ever be matched to it.
        log.warning("%s: AT+CMGS answered OK without +CMGS: <mr>; delivery report cannot be matched",
                    self.name, extra=log_fields)
        self.parts_sent += 1
        return f"noref-{random.getrandbits(32):08x}"

    async def _pace(self) -> None:
        loop = asyncio.get_running_loop()
        wait = self._next_send_at - loop.time()
        if wait > 0:
            # Rate limiting, not synchronisation: the network and the modem only take a
            # few texts a minute.
            await asyncio.sleep(wait)

    # --- life of the modem -------------------------------------------------------------

    def _set_state(self, state: str, error: str = "") -> None:
        self.state = state
        if error:
            self.last_error = error
        elif state == "ready":
            self.last_error = ""

    async def _supervise(self) -> None:
        s = self.settings
        first_delay = min(1.0, s.reopen_max_seconds)
        delay = first_delay
        attempt = 0
        while not self._closing:
            attempt += 1
            self._set_state("opening")
            self._reset_reason = ""
            try:
                self._channel = await ATChannel.open(s.device, s.baud, self._on_urc, rtscts=s.rtscts,
                                                     name=self.name)
            except Exception as exc:  # OSError, SerialException, termios trouble: all "not usable now"
                hint = open_error_hint(exc)
                self._set_state("device unavailable", hint)
                # Loud when the reason is new, quiet while it stays the same (a modem
                # unplugged overnight).
                level = logging.WARNING if hint != self._open_error else logging.DEBUG
                self._open_error = hint
                log.log(level, "%s: cannot open %s: %s; retrying in %g s", self.name, s.device,
                        hint, delay, extra=fields(transport=self.name))
                self._settled.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, s.reopen_max_seconds)
                continue
            self._open_error = ""
            if attempt > 1:
                self.resets += 1
            try:
                await self._initialise()
                delay = first_delay
                await self._serve()
            except SimLocked as exc:
                self._set_state("SIM locked", str(exc))
                log.error("%s: %s", self.name, exc, extra=fields(transport=self.name))
                self._settled.set()
                await self._close_channel()
                # Nothing we can do alone; the admin fixes the config and restarts.
                await asyncio.Event().wait()
            except CommandTimeout as exc:
                self._set_state("not answering", str(exc))
                log.warning("%s: stopped answering (%s); reopening and re-initialising", self.name,
                            exc, extra=fields(transport=self.name))
            except PortClosed as exc:
                if self._reset_reason:
                    self._set_state("not answering", self._reset_reason)
                    log.info("%s: port closed for a reset; reopening and re-initialising", self.name,
                             extra=fields(transport=self.name))
                else:
                    self._set_state("device unavailable", str(exc))
                    log.warning("%s: %s; waiting for it to come back", self.name, exc,
                                extra=fields(transport=self.name))
            except CommandError as exc:
                self._set_state("initialisation failed", str(exc))
                log.warning("%s: initialisation failed: %s; retrying in %g s", self.name, exc,
                            delay, extra=fields(transport=self.name))
            except Exception as exc:  # a bug must not leave the modem silently dead
                self._set_state("internal error", repr(exc))
                log.exception("%s: unexpected error; reopening the modem", self.name,
                              extra=fields(transport=self.name))
            finally:
                self._ready.clear()
            self._settled.set()
            await self._close_channel()
            if self._closing:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, s.reopen_max_seconds)

    async def _close_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()

    def _request_reset(self, reason: str) -> None:
        self._ready.clear()
        self._reset_reason = reason
        channel = self._channel
        if channel is not None and channel.is_open:
            log.warning("%s: %s; resetting", self.name, reason, extra=fields(transport=self.name))
            task = asyncio.get_running_loop().create_task(channel.close())
            # The loop keeps only a weak reference to a task.
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _cmd(self, command: str, **kw: Any) -> list[str]:
        assert self._channel is not None
        return await self._channel.command(command, timeout=kw.pop("timeout", self.settings.command_timeout), **kw)

    async def _initialise(self) -> None:
        s = self.settings
        self._set_state("initialising")
        self._storage = ""
        self._no_cereg = False
        while not self._work.empty():
            self._work.get_nowait()
        await self._sync()
        await self._cmd("ATZ")
        await self._cmd("ATE0")
        await self._cmd("AT+CMEE=1")
        await self._unlock_sim()
        await self._cmd("AT+CMGF=0")
        try:
            # Phase 2 message service: +CDS/+CMT need no +CNMA acknowledgement, which a
            # phase 2+ modem would otherwise wait for before reporting the next one.
            await self._cmd("AT+CSMS=0", prefix="+CSMS:")
        except CommandError:
            pass
        if s.smsc:
            toa = 145 if s.smsc.startswith("+") else 129
            await self._cmd(f'AT+CSCA="{s.smsc}",{toa}')
        await self._set_cnmi()
        for extra in s.init_commands:
            try:
                await self._cmd(extra)
            except CommandError as exc:
                log.warning("%s: init command %s failed: %s", self.name, extra, exc.info,
                            extra=fields(transport=self.name))
        await self._wait_for_network()
        await self._read_signal()
        await self._read_stored()
        self._set_state("ready")
        self._ready.set()
        self._settled.set()
        log.info("%s: ready (%s, signal %s)", self.name, REG_STATES.get(self.registration or 0),
                 self._signal_text(), extra=fields(transport=self.name))

    async def _sync(self) -> None:
        """Get the modem to a clean command line: whatever a crash or a hang left half typed
        (a PDU without its Ctrl-Z) makes the first AT fail, the next one answers OK."""
        for attempt in range(3):
            try:
                await self._cmd("AT")
                return
            except CommandError:
                if attempt == 2:
                    raise
            except CommandTimeout:
                raise CommandTimeout("AT (no answer at all: the modem's AT port? the baud rate? still booting?)",
                                     self.settings.command_timeout) from None

    async def _unlock_sim(self) -> None:
        s = self.settings
        pin_sent = False
        for _ in range(10):
            lines = await self._cmd("AT+CPIN?", prefix="+CPIN:")
            state = _params(lines[0])[0].upper() if lines and _params(lines[0]) else ""
            if state == "READY":
                return
            if state == "SIM PIN" and pin_sent:
                # The SIM is still taking the PIN in; a second entry could count as a
                # wrong try.
                await asyncio.sleep(1.0)
                continue
            if state == "SIM PIN":
                pin_sent = True
                if not s.pin:
                    raise SimLocked("the SIM asks for a PIN and none is configured (set pin in [transport])")
                try:
                    await self._cmd(f'AT+CPIN="{s.pin}"', log_as="AT+CPIN=<redacted>")
                except CommandError as exc:
                    raise SimLocked(f"the SIM rejected the configured PIN ({exc.info}); not trying again, "
                                    "as three wrong PINs lock the SIM (PUK)") from None
                log.info("%s: SIM unlocked with the configured PIN", self.name,
                         extra=fields(transport=self.name))
                continue
            if "PUK" in state:
                raise SimLocked(f"the SIM wants its {state}: unlock it in a phone, then restart")
            if state:
                raise SimLocked(f"the SIM asks for {state}, which aftercalld cannot give")
            await asyncio.sleep(0.5)
        raise CommandError("AT+CPIN?", "+CME ERROR: 14")  # SIM busy: start over

    async def _set_cnmi(self) -> None:
        choices = CNMI_CHOICES if self.settings.status_reports else CNMI_NO_REPORTS
        for choice in choices:
            try:
                await self._cmd(f"AT+CNMI={choice}")
                return
            except CommandError:
                continue
        log.warning("%s: the modem takes none of AT+CNMI=%s; incoming texts and status reports "
                    "will only be seen after a restart", self.name, "/".join(choices),
                    extra=fields(transport=self.name))

    async def _registration(self) -> int | None:
        best: int | None = None
        for command, prefix in (("AT+CREG?", "+CREG:"), ("AT+CEREG?", "+CEREG:")):
            if command == "AT+CEREG?" and (best in REGISTERED_STATES or self._no_cereg):
                continue
            try:
                lines = await self._cmd(command, prefix=prefix)
            except CommandError:
                if command == "AT+CEREG?":
                    self._no_cereg = True  # a 2G/3G modem: don't ask at every poll
                continue
            for line in lines:
                stat = _reg_from_query(line)
                if stat is None:
                    self._on_urc(Urc(line))  # an unsolicited one that arrived mid-answer
                elif best not in REGISTERED_STATES:
                    best = stat
        self.registration = best
        return best

    async def _wait_for_network(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        started = loop.time()
        warned = False
        while True:
            stat = await self._registration()
            if stat in REGISTERED_STATES:
                return
            self._set_state("waiting for network", f"registration: {REG_STATES.get(stat, 'unknown')}")
            if not warned and loop.time() - started >= s.registration_timeout:
                warned = True
                self._settled.set()
                log.warning("%s: not registered after %g s (%s); check the SIM, antenna and coverage",
                            self.name, s.registration_timeout, REG_STATES.get(stat, "unknown"),
                            extra=fields(transport=self.name))
            await asyncio.sleep(min(s.poll_interval, 2.0))

    async def _read_signal(self) -> None:
        lines = await self._cmd("AT+CSQ", prefix="+CSQ:")
        p = _params(lines[0]) if lines else []
        if p and p[0].isdigit():
            rssi = int(p[0])
            self.rssi = None if rssi == 99 else rssi

    def _signal_text(self) -> str:
        return "unknown" if self.rssi is None else f"{-113 + 2 * self.rssi} dBm"

    async def _serve(self) -> None:
        """Until the port goes away or the modem stops answering: handle what the modem
        announced, and check signal and registration when idle."""
        s = self.settings
        assert self._channel is not None
        closed = asyncio.ensure_future(self._channel.wait_closed())
        try:
            while not self._closing:
                job = asyncio.ensure_future(self._work.get())
                try:
                    done, _ = await asyncio.wait({job, closed}, timeout=s.poll_interval,
                                                 return_when=asyncio.FIRST_COMPLETED)
                finally:
                    if not job.done():
                        job.cancel()
                if closed in done:
                    raise PortClosed(f"serial port lost: {self._channel.close_reason if self._channel else ''}")
                if job in done:
                    kind, memory, index = job.result()
                    await self._read_one(memory, index)
                    continue
                await self._poll()
        finally:
            closed.cancel()

    async def _poll(self) -> None:
        await self._read_signal()
        stat = await self._registration()
        if stat in REGISTERED_STATES:
            if not self._ready.is_set():
                log.info("%s: registered again (%s)", self.name, REG_STATES[stat],
                         extra=fields(transport=self.name))
                self._set_state("ready")
                self._ready.set()
        elif self._ready.is_set():
            self._ready.clear()
            self._set_state("waiting for network", f"registration: {REG_STATES.get(stat, 'unknown')}")
            log.warning("%s: lost the network (%s); texts wait in the outbox", self.name,
                        REG_STATES.get(stat, "unknown"), extra=fields(transport=self.name))

    # --- what the modem tells us -------------------------------------------------------

    def _on_urc(self, urc: Urc) -> None:
        line = urc.line
        upper = line.upper()
        m = _INDEX_URC.match(line)
        if m:
            self._work.put_nowait((m.group(1).upper(), m.group(2).upper(), int(m.group(3))))
        elif upper.startswith("+CDS:"):
            self._handle_pdu(urc.pdu, _length(line))
        elif upper.startswith("+CMT:"):
            self._handle_pdu(urc.pdu, _length(line))
        elif upper.startswith(("+CREG:", "+CEREG:")):
            stat = _reg_from_urc(line)
            if stat is not None:
                log.debug("%s: registration now %s", self.name, REG_STATES.get(stat, stat))
        elif upper in RESTART_URCS or upper.startswith("+CFUN:"):
            if self._ready.is_set():
                self._request_reset(f"the modem announced a restart ({line})")
        elif upper in ("RING", "NO CARRIER") or upper.startswith(("+CLIP:", "+CRING:")):
            log.debug("%s: ignoring a voice call indication: %s", self.name, line)
        else:
            log.debug("%s: ignoring line %r", self.name, line)

    async def _read_one(self, memory: str, index: int) -> None:
        if memory and memory != self._storage:
            try:
                await self._cmd(f'AT+CPMS="{memory}"', prefix="+CPMS:")
                self._storage = memory
            except CommandError as exc:
                log.warning("%s: cannot select storage %s: %s", self.name, memory, exc.info)
        try:
            lines = await self._cmd(f"AT+CMGR={index}", prefix="+CMGR:", with_pdu=True)
        except CommandError as exc:
            # 321: already read and deleted (at start, or the modem announced it twice).
            level = logging.DEBUG if exc.info.code == 321 else logging.WARNING
            log.log(level, "%s: cannot read stored message %d: %s", self.name, index, exc.info)
            return
        for header, body in zip(lines[::2], lines[1::2], strict=False):
            self._handle_pdu(body, _length(header))
        await self._delete(index)

    async def _read_stored(self) -> None:
        """Replies and reports that arrived while we were not listening."""
        try:
            lines = await self._cmd("AT+CMGL=4", prefix="+CMGL:", with_pdu=True)
        except CommandError as exc:
            log.debug("%s: cannot list stored messages: %s", self.name, exc.info)
            return
        for header, body in zip(lines[::2], lines[1::2], strict=False):
            p = _params(header)
            # <index>,<stat>,...: only received texts (0 unread, 1 read) are ours to take;
            # drafts someone stored on the SIM (2, 3) stay where they are.
            if len(p) >= 2 and p[0].isdigit() and p[1] in ("0", "1"):
                self._handle_pdu(body, _length(header))
                await self._delete(int(p[0]))

    async def _delete(self, index: int) -> None:
        try:
            await self._cmd(f"AT+CMGD={index}")
        except CommandError as exc:
            log.warning("%s: cannot delete stored message %d: %s (the SIM may fill up)",
                        self.name, index, exc.info, extra=fields(transport=self.name))

    def _handle_pdu(self, body: str, tpdu_length: int | None) -> None:
        try:
            raw = bytes.fromhex(body)
            _, tpdu = pdu.split_sca(raw, tpdu_length)
            mti = tpdu[0] & 0x03
            if mti == pdu.MTI_STATUS_REPORT:
                self._status_report(pdu.decode_status_report(raw, tpdu_length), body)
            elif mti == pdu.MTI_DELIVER:
                self._inbound(pdu.decode_deliver(raw, tpdu_length))
            else:
                log.warning("%s: ignoring a stored PDU of type %d", self.name, mti)
        except (ValueError, IndexError) as exc:
            log.warning("%s: cannot decode PDU %r: %s", self.name, body[:80], exc,
                        extra=fields(transport=self.name))

    def _status_report(self, report: pdu.StatusReport, raw: str) -> None:
        state = pdu.report_state(report.status)
        log.info("%s: status report for reference %d to %s: %s (TP-ST 0x%02X)", self.name,
                 report.message_reference, report.recipient, report.meaning, report.status,
                 extra=fields(transport=self.name, recipient=report.recipient, state=state.value))
        if self._events is not None:
            self._events.delivery_report(DeliveryReport(
                transport=self.name, message_id=str(report.message_reference), state=state,
                error="" if report.status == 0 else f"st:{report.status:02X} {report.meaning}", raw=raw))

    def _inbound(self, sms: pdu.Deliver) -> None:
        text = sms.text
        if sms.concat is not None and sms.concat.total > 1:
            key = (sms.sender, sms.concat.reference, sms.concat.total)
            parts = self._inbound_parts.setdefault(key, {})
            parts[sms.concat.sequence] = sms.text
            if len(parts) < sms.concat.total:
                while len(self._inbound_parts) > INBOUND_PARTS_KEPT:
                    (old_sender, _, old_total), old = self._inbound_parts.popitem(last=False)
                    # Better half a STOP than none: pass on what arrived.
                    log.warning("%s: reply from %s never completed (%d of %d parts)", self.name,
                                old_sender, len(old), old_total)
                    self._emit_inbound(old_sender, "".join(old[k] for k in sorted(old)))
                return
            del self._inbound_parts[key]
            text = "".join(parts[k] for k in sorted(parts))
        self._emit_inbound(sms.sender, text)

    def _emit_inbound(self, sender: str, text: str) -> None:
        log.info("%s: reply from %s", self.name, sender,
                 extra=fields(transport=self.name, recipient=sender))
        log.debug("%s: reply text %r", self.name, text)
        if self._events is not None:
            self._events.inbound_message(InboundMessage(transport=self.name, sender=sender, text=text))


def _length(header: str) -> int | None:
    """The TPDU length: the last field of +CMGR/+CMGL/+CMT/+CDS headers."""
    p = _params(header)
    return int(p[-1]) if p and p[-1].isdigit() else None


__all__ = ["ModemTransport", "SimLocked"]

"""The modem's life: open the port, initialise, unlock the SIM, wait for the network, then
poll signal and registration and let the inbox read what the modem announced. When the
modem stops answering or the device disappears (USB re-plug), the link closes the port and
starts again with backoff; `ready` is clear meanwhile, so the transport answers
*transient* and the outbox keeps the texts queued.

One task owns the port's life; sends share the port through the AT channel's lock.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..logutil import fields
from .at import ATChannel, Urc, number, open_error_hint, params
from .config import ModemSettings
from .errors import CommandError, CommandTimeout, ModemError, PortClosed
from .inbox import ModemInbox

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


class SimLocked(ModemError):
    """The SIM needs a PIN we do not have, rejected ours, or wants the PUK. Retrying on
    our own could lock it for good, so the transport stops until the config is fixed."""


def registration_text(stat: int | None) -> str:
    return "unknown" if stat is None else REG_STATES.get(stat, "unknown")


def _reg_from_query(line: str) -> int | None:
    """``+CREG: <n>,<stat>[,...]`` (the answer to AT+CREG?) → stat."""
    p = params(line)
    if len(p) >= 2 and number(p[0]) is not None:
        return number(p[1])
    return None


def _reg_from_urc(line: str) -> int | None:
    """``+CREG: <stat>[,"<lac>","<ci>"[,<AcT>]]`` (unsolicited) → stat."""
    p = params(line)
    if p and (len(p) == 1 or p[1].startswith('"')):
        return number(p[0])
    return None


class ModemLink:
    def __init__(self, settings: ModemSettings, name: str, inbox: ModemInbox) -> None:
        self.settings = settings
        self.name = name
        self.inbox = inbox
        self.channel: ATChannel | None = None
        self.ready = asyncio.Event()
        # Ready, or clearly not soon: no device, SIM locked, init failed, no network for
        # registration_timeout. start() waits for it so that `send-test` and the first
        # texts after boot do not meet a modem that is still registering.
        self._settled = asyncio.Event()
        self.closing = False
        self._closing_event = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()
        self._reset_reason = ""
        self._no_cereg = False
        self._open_error = ""
        self.state = "stopped"
        self.last_error = ""
        self.registration: int | None = None
        self.rssi: int | None = None
        self.resets = 0

    # --- from the transport ------------------------------------------------------------

    async def start(self) -> None:
        self.closing = False
        self._closing_event.clear()
        self._settled.clear()
        log.info("%s: starting on %s", self.name, self.settings.device, extra=fields(transport=self.name))
        self._task = asyncio.create_task(self._run(), name=f"modem-{self.name}")
        s = self.settings
        try:
            async with asyncio.timeout(3 * s.command_timeout + min(s.registration_timeout, 30.0)):
                await self._settled.wait()
        except TimeoutError:
            pass  # still trying in the background; sends answer transient meanwhile

    def begin_close(self) -> None:
        """No more sends: those in flight finish, new ones are turned away."""
        self.closing = True
        self._closing_event.set()
        self.ready.clear()

    async def stop(self) -> None:
        if self._task is not None:
            # Repeated: a cancel that arrives just as an awaited answer does can be
            # swallowed by library code (Python 3.11's wait_for() did it).
            while not self._task.done():
                self._task.cancel()
                await asyncio.wait({self._task}, timeout=0.5)
            self._task = None
        await self._close_channel()
        self._set_state("stopped")

    @property
    def task(self) -> asyncio.Task | None:
        """The task that owns the port, for a supervisor to watch."""
        return self._task

    async def wait_ready(self, timeout: float | None) -> bool:
        """True once ready, False after `timeout` or when the link is closing."""
        ready = asyncio.ensure_future(self.ready.wait())
        closing = asyncio.ensure_future(self._closing_event.wait())
        try:
            await asyncio.wait({ready, closing}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            closing.cancel()
        return self.ready.is_set() and not self.closing

    def request_reset(self, reason: str) -> None:
        self.ready.clear()
        self._reset_reason = reason
        channel = self.channel
        if channel is not None and channel.is_open:
            log.warning("%s: %s; resetting", self.name, reason, extra=fields(transport=self.name))
            task = asyncio.get_running_loop().create_task(channel.close())
            # The loop keeps only a weak reference to a task.
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def signal_text(self) -> str:
        return "unknown" if self.rssi is None else f"{-113 + 2 * self.rssi} dBm"

    # --- life of the modem -------------------------------------------------------------

    def _set_state(self, state: str, error: str = "") -> None:
        self.state = state
        if error:
            self.last_error = error
        elif state == "ready":
            self.last_error = ""

    async def _run(self) -> None:
        s = self.settings
        first_delay = min(1.0, s.reopen_max_seconds)
        delay = first_delay
        attempt = 0
        while not self.closing:
            attempt += 1
            self._set_state("opening")
            self._reset_reason = ""
            try:
                self.channel = await ATChannel.open(s.device, s.baud, self._on_urc, rtscts=s.rtscts,
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
                self.ready.clear()
            self._settled.set()
            await self._close_channel()
            if self.closing:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, s.reopen_max_seconds)

    async def _close_channel(self) -> None:
        channel, self.channel = self.channel, None
        if channel is not None:
            await channel.close()

    async def cmd(self, command: str, **kw: Any) -> list[str]:
        if self.channel is None:
            raise PortClosed("serial port is closed (not open)")
        return await self.channel.command(command, timeout=kw.pop("timeout", self.settings.command_timeout), **kw)

    async def _initialise(self) -> None:
        s = self.settings
        self._set_state("initialising")
        self._no_cereg = False
        self.inbox.restart()
        await self._sync()
        await self.cmd("ATZ")
        await self.cmd("ATE0")
        await self.cmd("AT+CMEE=1")
        await self._unlock_sim()
        await self.cmd("AT+CMGF=0")
        try:
            # Phase 2 message service: +CDS/+CMT need no +CNMA acknowledgement, which a
            # phase 2+ modem would otherwise wait for before reporting the next one.
            await self.cmd("AT+CSMS=0", prefix="+CSMS:")
        except CommandError:
            pass
        if s.smsc:
            toa = 145 if s.smsc.startswith("+") else 129
            await self.cmd(f'AT+CSCA="{s.smsc}",{toa}')
        await self._set_cnmi()
        for extra in s.init_commands:
            try:
                await self.cmd(extra)
            except CommandError as exc:
                log.warning("%s: init command %s failed: %s", self.name, extra, exc.info,
                            extra=fields(transport=self.name))
        await self._wait_for_network()
        await self._read_signal()
        await self.inbox.read_stored(self.cmd)
        self._set_state("ready")
        self.ready.set()
        self._settled.set()
        log.info("%s: ready (%s, signal %s)", self.name, REG_STATES.get(self.registration or 0),
                 self.signal_text(), extra=fields(transport=self.name))

    async def _sync(self) -> None:
        """Get the modem to a clean command line: whatever a crash or a hang left half typed
        (a PDU without its Ctrl-Z) makes the first AT fail, the next one answers OK."""
        for attempt in range(3):
            try:
                await self.cmd("AT")
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
            lines = await self.cmd("AT+CPIN?", prefix="+CPIN:")
            state = params(lines[0])[0].upper() if lines and params(lines[0]) else ""
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
                    await self.cmd(f'AT+CPIN="{s.pin}"', log_as="AT+CPIN=<redacted>")
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
                await self.cmd(f"AT+CNMI={choice}")
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
                lines = await self.cmd(command, prefix=prefix)
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
            self._set_state("waiting for network", f"registration: {registration_text(stat)}")
            if not warned and loop.time() - started >= s.registration_timeout:
                warned = True
                self._settled.set()
                log.warning("%s: not registered after %g s (%s); check the SIM, antenna and coverage",
                            self.name, s.registration_timeout, registration_text(stat),
                            extra=fields(transport=self.name))
            await asyncio.sleep(min(s.poll_interval, 2.0))

    async def _read_signal(self) -> None:
        lines = await self.cmd("AT+CSQ", prefix="+CSQ:")
        p = params(lines[0]) if lines else []
        rssi = number(p[0]) if p else None
        # 0-31, 99 unknown (27.007 8.5); anything else is not a signal level.
        self.rssi = rssi if rssi is not None and rssi <= 31 else None

    async def _serve(self) -> None:
        """Until the port goes away or the modem stops answering: let the inbox read what
        the modem announced, and check signal and registration when idle."""
        s = self.settings
        assert self.channel is not None
        closed = asyncio.ensure_future(self.channel.wait_closed())
        try:
            while not self.closing:
                job = asyncio.ensure_future(self.inbox.announced.get())
                try:
                    done, _ = await asyncio.wait({job, closed}, timeout=s.poll_interval,
                                                 return_when=asyncio.FIRST_COMPLETED)
                finally:
                    if not job.done():
                        job.cancel()
                if closed in done:
                    raise PortClosed(f"serial port lost: {self.channel.close_reason if self.channel else ''}")
                if job in done:
                    _, memory, index = job.result()
                    await self.inbox.read_one(self.cmd, memory, index)
                    continue
                await self._poll()
        finally:
            closed.cancel()

    async def _poll(self) -> None:
        await self._read_signal()
        stat = await self._registration()
        if stat in REGISTERED_STATES:
            if not self.ready.is_set():
                log.info("%s: registered again (%s)", self.name, registration_text(stat),
                         extra=fields(transport=self.name))
                self._set_state("ready")
                self.ready.set()
        elif self.ready.is_set():
            self.ready.clear()
            self._set_state("waiting for network", f"registration: {registration_text(stat)}")
            log.warning("%s: lost the network (%s); texts wait in the outbox", self.name,
                        registration_text(stat), extra=fields(transport=self.name))

    def _on_urc(self, urc: Urc) -> None:
        if self.inbox.take(urc):
            return
        line = urc.line
        upper = line.upper()
        if upper.startswith(("+CREG:", "+CEREG:")):
            stat = _reg_from_urc(line)
            if stat is not None:
                log.debug("%s: registration now %s", self.name, REG_STATES.get(stat, stat))
        elif upper in RESTART_URCS or upper.startswith("+CFUN:"):
            if self.ready.is_set():
                self.request_reset(f"the modem announced a restart ({line})")
        elif upper in ("RING", "NO CARRIER") or upper.startswith(("+CLIP:", "+CRING:")):
            log.debug("%s: ignoring a voice call indication: %s", self.name, line)
        else:
            log.debug("%s: ignoring line %r", self.name, line)


__all__ = ["REGISTERED_STATES", "REG_STATES", "ModemLink", "SimLocked", "registration_text"]

"""GSM modem transport: texts go out as PDUs through ``AT+CMGS``, status reports and
replies come back as ``+CDS`` / ``+CMTI``.

Three parts, as in `smpp/` (session apart from transport): the link (`link.py`) owns the
serial port and the modem's life — open, initialise, SIM, registration, resets; the inbox
(`inbox.py`) turns what the modem announces into delivery reports and replies; this
module sends texts and is the `Transport` the dispatcher sees.
"""
from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

from ..logutil import fields
from ..model import OutboundMessage, SubmitOutcome
from ..rules.encoding import split_segments
from ..transport import Transport, TransportEvents
from . import pdu
from .at import number, params
from .config import ModemSettings
from .errors import CommandError, CommandTimeout, PortClosed
from .inbox import ModemInbox
from .link import REGISTERED_STATES, ModemLink, SimLocked, registration_text

log = logging.getLogger(__name__)

PART_RETRIES = 2  # for parts after the first, whose message is already half out


class ModemTransport(Transport):
    max_in_flight = 1

    def __init__(self, settings: ModemSettings, name: str = "modem") -> None:
        super().__init__(name)
        self.settings = settings
        self.inbox = ModemInbox(name)
        self.link = ModemLink(settings, name, self.inbox)
        self._send_lock = asyncio.Lock()
        self._next_send_at = 0.0
        self._concat_ref = random.randrange(256)
        self.parts_sent = 0

    # What the link knows, for status() and the metrics.
    @property
    def state(self) -> str:
        return self.link.state

    @property
    def registration(self) -> int | None:
        return self.link.registration

    @property
    def rssi(self) -> int | None:
        return self.link.rssi

    @property
    def resets(self) -> int:
        return self.link.resets

    # --- Transport ---------------------------------------------------------------------

    async def start(self, events: TransportEvents) -> None:
        self.inbox.events = events
        await self.link.start()

    def is_up(self) -> bool:
        return self.link.ready.is_set() and not self.link.closing

    async def wait_ready(self, timeout: float | None = None) -> bool:
        """True once the modem can take sends (for the CLI's send-test and for tests)."""
        try:
            async with asyncio.timeout(timeout):
                await self.link.ready.wait()
            return True
        except TimeoutError:
            return False

    async def send(self, message: OutboundMessage) -> SubmitOutcome:
        async with self._send_lock:
            return await self._send(message)

    async def close(self) -> None:
        self.link.begin_close()
        try:
            # Let an in-flight send finish: a part half handed to the modem is the worst
            # moment to pull the port. Bounded well inside systemd's TimeoutStopSec.
            async with asyncio.timeout(min(self.settings.send_timeout, 10.0)):
                await self._send_lock.acquire()
            self._send_lock.release()
        except TimeoutError:
            log.warning("%s: a send did not finish before close", self.name)
        await self.link.stop()

    def status(self) -> dict[str, Any]:
        link = self.link
        return {
            "name": self.name,
            "type": "modem",
            "device": self.settings.device,
            "state": link.state,
            "ready": link.ready.is_set(),
            "registration": registration_text(link.registration),
            "signal_rssi": link.rssi,
            "signal_dbm": None if link.rssi is None else -113 + 2 * link.rssi,
            "last_error": link.last_error,
            "resets": link.resets,
            "parts_sent": self.parts_sent,
        }

    # --- sending -----------------------------------------------------------------------

    async def _send(self, message: OutboundMessage) -> SubmitOutcome:
        log_fields = fields(transport=self.name, msg_id=message.id, call_id=message.call_id,
                            recipient=message.destination)
        if self.link.closing:
            return SubmitOutcome.transient("modem transport is closing")
        if not self.link.ready.is_set():
            error = self.link.last_error
            return SubmitOutcome.transient(f"modem not ready ({self.link.state}{': ' + error if error else ''})",
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
                if not self.link.ready.is_set() and not await self._resume():
                    return self._partial(outcome, ids, len(parts), message, log_fields)
        log.info("%s: sent %d part(s) to %s, reference(s) %s", self.name, len(ids),
                 message.destination, ",".join(ids), extra=log_fields)
        return SubmitOutcome.submitted(*ids)

    async def _check_pdu_mode(self) -> str:
        """A modem that restarted on its own (power dip, firmware watchdog) comes back in
        text mode, where AT+CMGS=<length> would text our hex to the number <length>. One
        cheap query per message rules that out. Returns a problem, or ""."""
        channel = self.link.channel
        if channel is None:
            return f"modem not ready ({self.link.state})"
        try:
            lines = await channel.command("AT+CMGF?", prefix="+CMGF:", timeout=self.settings.command_timeout)
        except CommandError:
            return ""  # a modem that cannot say; it took AT+CMGF=0 at initialisation
        except CommandTimeout as exc:
            self.link.request_reset(str(exc))
            return "modem stopped answering"
        except PortClosed as exc:
            self.link.ready.clear()
            return f"modem disappeared: {exc}"
        mode = params(lines[0])[0] if lines and params(lines[0]) else ""
        if mode != "0":
            self.link.request_reset(f"the modem is in text mode (AT+CMGF: {mode or '?'}): it restarted on its own")
            return "modem restarted on its own; re-initialising"
        return ""

    async def _resume(self) -> bool:
        """Mid-message, the modem is being reset or re-plugged: the first parts are out, so
        wait for it (bounded) and send the rest under the same concatenation reference,
        which the phone still joins to them."""
        s = self.settings
        return await self.link.wait_ready(min(120.0, 3 * s.command_timeout + s.reopen_max_seconds))

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
        return SubmitOutcome.permanent(reason, partly_sent=True)

    async def _send_part(self, part: pdu.SubmitPdu, index: int, total: int,
                         log_fields: dict) -> str | SubmitOutcome:
        await self._pace()
        channel = self.link.channel
        if channel is None or not self.link.ready.is_set():
            return SubmitOutcome.transient(f"modem not ready ({self.link.state})")
        s = self.settings
        try:
            lines = await channel.send_pdu(part.tpdu_length, part.hex,
                                           prompt_timeout=s.command_timeout, timeout=s.send_timeout)
        except CommandError as exc:
            info = exc.info
            kind = SubmitOutcome.permanent if info.permanent else SubmitOutcome.transient
            return kind(f"modem refused part {index + 1}/{total}: {info}")
        except CommandTimeout as exc:
            self.link.request_reset(str(exc))
            if not any(line.upper().startswith("+CMGS:") for line in exc.lines):
                # The modem may or may not have sent it; it is hung either way. A retry
                # risks a duplicate, which beats losing the text.
                return SubmitOutcome.transient(f"modem stopped answering while sending part {index + 1}/{total}")
            lines = exc.lines  # it had said +CMGS: <mr>, so the part is out; only the OK is missing
        except PortClosed as exc:
            self.link.ready.clear()  # before the link notices, so a retry waits for the reopen
            return SubmitOutcome.transient(f"modem disappeared while sending: {exc}")
        finally:
            self._next_send_at = asyncio.get_running_loop().time() + s.send_interval
        for line in lines:
            p = params(line)
            reference = number(p[0], max_digits=3) if p else None
            if reference is not None and reference <= 255:  # TP-MR is one octet
                self.parts_sent += 1
                return str(reference)
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


__all__ = ["REGISTERED_STATES", "ModemTransport", "SimLocked"]

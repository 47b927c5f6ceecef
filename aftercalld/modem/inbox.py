"""What the modem tells us about texts: status reports and replies, announced inline
(``+CDS`` / ``+CMT`` with their PDU) or stored with a notice (``+CDSI`` / ``+CMTI``) to
be read with ``AT+CMGR`` and deleted. Decoded reports and replies go to the transport's
events; concatenated replies are joined here.

The inbox never talks to the port on its own: the link owns it, and calls `read_one` /
`read_stored` between commands, handing over its command function.
"""
from __future__ import annotations

import asyncio
import logging
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from ..logutil import fields
from ..model import DeliveryReport, InboundMessage
from ..transport import TransportEvents
from . import pdu
from .at import Urc, number, params
from .errors import CommandError

log = logging.getLogger(__name__)

INBOUND_PARTS_KEPT = 100

_INDEX_URC = re.compile(r'^\+(CMTI|CDSI):\s*"?([A-Z]*)"?\s*,\s*(\d+)', re.IGNORECASE | re.ASCII)

# The link's AT command function: command, then ATChannel.command's keywords.
Command = Callable[..., Awaitable[list[str]]]


class ModemInbox:
    def __init__(self, name: str) -> None:
        self.name = name
        self.events: TransportEvents | None = None
        # (kind, memory, index) of stored texts announced and not yet read.
        self.announced: asyncio.Queue[tuple[str, str, int]] = asyncio.Queue()
        self._storage = ""
        self._inbound_parts: OrderedDict[tuple[str, int, int], dict[int, str]] = OrderedDict()

    def restart(self) -> None:
        """The modem (re)starts: its storage selection is gone, and `read_stored` will
        find whatever was announced before."""
        self._storage = ""
        while not self.announced.empty():
            self.announced.get_nowait()

    def take(self, urc: Urc) -> bool:
        """Handle an unsolicited line if it is about a text; False if it is not."""
        line = urc.line
        m = _INDEX_URC.match(line)
        if m:
            index = number(m.group(3))
            if index is None:
                log.warning("%s: ignoring +%s with an impossible index (%d digits)", self.name,
                            m.group(1).upper(), len(m.group(3)), extra=fields(transport=self.name))
            else:
                self.announced.put_nowait((m.group(1).upper(), m.group(2).upper(), index))
            return True
        if line.upper().startswith(("+CDS:", "+CMT:")):
            self._handle_pdu(urc.pdu, _length(line))
            return True
        return False

    async def read_one(self, cmd: Command, memory: str, index: int) -> None:
        if memory and memory != self._storage:
            try:
                await cmd(f'AT+CPMS="{memory}"', prefix="+CPMS:")
                self._storage = memory
            except CommandError as exc:
                log.warning("%s: cannot select storage %s: %s", self.name, memory, exc.info)
        try:
            lines = await cmd(f"AT+CMGR={index}", prefix="+CMGR:", with_pdu=True)
        except CommandError as exc:
            # 321: already read and deleted (at start, or the modem announced it twice).
            level = logging.DEBUG if exc.info.code == 321 else logging.WARNING
            log.log(level, "%s: cannot read stored message %d: %s", self.name, index, exc.info)
            return
        for header, body in zip(lines[::2], lines[1::2], strict=False):
            self._handle_pdu(body, _length(header))
        await self._delete(cmd, index)

    async def read_stored(self, cmd: Command) -> None:
        """Replies and reports that arrived while we were not listening."""
        try:
            lines = await cmd("AT+CMGL=4", prefix="+CMGL:", with_pdu=True)
        except CommandError as exc:
            log.debug("%s: cannot list stored messages: %s", self.name, exc.info)
            return
        for header, body in zip(lines[::2], lines[1::2], strict=False):
            p = params(header)
            # <index>,<stat>,...: only received texts (0 unread, 1 read) are ours to take;
            # drafts someone stored on the SIM (2, 3) stay where they are.
            index = number(p[0]) if p else None
            if index is not None and len(p) >= 2 and p[1] in ("0", "1"):
                self._handle_pdu(body, _length(header))
                await self._delete(cmd, index)

    async def _delete(self, cmd: Command, index: int) -> None:
        try:
            await cmd(f"AT+CMGD={index}")
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
        if self.events is not None:
            self.events.delivery_report(DeliveryReport(
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
        if self.events is not None:
            self.events.inbound_message(InboundMessage(transport=self.name, sender=sender, text=text))


def _length(header: str) -> int | None:
    """The TPDU length: the last field of +CMGR/+CMGL/+CMT/+CDS headers."""
    p = params(header)
    return number(p[-1], max_digits=3) if p else None


__all__ = ["ModemInbox"]

"""One SMPP bind over one TCP (or TLS) connection, as an asyncio protocol.

Why asyncio rather than smpplib's blocking client in a thread: smpplib has no window, its
socket is written from the listener and the sender without a lock, its reader dies on the
first error PDU or SMSC unbind (LIBRARIES.md). Here one event loop owns the socket, so
writes cannot interleave; responses are matched to requests by sequence number; every
request from the SMSC is answered; and a dead link fails every outstanding request at once
so the transport can retry them.

The session knows nothing about messages: it binds, keeps the link alive with
enquire_link, sends request bodies and resolves their responses, and hands deliver_sm /
data_sm to a callback that returns the command_status to answer with.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable

from ..logutil import fields, redact
from . import pdu
from .status import ESME_RINVCMDID, ESME_ROK, describe

log = logging.getLogger(__name__)
# Every PDU in and out, at debug level (bodies as hex: they hold message text). For interop
# work with a provider: `aftercalld run -vv`, or raise just this logger.
wire_log = logging.getLogger("aftercalld.smpp.wire")

BIND_COMMANDS = {
    "transceiver": pdu.BIND_TRANSCEIVER,
    "transmitter": pdu.BIND_TRANSMITTER,
    "receiver": pdu.BIND_RECEIVER,
}


_BIND_REQUESTS = frozenset(BIND_COMMANDS.values())


class LinkLost(Exception):
    """The connection went away (or was dropped by us) with this request outstanding: the
    SMSC may or may not have acted on it."""


class NotSent(LinkLost):
    """The request was never written (the link was closing or being unbound): it is safe
    to send it elsewhere."""


class ResponseTimeout(Exception):
    """No response within response_timeout. For a request sent with `hold=True`, `late`
    resolves to the response when it does come, or fails with LinkLost when the link
    ends (the session drops a link whose answer is overdue by far, see _overdue)."""

    def __init__(self, message: str, late: asyncio.Future | None = None) -> None:
        super().__init__(message)
        self.late = late


# A held request unanswered this many response_timeouts after it was sent means the
# SMSC lost it (TCP did not): the link is dropped and re-bound.
OVERDUE_LIMIT = 4
# After an unbind from the SMSC, how long outstanding requests may take to be answered
# before we answer the unbind and close (at most; response_timeout if that is shorter).
UNBIND_GRACE = 2.0


class BindError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(describe(status))
        self.status = status


# (command_id, command_status, body) of a response
Response = tuple[int, int, bytes]
MessageHandler = Callable[["Session", pdu.ShortMessage], int]


class Session(asyncio.Protocol):
    def __init__(self, *, label: str, mode: str, window: int, response_timeout: float,
                 enquire_link_interval: float, enquire_link_timeout: float,
                 on_message: MessageHandler) -> None:
        self.label = label  # "smpp session 1 transmitter" — for logs
        self.mode = mode
        self.free = window  # window slots; the transport takes and returns them
        self.window = window
        self.response_timeout = response_timeout
        self.enquire_link_interval = enquire_link_interval
        self.enquire_link_timeout = enquire_link_timeout
        self.on_message = on_message
        self.peer = ""
        self.connected = False  # the TCP (and TLS) connection came up: the SMSC was reachable
        self.bound = False
        self._transport: asyncio.Transport | None = None
        self._frames = pdu.FrameBuffer()
        self._out: list[bytes] = []
        self._last_rx = 0.0
        self._trace = wire_log.isEnabledFor(logging.DEBUG)  # checked once: the hot path
        self._seq = 0
        # sequence → (future, its timer, hold: keep waiting past response_timeout)
        self._pending: dict[int, tuple[asyncio.Future, asyncio.TimerHandle | None, bool]] = {}
        self._loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[str] = self._loop.create_future()
        self._keepalive: asyncio.Task | None = None
        self._probe: asyncio.Task | None = None
        self._unbinding: asyncio.Task | None = None
        self._drained: asyncio.Future | None = None
        self._closing_reason = ""

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self, host: str, port: int, *, system_id: str, password: str,
                   system_type: str, addr_ton: int, addr_npi: int, address_range: str,
                   connect_timeout: float, tls: ssl.SSLContext | None) -> str:
        """Connect and bind; return the SMSC's system_id. Raises OSError/TimeoutError for
        the connection, BindError for a refused bind."""
        self.peer = f"{host}:{port}"
        async with asyncio.timeout(connect_timeout):
            await self._loop.create_connection(lambda: self, host, port, ssl=tls,
                                               server_hostname=host if tls else None)
        body = pdu.encode_bind(system_id, password, system_type, addr_ton=addr_ton,
                               addr_npi=addr_npi, address_range=address_range)
        log.debug("%s: bind_%s to %s as %s (password %s)", self.label, self.mode, self.peer,
                  system_id, redact(password))
        try:
            command_id, status, resp = await self.request(BIND_COMMANDS[self.mode], body)
        except BaseException:
            self.abort("bind not answered")
            raise
        if status != ESME_ROK or command_id == pdu.GENERIC_NACK:
            self.abort(f"bind refused: {describe(status)}")
            raise BindError(status)
        self.bound = True
        self._keepalive = self._loop.create_task(self._enquire_link_loop())
        return pdu.parse_message_id(resp)

    async def unbind(self, timeout: float = 2.0) -> None:
        """Polite goodbye: unbind, wait briefly for unbind_resp, close."""
        if self._transport is None or self._transport.is_closing():
            return
        self.bound = False
        try:
            async with asyncio.timeout(timeout):
                await self.request(pdu.UNBIND)
        except (LinkLost, ResponseTimeout, TimeoutError):
            pass
        self.abort("unbound", graceful=True)

    def abort(self, reason: str, *, graceful: bool = False) -> None:
        self.bound = False
        self._closing_reason = self._closing_reason or reason
        if self._transport is not None and not self._transport.is_closing():
            if graceful:
                self._flush()  # e.g. the unbind_resp just queued
                self._transport.close()
            else:
                self._transport.abort()

    @property
    def can_send(self) -> bool:
        """Bound, and its connection not closing: `bound` is cleared by connection_lost,
        which asyncio calls a loop turn after the close (failover asks in between)."""
        transport = self._transport
        return self.bound and transport is not None and not transport.is_closing()

    # -- requests --------------------------------------------------------------------------

    def send_request(self, command_id: int, body: bytes = b"", *, hold: bool = False) -> asyncio.Future:
        """Write one request; the future resolves to its Response, or fails with LinkLost
        (NotSent if it was never written) / ResponseTimeout. With `hold`, a timed-out
        request stays outstanding (see ResponseTimeout.late). Not a coroutine: callers on
        the hot path avoid a task per PDU."""
        fut = self._loop.create_future()
        transport = self._transport
        if transport is None or transport.is_closing() or self._unbinding is not None:
            fut.set_exception(NotSent(self._closing_reason or "not connected"))
            return fut
        self._seq = self._seq % 0x7FFFFFFF + 1
        seq = self._seq
        timer = self._loop.call_later(self.response_timeout, self._expire, seq)
        self._pending[seq] = (fut, timer, hold)
        self._write(pdu.HEADER.pack(pdu.HEADER_LEN + len(body), command_id, 0, seq) + body)
        return fut

    def _trace_pdu(self, direction: str, command_id: int, status: int, seq: int, body: bytes) -> None:
        if command_id in _BIND_REQUESTS:
            # never the password, not even as hex
            system_id = body.split(b"\x00", 1)[0].decode("ascii", "replace")
            shown = f"system_id={system_id} password=<set>"
        else:
            shown = body.hex()
        wire_log.debug("%s %s %s seq=%d status=%s body=%s", self.label, direction,
                       pdu.command_name(command_id), seq, describe(status) if status else "0",
                       shown)

    def _write(self, data: bytes) -> None:
        if self._trace:
            _, command_id, status, seq = pdu.HEADER.unpack_from(data)
            self._trace_pdu("->", command_id, status, seq, data[pdu.HEADER_LEN:])
        # PDUs written in one turn of the event loop leave in one send(): with a window of
        # 50 that is one system call instead of 50, on both sides of the link.
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(data)

    def _flush(self) -> None:
        out, self._out = self._out, []
        transport = self._transport
        if out and transport is not None and not transport.is_closing():
            transport.write(b"".join(out))

    async def request(self, command_id: int, body: bytes = b"") -> Response:
        return await self.send_request(command_id, body)

    def _expire(self, seq: int) -> None:
        entry = self._pending.get(seq)
        if entry is None:
            return
        fut, _, hold = entry
        message = f"no response within {self.response_timeout:g}s"
        if not hold or fut.done():  # (done: its sender gave up waiting, e.g. cancelled)
            del self._pending[seq]
            if not fut.done():
                fut.set_exception(ResponseTimeout(message))
            return
        # A slow SMSC is not a lost submit: sending it again would only double it. Keep
        # it outstanding (and its window slot taken) and check the link is alive.
        late = self._loop.create_future()
        limit = self.response_timeout * (OVERDUE_LIMIT - 1)
        self._pending[seq] = (late, self._loop.call_later(limit, self._overdue, seq), False)
        fut.set_exception(ResponseTimeout(message, late))
        self.probe()

    def _overdue(self, seq: int) -> None:
        if seq in self._pending:
            log.warning("%s: no response to sequence %d from %s within %gs although the link is up; "
                        "dropping the link to re-bind", self.label, seq, self.peer,
                        self.response_timeout * OVERDUE_LIMIT, extra=fields(smsc=self.peer))
            self.abort("a response overdue")

    def probe(self) -> None:
        """Check now that the SMSC answers (enquire_link), dropping the link if not."""
        if self.bound and (self._probe is None or self._probe.done()):
            self._probe = self._loop.create_task(self._check_link())

    async def _check_link(self) -> bool:
        fut = self.send_request(pdu.ENQUIRE_LINK)
        try:
            async with asyncio.timeout(self.enquire_link_timeout):
                await fut
        except (ResponseTimeout, TimeoutError):
            log.warning("%s: no enquire_link_resp from %s within %gs; dropping the link "
                        "to re-bind", self.label, self.peer, self.enquire_link_timeout,
                        extra=fields(smsc=self.peer))
            self.abort("enquire_link not answered")
            return False
        except LinkLost:
            return False
        return True

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    def reply(self, command_id: int, status: int, sequence: int, body: bytes = b"") -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._write(pdu.frame(command_id, status, sequence, body))

    async def _enquire_link_loop(self) -> None:
        try:
            while self.bound:
                await asyncio.sleep(self.enquire_link_interval)
                if not self.bound:
                    return
                if self._loop.time() - self._last_rx < self.enquire_link_interval / 2:
                    # The SMSC spoke recently: the link is alive, and under load an
                    # enquire_link queued behind a full window could time out spuriously.
                    continue
                if not await self._check_link():
                    return
        except asyncio.CancelledError:
            pass

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self.connected = True
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                # Small PDUs and a window of responses: Nagle would add up to 40 ms each.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def connection_lost(self, exc: Exception | None) -> None:
        self.bound = False
        reason = self._closing_reason or (f"connection lost: {exc}" if exc else "closed by the SMSC")
        self._closing_reason = reason
        pending, self._pending = self._pending, {}
        for fut, timer, _ in pending.values():
            if timer is not None:
                timer.cancel()
            if not fut.done():
                fut.set_exception(LinkLost(reason))
        for task in (self._keepalive, self._probe, self._unbinding):
            if task is not None:
                task.cancel()
        if not self.closed.done():
            self.closed.set_result(reason)

    def data_received(self, data: bytes) -> None:
        self._last_rx = self._loop.time()
        try:
            frames = self._frames.feed(data)
        except pdu.PduError as exc:
            log.error("%s: garbage from %s (%s); dropping the link", self.label, self.peer, exc,
                      extra=fields(smsc=self.peer))
            self.abort(f"protocol error: {exc}")
            return
        pending = self._pending
        for command_id, status, seq, body in frames:
            if self._trace:
                self._trace_pdu("<-", command_id, status, seq, body)
            if command_id & pdu.RESP:
                entry = pending.pop(seq, None)
                if entry is None:
                    self._late_response(command_id, status, seq, body)
                    continue
                fut, timer, _ = entry
                if timer is not None:
                    timer.cancel()
                if not fut.done():
                    fut.set_result((command_id, status, body))
                if self._drained is not None and not pending and not self._drained.done():
                    self._drained.set_result(None)
            else:
                self._handle_request(command_id, seq, body)

    def _late_response(self, command_id: int, status: int, seq: int, body: bytes) -> None:
        if command_id == pdu.GENERIC_NACK:
            log.warning("%s: generic_nack %s for sequence %d from %s", self.label,
                        describe(status), seq, self.peer, extra=fields(smsc=self.peer))
        elif command_id == pdu.SUBMIT_SM | pdu.RESP:
            # We never stop waiting for a submit while its link is up, so the SMSC answers
            # a sequence number we did not send.
            log.warning("%s: submit_sm_resp for unknown sequence %d (%s, message_id %s) from %s",
                        self.label, seq, describe(status), pdu.parse_message_id(body) or "-", self.peer,
                        extra=fields(smsc=self.peer, msg_id=pdu.parse_message_id(body)))
        else:
            log.debug("%s: unmatched %s sequence %d", self.label, pdu.command_name(command_id), seq)

    async def _answer_unbind(self, seq: int) -> None:
        """Answering at once would close the link under a window of submits the SMSC has
        taken but not answered yet: each would be sent again on the next bind. Wait a
        little for their responses first."""
        outstanding = len(self._pending)
        log.warning("%s: the SMSC %s unbound the session (%d request(s) outstanding); re-binding",
                    self.label, self.peer, outstanding, extra=fields(smsc=self.peer))
        if outstanding:
            self._drained = self._loop.create_future()
            try:
                async with asyncio.timeout(min(UNBIND_GRACE, self.response_timeout)):
                    await self._drained
            except TimeoutError:
                log.warning("%s: %d request(s) still unanswered; answering the unbind anyway",
                            self.label, len(self._pending), extra=fields(smsc=self.peer))
        self.reply(pdu.UNBIND | pdu.RESP, ESME_ROK, seq)
        self.abort("unbound by the SMSC", graceful=True)

    def _handle_request(self, command_id: int, seq: int, body: bytes) -> None:
        if command_id == pdu.DELIVER_SM or command_id == pdu.DATA_SM:
            try:
                message = (pdu.parse_deliver_sm(body) if command_id == pdu.DELIVER_SM
                           else pdu.parse_data_sm(body))
            except pdu.PduError as exc:
                # Answered OK all the same: an SMSC re-sending a PDU we cannot parse would
                # loop forever. The raw octets stay in the log for support.
                log.warning("%s: unparseable %s from %s (%s); answered and skipped",
                            self.label, pdu.command_name(command_id), self.peer, exc,
                            extra=fields(smsc=self.peer))
                log.debug("%s: its body was %s", self.label, body.hex())
                status = ESME_ROK
            else:
                status = self.on_message(self, message)
            self.reply(command_id | pdu.RESP, status, seq, b"\x00")
        elif command_id == pdu.ENQUIRE_LINK:
            self.reply(pdu.ENQUIRE_LINK | pdu.RESP, ESME_ROK, seq)
        elif command_id == pdu.UNBIND:
            if self._unbinding is None:
                self.bound = False  # no new submits from here on
                self._unbinding = self._loop.create_task(self._answer_unbind(seq))
        elif command_id in (pdu.ALERT_NOTIFICATION, pdu.OUTBIND):
            log.debug("%s: ignoring %s", self.label, pdu.command_name(command_id))
        else:
            log.warning("%s: unexpected %s from %s; answering generic_nack", self.label,
                        pdu.command_name(command_id), self.peer, extra=fields(smsc=self.peer))
            self.reply(pdu.GENERIC_NACK, ESME_RINVCMDID, seq)

"""The AT channel on a bare pty, the test writing the modem's bytes itself: fragmented
reads, unsolicited lines inside an answer, a two-line +CDS split across reads, the
AT+CMGS prompt, errors and timeouts."""
from __future__ import annotations

import asyncio
import os
import tty

import pytest

from aftercalld.modem.at import ATChannel, Urc
from aftercalld.modem.errors import CommandError, CommandTimeout, PortClosed


class Peer:
    """The modem end of a pty, driven by hand."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.received = b""
        self._more = asyncio.Event()
        asyncio.get_running_loop().add_reader(self.master, self._read)

    def _read(self) -> None:
        try:
            self.received += os.read(self.master, 4096)
        except OSError:
            return
        self._more.set()

    async def expect(self, data: bytes, timeout: float = 2.0) -> None:
        async def until() -> None:
            while data not in self.received:
                self._more.clear()
                await self._more.wait()
        await asyncio.wait_for(until(), timeout)
        self.received = self.received.split(data, 1)[1]

    async def send(self, *chunks: bytes) -> None:
        for chunk in chunks:
            os.write(self.master, chunk)
            await asyncio.sleep(0)  # let the channel read each chunk on its own

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.master)
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
async def peer():
    p = Peer()
    yield p
    p.close()


@pytest.fixture
async def channel(peer):
    urcs: list[Urc] = []
    ch = await ATChannel.open(peer.path, 115200, urcs.append)
    ch.urcs = urcs  # type: ignore[attr-defined]
    yield ch
    await ch.close()


async def test_fragmented_answer_with_unsolicited_lines(peer, channel):
    task = asyncio.create_task(channel.command("AT+CSQ", prefix="+CSQ:", timeout=2))
    await peer.expect(b"AT+CSQ\r")
    cds = b"+CDS: 25\r\n0006D60B911326880736F4111011719551401110117195714000\r\n"
    stream = b"AT+CSQ\r\r\n+CS" + b"Q: 20,99\r\n\r\nRING\r\n\r\n" + cds + b"\r\nO" + b"K\r\n"
    await peer.send(*[stream[i:i + 3] for i in range(0, len(stream), 3)])
    assert await task == ["+CSQ: 20,99"]
    assert [(u.line, u.pdu) for u in channel.urcs] == [
        ("RING", ""), ("+CDS: 25", "0006D60B911326880736F4111011719551401110117195714000")]


async def test_without_prefix_every_other_line_is_the_answer(peer, channel):
    task = asyncio.create_task(channel.command("ATI", timeout=2))
    await peer.expect(b"ATI\r")
    await peer.send(b"\r\nManufacturer: ACME\r\n+CMTI: \"SM\",3\r\nModel: X1\r\n\r\nOK\r\n")
    assert await task == ["Manufacturer: ACME", "Model: X1"]
    assert [u.line for u in channel.urcs] == ['+CMTI: "SM",3']


async def test_pdu_lines_follow_their_headers(peer, channel):
    task = asyncio.create_task(channel.command("AT+CMGL=4", prefix="+CMGL:", with_pdu=True, timeout=2))
    await peer.expect(b"AT+CMGL=4\r")
    await peer.send(b"\r\n+CMGL: 1,0,,5\r\n0011AABBCC\r\n+CMGL: 2,1,,3\r\n00DDEE\r\n\r\nOK\r\n")
    assert await task == ["+CMGL: 1,0,,5", "0011AABBCC", "+CMGL: 2,1,,3", "00DDEE"]


async def test_cmgs_prompt_split_across_reads(peer, channel):
    task = asyncio.create_task(channel.send_pdu(7, "0001000381F1000000", prompt_timeout=2, timeout=2))
    await peer.expect(b"AT+CMGS=7\r")
    await peer.send(b"\r\n", b">", b" ")
    await peer.expect(b"0001000381F1000000\x1a")
    await peer.send(b"\r\n+CMGS: 12\r\n\r\nOK\r\n")
    assert await task == ["+CMGS: 12"]


async def test_cms_error_instead_of_a_prompt(peer, channel):
    task = asyncio.create_task(channel.send_pdu(7, "00", prompt_timeout=2, timeout=2))
    await peer.expect(b"AT+CMGS=7\r")
    await peer.send(b"\r\n+CMS ERROR: 330\r\n")
    with pytest.raises(CommandError) as err:
        await task
    assert err.value.info.code == 330
    assert "SMSC address unknown" in str(err.value)
    assert b"00\x1a" not in peer.received


async def test_missing_prompt_times_out_and_escapes(peer, channel):
    with pytest.raises(CommandTimeout):
        await channel.send_pdu(7, "00", prompt_timeout=0.2, timeout=2)
    await peer.expect(b"\x1b")
    # the channel is usable afterwards
    task = asyncio.create_task(channel.command("AT", timeout=2))
    await peer.expect(b"AT\r")
    await peer.send(b"\r\nOK\r\n")
    assert await task == []


async def test_lines_after_a_timeout_are_not_taken_for_the_next_answer(peer, channel):
    with pytest.raises(CommandTimeout):
        await channel.command("AT+CSQ", prefix="+CSQ:", timeout=0.1)
    task = asyncio.create_task(channel.command("AT+CREG?", prefix="+CREG:", timeout=2))
    await peer.expect(b"AT+CREG?\r")
    await peer.send(b"\r\n+CSQ: 5,99\r\n\r\n+CREG: 0,1\r\n\r\nOK\r\n")
    assert await task == ["+CREG: 0,1"]


async def test_noise_without_line_ends_is_dropped(peer, channel, caplog):
    # The channel reads at most 1 KiB at a time, so 10 KiB of noise must overflow its
    # 4 KiB line buffer whatever the pty's chunking.
    await peer.send(b"\xff" * 10000 + b"\r\n")
    task = asyncio.create_task(channel.command("AT+CSQ", prefix="+CSQ:", timeout=2))
    await peer.expect(b"AT+CSQ\r")
    await peer.send(b"\r\n+CSQ: 9,99\r\nOK\r\n")
    assert await task == ["+CSQ: 9,99"]
    assert "wrong baud rate" in caplog.text


async def test_port_vanishing_fails_the_pending_command(peer, channel):
    task = asyncio.create_task(channel.command("AT", timeout=5))
    await peer.expect(b"AT\r")
    peer.close()
    with pytest.raises(PortClosed):
        await task
    with pytest.raises(PortClosed):
        await channel.command("AT", timeout=1)



async def test_vendor_chatter_between_a_header_and_its_pdu(peer):
    urcs: list[Urc] = []
    got_cds = asyncio.Event()

    def on_urc(urc: Urc) -> None:
        urcs.append(urc)
        if urc.line.startswith("+CDS"):
            got_cds.set()

    channel = await ATChannel.open(peer.path, 115200, on_urc)
    try:
        task = asyncio.create_task(channel.command("AT+CMGR=1", prefix="+CMGR:", with_pdu=True, timeout=2))
        await peer.expect(b"AT+CMGR=1\r")
        await peer.send(b"\r\n+CMGR: 0,,5\r\n^RSSI:14\r\n0011AABBCC\r\n\r\nOK\r\n"
                        b"\r\n+CDS: 3\r\n^MODE:5,4\r\n00DDEE\r\n")
        assert await task == ["+CMGR: 0,,5", "0011AABBCC"]
        await asyncio.wait_for(got_cds.wait(), 2)
        assert [(u.line, u.pdu) for u in urcs] == [("^RSSI:14", ""), ("^MODE:5,4", ""), ("+CDS: 3", "00DDEE")]
    finally:
        await channel.close()

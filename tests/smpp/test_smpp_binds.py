"""Binds against the simulator over real sockets: modes, refusals, failover, keep-alive,
SMSC unbind, TLS, and unbind on shutdown."""
from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import ssl
import subprocess

import pytest
from smpp_util import Events, message, settings, start_bound
from smsc_sim import BIND_RX, BIND_TRX, BIND_TX, SmscSim

from aftercalld.model import OutcomeKind
from aftercalld.smpp import make_transport


@pytest.fixture
async def sim():
    s = SmscSim(receipts="tlv")
    await s.start()
    yield s
    await s.stop()


def closed_port() -> int:
    """A port nothing listens on: bind to 0, note it, close."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_transceiver_bind_carries_credentials(sim):
    t = make_transport(settings(sim.port, system_type="VMA"))
    await start_bound(t, Events())
    try:
        [bind] = sim.binds
        assert bind["command"] == BIND_TRX
        assert (bind["system_id"], bind["password"], bind["system_type"]) == ("esme", "secret", "VMA")
        assert bind["interface_version"] == 0x34
        assert t.status()["bound"] == 1
        assert t.max_in_flight == 10
    finally:
        await t.close()


async def test_transmitter_and_receiver_sessions(sim):
    events = Events()
    t = make_transport(settings(sim.port, bind_mode="transmitter_receiver", sessions=2, window=4))
    await start_bound(t, events)
    try:
        await sim.wait_until(lambda: len(sim.bound()) == 4)
        assert sorted(b["command"] for b in sim.binds) == [BIND_RX, BIND_RX, BIND_TX, BIND_TX]
        assert t.max_in_flight == 8
        out = await t.send(message())
        assert out.kind is OutcomeKind.SUBMITTED
        # the submit went over a transmitter, the receipt came back over a receiver
        assert sim.connections[sim.accepted[0].conn].bound_as == BIND_TX
        await events.wait_until(lambda: len(events.reports) == 1)
        assert events.reports[0].message_id == out.message_ids[0]
    finally:
        await t.close()


async def test_refused_binds_are_named_retried_and_password_never_logged(caplog):
    caplog.set_level(logging.DEBUG)
    sim = SmscSim(bind_statuses=[0x0E, 0x0D, 0x05])
    await sim.start()
    t = make_transport(settings(sim.port))
    try:
        await start_bound(t, Events())
        assert t.status()["bound"] == 1
        assert len(sim.binds) == 4
        for name in ("ESME_RINVPASWD", "ESME_RBINDFAIL", "ESME_RALYBND"):
            assert name in caplog.text
        assert "secret" not in caplog.text
        assert "password <set>" in caplog.text
    finally:
        await t.close()
        await sim.stop()


async def test_failover_to_the_next_host(sim):
    dead = closed_port()
    t = make_transport(settings([dead, sim.port]))
    await start_bound(t, Events())
    try:
        assert t.status()["sessions"][0]["smsc"] == f"127.0.0.1:{sim.port}"
        assert (await t.send(message())).kind is OutcomeKind.SUBMITTED
    finally:
        await t.close()


async def test_failover_when_the_primary_refuses_the_bind(sim):
    primary = SmscSim(password="other")
    await primary.start()
    t = make_transport(settings([primary.port, sim.port]))
    try:
        await start_bound(t, Events())
        assert len(primary.binds) == 1 and len(sim.binds) == 1
        assert t.status()["sessions"][0]["smsc"].endswith(f":{sim.port}")
    finally:
        await t.close()
        await primary.stop()


async def test_enquire_link_at_interval_and_rebind_when_unanswered(sim):
    t = make_transport(settings(sim.port, enquire_link_interval=0.05, enquire_link_timeout=0.5))
    await start_bound(t, Events())
    try:
        await sim.wait_until(lambda: sim.enquire_links >= 3)
        assert len(sim.binds) == 1  # answered: the link stays
        sim.answer_enquire_link = False
        await sim.wait_until(lambda: len(sim.binds) >= 2, timeout=5)
        sim.answer_enquire_link = True
        await sim.wait_until(lambda: len(sim.bound()) == 1)
        out = await t.send(message())
        assert out.kind is OutcomeKind.SUBMITTED
    finally:
        await t.close()


async def test_smsc_unbind_is_answered_and_the_session_rebinds(sim):
    t = make_transport(settings(sim.port))
    await start_bound(t, Events())
    try:
        conn = sim.bound()[0]
        await sim.unbind_all()  # resolves only when our unbind_resp arrives
        await sim.wait_until(lambda: len(sim.binds) == 2 and len(sim.bound()) == 1)
        assert conn.closed
        assert (await t.send(message())).kind is OutcomeKind.SUBMITTED
    finally:
        await t.close()


async def test_close_unbinds_every_session(sim):
    t = make_transport(settings(sim.port, sessions=3))
    await start_bound(t, Events())
    await sim.wait_until(lambda: len(sim.bound()) == 3)
    await t.close()
    assert sim.unbinds == 3
    out = await t.send(message())
    assert out.kind is OutcomeKind.TRANSIENT


async def test_unbound_transport_answers_transient():
    t = make_transport(settings(closed_port(), connect_timeout=0.2, response_timeout=0.2,
                                reconnect_min=0.05))
    await t.start(Events())  # returns although nothing is bound
    try:
        assert t.status()["state"] == "binding"
        out = await t.send(message())
        assert out.kind is OutcomeKind.TRANSIENT
        assert "no SMPP session bound" in out.reason and out.retry_after
    finally:
        await t.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI for a test cert")
async def test_tls_bind(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    sim = SmscSim()
    await sim.start(ssl=server_ctx)
    t = make_transport(settings(sim.port, tls=True, tls_ca_file=str(cert)))
    try:
        await start_bound(t, Events())
        assert t.status()["bound"] == 1
        assert (await t.send(message())).kind is OutcomeKind.SUBMITTED
    finally:
        await t.close()
        await sim.stop()


async def test_close_lets_in_flight_submits_finish_first():
    sim = SmscSim(response_delay=0.1)
    await sim.start()
    t = make_transport(settings(sim.port, window=10))
    await start_bound(t, Events())
    try:
        sends = [asyncio.ensure_future(t.send(message(f"drain {i}"))) for i in range(5)]
        await sim.wait_until(lambda: sim.submits_seen == 5)
        await t.close()
        outcomes = [s.result() for s in sends]
        assert all(o.kind is OutcomeKind.SUBMITTED for o in outcomes)
        assert sim.unbinds == 1 and len(sim.accepted) == 5
    finally:
        await sim.stop()


async def test_unanswered_bind_times_out_and_is_retried():
    sim = SmscSim(bind_statuses=[None])
    await sim.start()
    t = make_transport(settings(sim.port, response_timeout=0.2))
    try:
        await start_bound(t, Events())
        assert t.status()["bound"] == 1
        assert len(sim.binds) >= 2  # (more only if a loaded machine is slower than 0.2 s)
        await sim.wait_until(lambda: sim.connections[0].closed)  # we hung up on the silent one
    finally:
        await t.close()
        await sim.stop()


async def test_wire_trace_at_debug_shows_every_pdu_but_not_the_password(caplog):
    caplog.set_level(logging.DEBUG, logger="aftercalld.smpp.wire")
    sim = SmscSim()
    await sim.start()
    t = make_transport(settings(sim.port))
    try:
        await start_bound(t, Events())
        await t.send(message())
    finally:
        await t.close()
        await sim.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "aftercalld.smpp.wire"]
    kinds = [line.split()[5] for line in lines]
    assert kinds[:4] == ["bind_transceiver", "bind_transceiver_resp", "submit_sm", "submit_sm_resp"]
    assert "unbind" in kinds and "unbind_resp" in kinds
    assert b"secret".hex() not in caplog.text and "secret" not in caplog.text
    assert "system_id=esme password=<set>" in lines[0]

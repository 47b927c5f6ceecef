"""What the SMSC receives for a message: concatenation methods, data_coding, TON/NPI and
per-template TLVs, sent through the transport over a real socket."""
from __future__ import annotations

import pytest
from smpp_util import Events, message, settings, start_bound
from smsc_sim import SmscSim, reassemble

from aftercalld.model import OutcomeKind
from aftercalld.smpp import make_transport
from aftercalld.smpp.parts import parse_tlv_map

UCS2_400 = ("Спасибо за звонок! Мы перезвоним вам 😀 в течение часа. " * 8)[:399] + "✓"


async def transport_for(sim: SmscSim, **overrides):
    await sim.start()
    t = make_transport(settings(sim.port, **overrides))
    await start_bound(t, Events())
    return t


@pytest.mark.parametrize("method,parts", [("udh8", 7), ("udh16", 7), ("sar", 7), ("payload", 1)])
async def test_400_character_ucs2_text_reassembles_for_each_method(method, parts):
    assert len(UCS2_400) == 400
    sim = SmscSim()
    t = await transport_for(sim, concatenation=method)
    try:
        out = await t.send(message(UCS2_400))
        assert out.kind is OutcomeKind.SUBMITTED
        assert len(out.message_ids) == parts == len(sim.accepted)
        [shown] = reassemble(sim.accepted)
        assert shown.text == UCS2_400 and shown.method == method
        assert all(s.data_coding == 8 for s in sim.accepted)
    finally:
        await t.close()
        await sim.stop()


async def test_concatenation_references_differ_between_messages():
    sim = SmscSim()
    t = await transport_for(sim)
    try:
        texts = [f"{i} " + "x" * 300 for i in range(3)]
        for text in texts:
            await t.send(message(text, destination="+447700900555"))
        assert sorted(r.text for r in reassemble(sim.accepted)) == sorted(texts)
    finally:
        await t.close()
        await sim.stop()


async def test_gsm_data_coding_and_ton_npi_as_configured():
    sim = SmscSim()
    t = await transport_for(sim, gsm_data_coding=3, source_ton=0, source_npi=1, dest_ton=0,
                            dest_npi=0, registered_delivery=False, service_type="CMT")
    try:
        await t.send(message("Grüße aus Köln", sender="+4922112345"))
        [s] = sim.accepted
        assert (s.data_coding, s.short_message) == (3, "Grüße aus Köln".encode("latin-1"))
        assert (s.source_ton, s.source_npi, s.source) == (0, 1, "4922112345")
        assert (s.dest_ton, s.dest_npi, s.destination) == (0, 0, "447700900123")
        assert s.registered_delivery == 0 and s.service_type == "CMT"
    finally:
        await t.close()
        await sim.stop()


async def test_ton_npi_from_the_sender_form():
    sim = SmscSim()
    t = await transport_for(sim)
    try:
        await t.send(message("a", sender="ACME"))
        await t.send(message("b", sender="+447700900999"))
        assert [(s.source_ton, s.source_npi) for s in sim.accepted] == [(5, 0), (1, 1)]
        assert all(s.registered_delivery == 1 and s.data_coding == 0 for s in sim.accepted)
    finally:
        await t.close()
        await sim.stop()


async def test_dlt_tlvs_from_config_and_template_reach_every_part():
    sim = SmscSim()
    t = await transport_for(sim, tlvs=parse_tlv_map({"0x1400": "1201159100000000001"}))
    try:
        m = message("OTP-free reminder " * 12,
                    options={"tlvs": {"0x1401": "1207161234567890123", "0x1400": "1201159999999999999"}})
        out = await t.send(m)
        assert out.kind is OutcomeKind.SUBMITTED and len(sim.accepted) == 2
        for s in sim.accepted:
            assert s.tlvs[0x1400] == b"1201159999999999999"  # the template's wins
            assert s.tlvs[0x1401] == b"1207161234567890123"
        bad = await t.send(message("x", options={"tlvs": {"entity": "1"}}))
        assert bad.kind is OutcomeKind.PERMANENT and "TLV tag 'entity'" in bad.reason
    finally:
        await t.close()
        await sim.stop()

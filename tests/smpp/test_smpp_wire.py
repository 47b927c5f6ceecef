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


# -- segments counted when a call is rendered are the parts on the wire -------------------------

GSM_306 = ("Sorry we missed your call. " * 12)[:306]
UCS2_134 = ("Спасибо за звонок " * 8)[:134]
EURO_306 = ("Price 5€, call back. " * 15)[:306]
GREEK_150 = ("ΔΦΓΛΩ are GSM, not Latin-1. " * 6)[:150]
LATIN1_150 = ("Café à Genève, déjà vu. " * 7)[:150]  # GSM 03.38 and Latin-1 alike


async def render_and_send(tmp_path, sim: SmscSim, text: str, max_segments: int = 5, **transport):
    """A call through the real config loader, rule, render and outbox, then the dispatcher
    and the SMPP transport to the simulator: (the outbox's row, the submits on the wire)."""
    from aftercalld import config as core_config
    from aftercalld.dispatcher import Dispatcher
    from aftercalld.model import CallRecord
    from aftercalld.pipeline import CallHandler
    from aftercalld.store import Outbox

    await sim.start()
    cfg = core_config.parse({
        "general": {"timezone": "UTC", "default_region": "GB", "outbox": str(tmp_path / "o.sqlite3")},
        "transport": {"type": "smpp", "hosts": [f"127.0.0.1:{sim.port}"], "system_id": "esme",
                      "password": "secret", "reconnect_min": 0.05, "reconnect_max": 0.2, **transport},
        "templates": {"t": {"text": text}},
        "rules": [{"name": "all", "recipients": ["caller"], "max_segments": max_segments,
                   "caller": {"template": "t", "sender": "ACME"}}],
    }, "test")
    outbox = Outbox.open(cfg.outbox_path)
    CallHandler(cfg, outbox).handle(CallRecord(call_id="c1", pbx="pbx", direction="inbound", status="missed",
                                               caller_number="+447400123456"))
    [row] = outbox.messages()
    if row["state"] == "queued":
        transport = make_transport(cfg.transport.settings)
        dispatcher = Dispatcher(outbox, transport, cfg.dispatch)
        await dispatcher.start()
        try:
            await dispatcher.wait_idle()
        finally:
            await dispatcher.stop()
        [row] = outbox.messages()
    outbox.close()
    await sim.stop()
    return row, sim.accepted


@pytest.mark.parametrize("text,transport,segments,encoding", [
    (GSM_306, {"concatenation": "udh16"}, 3, "gsm7"),  # 152 + 152 + 2
    (UCS2_134, {"concatenation": "udh16"}, 3, "ucs2"),  # 66 + 66 + 2
    (GSM_306, {"concatenation": "sar"}, 2, "gsm7"),
    (EURO_306, {"gsm_data_coding": 3}, 5, "ucs2"),  # € is not Latin-1
    (GREEK_150, {"gsm_data_coding": 3}, 3, "ucs2"),
    (LATIN1_150, {"gsm_data_coding": 3}, 2, "gsm7"),  # 140 octets of user data at most
    (LATIN1_150, {"gsm_data_coding": 3, "octet_limits": "transcoding_smsc"}, 1, "gsm7"),
    (LATIN1_150, {"gsm_data_coding": 1}, 2, "gsm7"),  # IA5: é is not ASCII, so UCS-2…
])
async def test_segments_in_the_outbox_are_the_parts_on_the_wire(tmp_path, text, transport, segments, encoding):
    if transport.get("gsm_data_coding") == 1:
        encoding = "ucs2"  # …with 150 UCS-2 units: 3 parts
        segments = 3
    row, submits = await render_and_send(tmp_path, SmscSim(), text, **transport)
    assert row["state"] == "submitted", row["reason"]
    assert (row["segments"], row["encoding"]) == (segments, encoding)
    assert len(submits) == segments
    if transport.get("octet_limits") != "transcoding_smsc":
        # Octets (data_coding 1, 3, 8) must fit the 140 of a message's user data; GSM septets
        # travel one per octet and the SMSC packs 160 of them into 140.
        assert all(len(s.short_message) <= 140 for s in submits if s.data_coding != 0)
    else:
        assert [len(s.short_message) for s in submits] == [150]
    assert [r.text for r in reassemble(submits)] == [text]


async def test_max_segments_counts_the_parts_the_wire_would_carry(tmp_path):
    row, submits = await render_and_send(tmp_path, SmscSim(), GSM_306, max_segments=2, concatenation="udh16")
    assert row["state"] == "suppressed" and "too long: 3 segments, rule allows 2" in row["reason"]
    assert submits == []

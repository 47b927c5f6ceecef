"""`aftercalld migrate --to postgresql://…`: an SQLite outbox copied whole, safe to rerun."""
from __future__ import annotations

import asyncio

from test_store_contract import T0, TTL, entry, record

from aftercalld.cli import main
from aftercalld.model import DeliveryReport, MessageState, ReportState
from aftercalld.store import Outbox, OutcomeRecord
from aftercalld.store.postgres import PgOutbox


def sqlite_outbox_with_everything(path) -> None:
    outbox = Outbox.open(path)
    outbox.record_calls([entry(record(f"c{i}", caller=f"+4474001234{i:02d}")) for i in range(5)],
                        ttl_seconds=TTL, now=T0)
    delivered, submitted, failed, sending = outbox.claim_due(4, T0)  # c4's text stays queued
    outbox.record_outcomes([
        OutcomeRecord(delivered, MessageState.SUBMITTED, transport_ids=("A1", "A2"), transport="smpp"),
        OutcomeRecord(submitted, MessageState.SUBMITTED, transport_ids=("B1",), transport="smpp"),
        OutcomeRecord(failed, MessageState.FAILED, "rejected: invalid destination", transport="smpp"),
    ], T0 + 1)
    outbox.apply_reports([DeliveryReport("smpp", "A1", ReportState.DELIVERED),
                          DeliveryReport("smpp", "A2", ReportState.DELIVERED),
                          DeliveryReport("smpp", "ZZ", ReportState.DELIVERED)], T0 + 2)
    outbox.record_reply(submitted.destination, "Call me back please", "smpp", "", T0 + 3, 86400)
    outbox.optout_add(["+447400000001"], "reply STOP", T0)
    outbox.dnd_add(["+4490*"], "cli", T0)
    outbox.meta_set("cdr/main", "4096")
    outbox.save_handover("main", '{"calls": ["x"]}', T0 + 4)
    outbox.close()


def test_everything_is_copied_once_and_a_rerun_copies_nothing(tmp_path, pg_dsn, capsys):
    source = tmp_path / "outbox.sqlite3"
    sqlite_outbox_with_everything(source)

    assert main(["migrate", "--from", str(source), "--to", pg_dsn]) == 0
    out = capsys.readouterr().out
    assert "copied 5 calls, 5 messages, 3 parts, 1 receipts, 1 replies, 1 optout, 1 dnd, 1 settings, 1 handover" \
        in out
    assert main(["migrate", "--from", str(source), "--to", pg_dsn]) == 0
    assert "copied 0 calls, 0 messages, 0 parts, 0 receipts, 0 replies, 0 optout, 0 dnd, 0 settings, 0 handover" \
        in capsys.readouterr().out
    asyncio.run(check_copy(source, pg_dsn))


async def check_copy(source, pg_dsn) -> None:
    pg = await PgOutbox.open(pg_dsn, instance="host-a")
    try:
        before = Outbox.open_readonly(source)
        assert await pg.counts_by_state() == before.counts_by_state() == {
            "delivered": 1, "submitted": 1, "failed": 1, "sending": 1, "queued": 1}
        assert [c["call_key"] for c in await pg.calls(limit=10)] == [c["call_key"] for c in before.calls(limit=10)]
        theirs = {m["key"]: m for m in before.messages()}
        for mine in await pg.messages():
            want = theirs[mine["key"]]
            assert {k: mine[k] for k in want if k not in ("id",)} == {k: v for k, v in want.items() if k != "id"}
        (reply,) = await pg.replies()
        assert reply["text"] == "Call me back please" and reply["call_key"] == "main/c1"
        assert reply["message_id"] == next(m["id"] for m in await pg.messages() if m["call_key"] == "main/c1")
        assert await pg.opted_out_among(["+447400000001"]) == {"+447400000001"}
        assert await pg.dnd_matches(["+44901234567"]) == {"+44901234567"}
        assert await pg.meta_get("cdr/main") == "4096"
        assert await pg.take_handover("main") == ('{"calls": ["x"]}', T0 + 4)
        assert [o["transport_id"] for o in await pg.orphan_reports()] == ["ZZ"]
        # The text the SQLite daemon was sending when it stopped, and the queued one, go out.
        claimed = await pg.claim_due(10, T0 + 10)
        assert sorted(m.key for m in claimed) == ["main/c3/Missed/caller:+447400123403",
                                                  "main/c4/Missed/caller:+447400123404"]
        # A receipt for a text sent before the move still settles it.
        (settled,) = await pg.apply_reports([DeliveryReport("smpp", "B1", ReportState.DELIVERED)], T0 + 11)
        assert settled.call_key == "main/c1" and settled.state is MessageState.DELIVERED
        before.close()
    finally:
        await pg.close()


def test_the_password_is_never_printed(tmp_path, capsys):
    source = tmp_path / "outbox.sqlite3"
    Outbox.open(source).close()
    code = main(["migrate", "--from", str(source), "--to",
                 f"postgresql://acd:hunter2-secret@/outbox?host={tmp_path}&port=1&connect_timeout=2"])
    captured = capsys.readouterr()
    assert code == 1
    assert "hunter2-secret" not in captured.out + captured.err
    assert "cannot connect to the outbox" in captured.err and "postgresql://acd@" in captured.err

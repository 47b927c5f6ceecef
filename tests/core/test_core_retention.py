"""How long the outbox keeps calls: Outbox.prune, `aftercalld prune`, [general] keep_days."""
from __future__ import annotations

import asyncio

import pytest
from core_helpers import call, write_config

from aftercalld import cli
from aftercalld.config import load
from aftercalld.model import DeliveryReport, MessageState, ReportState
from aftercalld.pipeline import CallHandler
from aftercalld.retention import prune
from aftercalld.store import Outbox, OutcomeRecord

DAY = 86400.0
NOW = 1_796_000_000.0


def record(outbox: Outbox, handler: CallHandler, call_ids: list[str], at: float, *, settled: bool = False) -> None:
    """Calls with one text each: queued, or already settled (suppressed: anonymous caller)."""
    decisions = [handler.decide(call(call_id=c, caller_number="anonymous" if settled else f"+4474001{i:05d}"))
                 for i, c in enumerate(call_ids)]
    outbox.record_calls([(d.record, d.selection.rule.name, d.selection.reason, d.messages) for d in decisions],
                        ttl_seconds=3600, now=at)


@pytest.fixture
def outbox(tmp_path):
    config = load(write_config(tmp_path))
    box = Outbox.open(config.outbox_path)
    yield box, CallHandler(config, box)
    box.close()


def test_old_settled_calls_go_and_pending_or_recent_ones_stay(outbox):
    box, handler = outbox
    old = NOW - 30 * DAY
    record(box, handler, ["delivered", "queued"], at=old)
    (sent,) = box.claim_due(1, old)
    box.record_outcomes([OutcomeRecord(sent, MessageState.SUBMITTED, transport_ids=("A1",))], old)
    box.apply_reports([DeliveryReport("log", "A1", ReportState.DELIVERED)], old)
    box.apply_reports([DeliveryReport("log", "never-sent", ReportState.DELIVERED)], old)  # an orphan
    record(box, handler, ["recent"], at=NOW - 2 * DAY)
    box.apply_reports([DeliveryReport("log", "recent-orphan", ReportState.DELIVERED)], NOW - 2 * DAY)

    pruned = asyncio.run(prune(box, keep_days=7, now=NOW))

    assert (pruned.calls, pruned.messages, pruned.receipts, pruned.kept) == (1, 1, 1, 1)
    assert sorted(c["call_id"] for c in box.calls()) == ["queued", "recent"]
    assert box.counts_by_state() == {"queued": 2}
    assert box.conn.execute("SELECT COUNT(*) FROM parts").fetchone()[0] == 0
    assert [o["transport_id"] for o in box.orphan_reports()] == ["recent-orphan"]


def test_pruning_goes_in_short_batches_and_stops_at_the_first_recent_call(outbox):
    box, handler = outbox
    record(box, handler, [f"old{i}" for i in range(1234)], at=NOW - 40 * DAY, settled=True)
    record(box, handler, [f"new{i}" for i in range(10)], at=NOW - 1 * DAY, settled=True)
    first, after_rowid = box.prune(NOW - 7 * DAY, limit=500)
    assert first.calls == 500 and after_rowid is not None
    pruned = asyncio.run(prune(box, keep_days=7, now=NOW))
    assert pruned.calls == 734 and pruned.messages == 734
    assert len(box.calls(limit=100)) == 10
    assert asyncio.run(prune(box, keep_days=7, now=NOW)).calls == 0


def test_prune_command(tmp_path, capsys):
    path = write_config(tmp_path)
    config = load(path)
    box = Outbox.open(config.outbox_path)
    handler = CallHandler(config, box)
    record(box, handler, ["a", "b"], at=NOW - 400 * DAY, settled=True)
    record(box, handler, ["c"], at=NOW - 400 * DAY)
    box.close()

    assert cli.main(["prune", "-c", str(path)]) == 2
    assert "say how many days to keep" in capsys.readouterr().err
    assert cli.main(["prune", "-c", str(path), "--older-than", "3"]) == 2
    assert "less than 7 days" in capsys.readouterr().err
    assert cli.main(["prune", "-c", str(path), "--older-than", "365"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"removed 2 call(s), 2 message(s) and 0 unmatched receipt(s) older than 365 days from {config.outbox_path}",
        "kept 1 call(s) older than that with a message still to send",
    ]

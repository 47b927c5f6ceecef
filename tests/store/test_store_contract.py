"""One set of outbox tests, run against both implementations: SQLite (inline, the embedded
default) and PostgreSQL (a real server started by the tests, tests/pgserver.py).

Then what only a shared outbox must do: several instances recording the same hangup,
claiming side by side, taking over a dead instance's claims, settling each other's texts.
"""
from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from aftercalld.model import CallRecord, DeliveryReport, Encoding, MessageState, RecipientKind, ReportState
from aftercalld.rules.render import RenderedMessage
from aftercalld.store import Outbox, OutboxUnavailable, OutcomeRecord
from aftercalld.store.inline import InlineOutbox

T0 = datetime(2026, 11, 30, 10, 0, tzinfo=UTC).timestamp()
TTL = 3600.0


def record(call_id: str, caller: str = "+447400123456", pbx: str = "main") -> CallRecord:
    start = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
    return CallRecord(call_id=call_id, pbx=pbx, direction="inbound", status="missed", caller_number=caller,
                      dialled_number="442071234567", start_time=start, end_time=start + timedelta(seconds=30))


def text_for(call: CallRecord, to: str | None = None, *, suppressed: str = "", text: str = "Sorry we missed you"
             ) -> RenderedMessage:
    to = to or call.caller_number
    return RenderedMessage(key=f"{call.pbx}/{call.call_id}/Missed/caller:{to}", rule="Missed",
                           kind=RecipientKind.CALLER, raw_number=to, destination=None if suppressed else to,
                           sender="Acme", text=text, encoding=Encoding.GSM7, segments=1, suppressed=suppressed)


def entry(call: CallRecord, *messages: RenderedMessage):
    return (call, "Missed", "rule Missed matched", list(messages) or [text_for(call)])


@pytest.fixture(params=["sqlite", "postgresql"])
async def backend(request, tmp_path):
    """A factory of outboxes on one database: each call is another instance (PostgreSQL) or
    the same file opened again (SQLite, where one process owns the outbox)."""
    opened = []
    if request.param == "sqlite":
        path = tmp_path / "outbox.sqlite3"

        async def open_one(instance: str = "a"):
            outbox = InlineOutbox(Outbox.open(path))
            opened.append(outbox)
            return outbox
    else:
        from aftercalld.store.postgres import PgOutbox

        dsn = request.getfixturevalue("pg_dsn")

        async def open_one(instance: str = "a"):
            outbox = await PgOutbox.open(dsn, instance=instance)
            opened.append(outbox)
            return outbox
    open_one.kind = request.param
    yield open_one
    for outbox in opened:
        await outbox.close()


async def submit(outbox, now: float, *ids_per_message: tuple[str, ...]) -> list:
    claimed = await outbox.claim_due(10, now)
    outcomes = [OutcomeRecord(m, MessageState.SUBMITTED, transport_ids=ids, transport="smpp")
                for m, ids in zip(claimed, ids_per_message, strict=False)]
    await outbox.record_outcomes(outcomes, now)
    return claimed


async def test_a_call_recorded_twice_queues_its_text_once(backend):
    outbox = await backend()
    first = await outbox.record_calls([entry(record("c1")), entry(record("c2"))], ttl_seconds=TTL, now=T0)
    again = await outbox.record_calls([entry(record("c1")), entry(record("c3")), entry(record("c3"))],
                                      ttl_seconds=TTL, now=T0 + 1)
    assert first == [["main/c1/Missed/caller:+447400123456"], ["main/c2/Missed/caller:+447400123456"]]
    assert again == [None, ["main/c3/Missed/caller:+447400123456"], None]
    assert await outbox.counts_by_state() == {"queued": 3}
    assert [c["call_id"] for c in await outbox.calls()] .count("c3") == 1


async def test_a_suppressed_text_is_kept_with_its_reason_and_never_claimed(backend):
    outbox = await backend()
    call = record("c1")
    await outbox.record_calls([entry(call, text_for(call, "12", suppressed="not a mobile number"))],
                              ttl_seconds=TTL, now=T0)
    assert await outbox.claim_due(10, T0 + 1) == []
    (stored,) = await outbox.messages(call_key="main/c1")
    assert (stored["state"], stored["reason"]) == ("suppressed", "not a mobile number")


async def test_adhoc_texts_are_idempotent_by_key(backend):
    outbox = await backend()
    message = RenderedMessage(key="api/crm/42", rule="api", kind=RecipientKind.FIXED, raw_number="+447400123999",
                              destination="+447400123999", sender="Acme", text="Your table is ready",
                              encoding=Encoding.GSM7, segments=1)
    [(first, new)] = await outbox.queue_messages([("", message)], ttl_seconds=TTL, now=T0)
    [(again, new_again)] = await outbox.queue_messages([("", message)], ttl_seconds=TTL, now=T0 + 5)
    assert new and not new_again and again == first
    (claimed,) = await outbox.claim_due(10, T0 + 6)
    assert claimed.id == first and claimed.key == "api/crm/42"


async def test_submit_then_receipts_for_every_part_settle_on_the_worst(backend):
    outbox = await backend()
    await outbox.record_calls([entry(record("c1"))], ttl_seconds=TTL, now=T0)
    (message,) = await submit(outbox, T0 + 1, ("A1", "A2"))
    assert await outbox.queue_depth() == 0
    first = await outbox.apply_reports([DeliveryReport("smpp", "A1", ReportState.DELIVERED)], T0 + 2)
    assert first == []  # one part still open
    (settled,) = await outbox.apply_reports(
        [DeliveryReport("smpp", "a2", ReportState.UNDELIVERABLE, error="err:001")], T0 + 3)
    assert (settled.message_id, settled.state, settled.reason) == (message.id, MessageState.UNDELIVERABLE, "err:001")
    parts = (await outbox.parts([message.id]))[message.id]
    assert [(p["part"], p["transport_id"], p["state"]) for p in parts] == [
        (1, "A1", "delivered"), (2, "A2", "undeliverable")]
    (stored,) = await outbox.messages(call_key="main/c1")
    assert stored["transport_ids"] == "A1 A2" and stored["transport"] == "smpp"


async def test_renewing_the_leases_of_texts_being_sent_loses_none(backend):
    outbox = await backend()
    await outbox.record_calls([entry(record("c1")), entry(record("c2"))], ttl_seconds=TTL, now=T0)
    claimed = await outbox.claim_due(10, T0, lease_seconds=30)
    assert await outbox.renew_leases([m.id for m in claimed], T0 + 20, lease_seconds=30) == []
    assert await outbox.renew_leases([], T0 + 20, lease_seconds=30) == []
    assert await outbox.counts_by_state() == {"sending": 2}


async def test_a_receipt_before_its_submit_waits_and_then_settles(backend):
    outbox = await backend()
    await outbox.record_calls([entry(record("c1"))], ttl_seconds=TTL, now=T0)
    assert await outbox.apply_reports([DeliveryReport("smpp", "0x1F", ReportState.DELIVERED)], T0 + 1) == []
    assert [o["transport_id"] for o in await outbox.orphan_reports()] == ["0x1F"]
    claimed = await outbox.claim_due(10, T0 + 2)
    transitions = await outbox.record_outcomes(
        [OutcomeRecord(claimed[0], MessageState.SUBMITTED, transport_ids=("0x1F",), transport="smpp")], T0 + 2)
    assert [t.state for t in transitions] == [MessageState.SUBMITTED, MessageState.DELIVERED]
    assert await outbox.orphan_reports() == []


async def test_an_unmatched_receipt_is_resolved_loosely_later_or_kept(backend):
    outbox = await backend()
    await outbox.record_calls([entry(record("c1"))], ttl_seconds=TTL, now=T0)
    await submit(outbox, T0 + 1, ("1F",))
    await outbox.apply_reports([DeliveryReport("smpp", "31", ReportState.DELIVERED),  # 0x1F in decimal
                                DeliveryReport("smpp", "nothing-like-it", ReportState.DELIVERED)], T0 + 2)
    assert await outbox.has_pending_orphans(T0 + 100)
    (settled,) = await outbox.resolve_orphans(T0 + 100, T0 + 100)
    assert settled.state is MessageState.DELIVERED
    assert not await outbox.has_pending_orphans(T0 + 100)
    assert [o["transport_id"] for o in await outbox.orphan_reports()] == ["nothing-like-it"]
    assert set(await outbox.messages_by_id([settled.message_id, 999])) == {settled.message_id}


async def test_retry_defer_and_suppress_move_the_next_due_time(backend):
    outbox = await backend()
    await outbox.record_calls([entry(record(f"c{i}")) for i in range(3)], ttl_seconds=TTL, now=T0)
    a, b, c = await outbox.claim_due(10, T0)
    await outbox.record_outcomes([OutcomeRecord(a, MessageState.RETRYING, "throttled", next_attempt_at=T0 + 30)], T0)
    await outbox.defer(b, T0 + 20, "quiet hours", T0)
    transition = await outbox.suppress(c, "opted out", T0)
    assert transition.state is MessageState.SUPPRESSED
    assert await outbox.next_due() == T0 + 20
    assert await outbox.claim_due(10, T0 + 10) == []
    assert [m.id for m in await outbox.claim_due(10, T0 + 30)] == [a.id, b.id]
    counts = await outbox.counts_by_state()
    assert counts == {"sending": 2, "suppressed": 1}
    assert [m["attempts"] for m in await outbox.messages()] == [2, 1, 1]


async def test_lists_policy_counts_and_replies(backend):
    outbox = await backend()
    assert await outbox.optout_add(["+447400000001", "+447400000002"], "cli", T0) == 2
    assert await outbox.optout_add(["+447400000001"], "reply STOP", T0) == 0
    assert await outbox.opted_out_among(["+447400000001", "+447400000003"]) == {"+447400000001"}
    assert await outbox.optout_remove(["+447400000002", "+447400000009"]) == ["+447400000002"]
    assert [n for n, *_ in await outbox.optout_list()] == ["+447400000001"]
    await outbox.dnd_add(["+4420*", "+447400000005"], "cli", T0)
    assert await outbox.dnd_matches(["+442071234567", "+447400000005", "+447400000006"]) == {
        "+442071234567", "+447400000005"}
    call = record("c1")
    await outbox.record_calls([entry(call)], ttl_seconds=TTL, now=T0)
    await submit(outbox, T0 + 1, ("X1",))
    assert await outbox.submitted_counts_since(T0) == (1, {"Missed": 1})
    assert await outbox.last_submitted_to([call.caller_number, "+447400000009"], T0) == {call.caller_number: T0 + 1}
    facts = await outbox.policy_facts([call.caller_number, "+447400000001", "+442071234567", "+447400000009"],
                                      submitted_since=T0)
    assert (facts.opted_out, facts.dnd, facts.last_submitted) == (
        {"+447400000001"}, {"+442071234567"}, {call.caller_number: T0 + 1})
    later = await outbox.policy_facts([call.caller_number], submitted_since=T0 + 2)
    assert later.last_submitted == {}
    without_cooldown = await outbox.policy_facts([call.caller_number, "+447400000001"], submitted_since=None)
    assert (without_cooldown.opted_out, without_cooldown.last_submitted) == ({"+447400000001"}, {})
    reply_id, call_key = await outbox.record_reply(call.caller_number, "Thanks!", "smpp", "", T0 + 60, 86400)
    assert call_key == "main/c1"
    (reply,) = await outbox.replies(numbers=[call.caller_number])
    assert (reply["id"], reply["text"], reply["call_key"]) == (reply_id, "Thanks!", "main/c1")
    _, nothing = await outbox.record_reply("+447400000077", "who is this", "smpp", "", T0 + 60, 86400)
    assert nothing is None


async def test_handover_is_taken_once(backend):
    outbox = await backend()
    await outbox.save_handover("main", '{"calls": []}', T0)
    assert await outbox.take_handover("main") == ('{"calls": []}', T0)
    assert await outbox.take_handover("main") is None


async def test_prune_keeps_calls_with_a_text_still_to_send(backend):
    outbox = await backend()
    await outbox.record_calls([entry(record("old")), entry(record("waiting"))], ttl_seconds=TTL, now=T0)
    await outbox.record_calls([entry(record("new"))], ttl_seconds=TTL, now=T0 + 10_000)
    claimed = await outbox.claim_due(1, T0)
    await outbox.record_outcomes([OutcomeRecord(claimed[0], MessageState.FAILED, "refused")], T0)
    pruned, more = await outbox.prune(T0 + 5_000)
    assert (pruned.calls, pruned.messages, pruned.kept, more) == (1, 1, 1, None)
    assert sorted(c["call_id"] for c in await outbox.calls()) == ["new", "waiting"]


async def test_prune_removes_old_texts_no_call_owns_once_they_are_final(backend):
    outbox = await backend()

    def adhoc(key: str) -> RenderedMessage:
        return RenderedMessage(key=key, rule=key.split("/")[0], kind=RecipientKind.FIXED, raw_number="+447400123999",
                               destination="+447400123999", sender="Acme", text="hello", encoding=Encoding.GSM7,
                               segments=1)

    await outbox.queue_messages([("", adhoc("api/crm/1")), ("main/c1", adhoc("reply/7/agent:+447400123201")),
                                 ("", adhoc("api/crm/still-queued"))], ttl_seconds=TTL, now=T0)
    await outbox.queue_messages([("", adhoc("api/crm/new"))], ttl_seconds=TTL, now=T0 + 10_000)
    claimed = await outbox.claim_due(10, T0)
    assert len(claimed) == 3  # the newer one is not due yet
    for m in claimed:
        if m.key == "api/crm/still-queued":
            await outbox.defer(m, T0 + 60_000, "quiet hours", T0)
    await outbox.record_outcomes([OutcomeRecord(m, MessageState.SUBMITTED, transport_ids=(f"x{m.id}",))
                                  for m in claimed if m.key != "api/crm/still-queued"], T0)
    pruned, _ = await outbox.prune(T0 + 5_000)
    assert pruned.messages == 2
    assert sorted(m["key"] for m in await outbox.messages()) == ["api/crm/new", "api/crm/still-queued"]


async def test_both_outboxes_show_support_the_same_columns(backend, pg_dsn):
    from aftercalld.store.postgres import PgOutbox

    outbox = await backend()
    await outbox.record_calls([entry(record("c1"))], ttl_seconds=TTL, now=T0)
    pg = await PgOutbox.open(pg_dsn, instance="x")
    try:
        await pg.record_calls([entry(record("c1"))], ttl_seconds=TTL, now=T0)
        assert set((await outbox.calls())[0]) == set((await pg.calls())[0])
        shared_only = {"claimed_by", "lease_until", "allowed_at"}
        assert set((await outbox.messages())[0]) - shared_only == set((await pg.messages())[0]) - shared_only
    finally:
        await pg.close()


# -- what only a shared outbox must do ----------------------------------------------------

@pytest.fixture
async def shared(pg_dsn):
    from aftercalld.store.postgres import PgOutbox

    a = await PgOutbox.open(pg_dsn, instance="host-a")
    b = await PgOutbox.open(pg_dsn, instance="host-b")
    yield a, b
    await a.close()
    await b.close()


async def test_two_instances_recording_the_same_hangups_queue_each_text_once(shared):
    a, b = shared
    calls = [record(f"c{i}") for i in range(200)]
    results = await asyncio.gather(*(
        outbox.record_calls([entry(call) for call in calls[i:i + 20]], ttl_seconds=TTL, now=T0)
        for i in range(0, 200, 20) for outbox in (a, b)))
    queued = [keys for batch in results for keys in batch if keys is not None]
    assert len(queued) == 200
    assert await a.counts_by_state() == {"queued": 200}


async def test_instances_claim_side_by_side_without_taking_the_same_message(shared):
    a, b = shared
    await a.record_calls([entry(record(f"c{i}")) for i in range(300)], ttl_seconds=TTL, now=T0)
    claims: dict[str, list[int]] = {"host-a": [], "host-b": []}

    async def drain(outbox):
        while batch := await outbox.claim_due(7, T0 + 1):
            claims[outbox.instance] += [m.id for m in batch]
            await asyncio.sleep(0)

    await asyncio.gather(drain(a), drain(b))
    assert len(claims["host-a"]) + len(claims["host-b"]) == 300
    assert not set(claims["host-a"]) & set(claims["host-b"])
    assert claims["host-a"] and claims["host-b"]


async def test_a_dead_instances_claims_pass_to_another_when_the_lease_runs_out(shared):
    a, b = shared
    await a.record_calls([entry(record("c1"))], ttl_seconds=TTL, now=T0)
    (taken,) = await a.claim_due(10, T0, lease_seconds=30)
    assert await b.claim_due(10, T0 + 29) == []  # a may still be sending it
    assert await b.next_due() == T0 + 30
    (again,) = await b.claim_due(10, T0 + 30)
    assert again.id == taken.id and again.attempts == 2
    (row,) = await b.messages()
    assert row["claimed_by"] == "host-b"


async def test_a_renewed_lease_keeps_another_instance_from_claiming_the_text(shared):
    a, b = shared
    await a.record_calls([entry(record("c1"))], ttl_seconds=TTL, now=T0)
    (taken,) = await a.claim_due(10, T0, lease_seconds=30)
    assert await a.renew_leases([taken.id], T0 + 20, lease_seconds=30) == []
    assert await b.claim_due(10, T0 + 45) == []  # past the first lease, within the renewed one
    assert await b.next_due() == T0 + 50
    (row,) = await b.messages()
    assert (row["claimed_by"], row["lease_until"], row["attempts"]) == ("host-a", T0 + 50, 1)


async def test_renewing_reports_the_texts_another_instance_took_or_that_were_recorded(shared):
    a, b = shared
    await a.record_calls([entry(record(f"c{i}")) for i in range(3)], ttl_seconds=TTL, now=T0)
    lost, recorded, kept = await a.claim_due(10, T0, lease_seconds=30)
    await a.record_outcomes([OutcomeRecord(recorded, MessageState.SUBMITTED, transport_ids=("9",),
                                           transport="smpp")], T0 + 5)
    assert await a.renew_leases([kept.id], T0 + 20, lease_seconds=30) == []  # lost's lease runs out at T0 + 30
    (again,) = await b.claim_due(10, T0 + 31, lease_seconds=30)
    assert again.id == lost.id
    gone = 10**9  # pruned meanwhile: no longer being sent either
    assert await a.renew_leases([lost.id, recorded.id, kept.id, gone], T0 + 32, lease_seconds=30) == [
        lost.id, recorded.id, gone]
    leases = {r["id"]: (r["claimed_by"], r["lease_until"]) for r in await b.messages()}
    assert leases[lost.id] == ("host-b", T0 + 61)  # b's claim is left alone
    assert leases[kept.id] == ("host-a", T0 + 62)
    assert await b.renew_leases([lost.id], T0 + 33, lease_seconds=30) == []


async def test_renewing_skips_a_text_another_transaction_holds_without_calling_it_lost(shared, pg_dsn):
    import psycopg

    a, _ = shared
    await a.record_calls([entry(record("c1"))], ttl_seconds=TTL, now=T0)
    (taken,) = await a.claim_due(10, T0, lease_seconds=30)
    async with await psycopg.AsyncConnection.connect(pg_dsn) as holder:  # e.g. its outcome being written
        await holder.execute("SELECT id FROM messages WHERE id = %s FOR UPDATE", (taken.id,))
        assert await asyncio.wait_for(a.renew_leases([taken.id], T0 + 20, lease_seconds=30), 10) == []
        await holder.rollback()
    (row,) = await a.messages()
    assert row["lease_until"] == T0 + 30  # not waited for, not renewed: the next renewal is
    assert await a.renew_leases([taken.id], T0 + 21, lease_seconds=30) == []
    (row,) = await a.messages()
    assert row["lease_until"] == T0 + 51


async def test_an_instance_restarting_requeues_its_own_claims_at_once(shared, pg_dsn):
    from aftercalld.store.postgres import PgOutbox

    a, b = shared
    await a.record_calls([entry(record("mine")), entry(record("theirs"))], ttl_seconds=TTL, now=T0)
    await a.claim_due(1, T0, lease_seconds=600)
    await b.claim_due(1, T0, lease_seconds=600)
    restarted = await PgOutbox.open(pg_dsn, instance="host-a")
    try:
        assert await restarted.requeue_interrupted(T0 + 5) == 1  # not host-b's, whose lease runs
        assert await restarted.counts_by_state() == {"queued": 1, "sending": 1}
    finally:
        await restarted.close()


async def test_a_receipt_on_one_instance_settles_a_text_another_sent(shared):
    a, b = shared
    await a.record_calls([entry(record("c1"))], ttl_seconds=TTL, now=T0)
    (message,) = await submit(a, T0 + 1, ("77",))
    (settled,) = await b.apply_reports([DeliveryReport("smpp", "77", ReportState.DELIVERED)], T0 + 2)
    assert settled.message_id == message.id and settled.state is MessageState.DELIVERED
    await a.heartbeat({"binds": 1}, T0 + 3)
    await b.heartbeat({"binds": 2}, T0 + 4)
    assert [(i["instance"], i["info"]) for i in await a.instances()] == [
        ("host-b", {"binds": 2}), ("host-a", {"binds": 1})]


async def test_an_unreachable_server_is_a_clear_error_without_the_password(tmp_path):
    from aftercalld.store.postgres import PgOutbox

    dsn = f"host={tmp_path} port=1 user=acd password=s3cr3t-pw dbname=outbox"
    with pytest.raises(OutboxUnavailable) as caught:
        await PgOutbox.open(dsn, instance="a", connect_timeout=2)
    message = str(caught.value)
    assert "s3cr3t-pw" not in message
    assert message.startswith("postgresql://acd@") and "cannot connect to the outbox" in message


async def test_a_hostile_reply_with_a_nul_byte_is_stored_not_refused(backend):
    outbox = await backend()
    _, call_key = await outbox.record_reply("+447400000001", "STOP\x00now", "smpp", "", T0, 60)
    (reply,) = await outbox.replies()
    assert reply["text"].startswith("STOP") and call_key is None


# -- webhook rows, written with the change they report -------------------------------------

def webhook_sink(written: list[int], events=("message.*", "reply.received")):
    from aftercalld.webhooks.config import WebhookEndpoint
    from aftercalld.webhooks.events import WebhookEvents

    endpoint = WebhookEndpoint(name="crm", url="http://127.0.0.1:9/hook", secret=b"0123456789abcdef", events=events)
    return WebhookEvents([endpoint], on_written=lambda: written.append(1))


async def test_message_state_changes_write_their_webhook_rows_in_the_same_transaction(backend):
    from aftercalld.store import WebhookResult

    outbox = await backend()
    written: list[int] = []
    outbox.events = webhook_sink(written)
    call = record("c1")
    await outbox.record_calls([entry(call, text_for(call), text_for(call, "12", suppressed="not a number"))],
                              ttl_seconds=TTL, now=T0)
    await submit(outbox, T0 + 1, ("W1",))
    await outbox.apply_reports([DeliveryReport("smpp", "W1", ReportState.DELIVERED)], T0 + 2)
    rows = await outbox.webhook_deliveries()
    assert [r["event_type"] for r in rows] == [
        "message.queued", "message.suppressed", "message.submitted", "message.delivered"]
    assert len(written) == 3 and {r["endpoint"] for r in rows} == {"crm"}
    assert await outbox.webhook_counts() == {"crm": {"queued": 4}}

    claimed = await outbox.claim_webhooks({"crm": 3}, T0 + 3)
    assert [d.event_type for d in claimed] == ["message.queued", "message.suppressed", "message.submitted"]
    await outbox.record_webhook_results([WebhookResult(claimed[0].id, "delivered"),
                                         WebhookResult(claimed[1].id, "retrying", "503", next_attempt_at=T0 + 60),
                                         WebhookResult(claimed[2].id, "failed", "410 Gone")], T0 + 4)
    assert await outbox.next_webhook_due(["crm"]) == T0 + 2
    assert await outbox.webhook_counts() == {"crm": {"delivered": 1, "retrying": 1, "failed": 1, "queued": 1}}
    (left,) = await outbox.claim_webhooks({"crm": 5}, T0 + 5)
    assert left.event_type == "message.delivered"
    assert await outbox.requeue_webhooks(T0 + 6) == 1  # the run stopped while posting it


async def test_a_reply_its_optout_and_what_it_causes_are_written_together(backend):
    from aftercalld.model import Encoding
    from aftercalld.store import ReplyEffects

    outbox = await backend()
    written: list[int] = []
    sink = webhook_sink(written, events=("reply.received",))
    outbox.events = sink
    call = record("c1")
    await outbox.record_calls([entry(call)], ttl_seconds=TTL, now=T0)
    await submit(outbox, T0 + 1, ("R1",))
    seen = []

    def effects(reply_id, answered):
        seen.append((reply_id, answered.call_key, answered.rule, answered.sender))
        forward = RenderedMessage(key=f"reply/{reply_id}/agent:+447400123201", rule="reply:forward",
                                  kind=RecipientKind.AGENT, raw_number="+447400123201",
                                  destination="+447400123201", sender="Acme", text="Reply from caller: STOP",
                                  encoding=Encoding.GSM7, segments=1)
        return ReplyEffects(messages=[("main/c1", forward)],
                            webhooks=sink.rows("reply.received", {"reply_id": reply_id}, T0 + 5))

    reply_id, call_key = await outbox.record_reply(call.caller_number, "STOP", "smpp", "STOP", T0 + 5, 86400,
                                                   optout="reply STOP via smpp", effects=effects)
    assert seen == [(reply_id, "main/c1", "Missed", "Acme")] and call_key == "main/c1"
    assert await outbox.is_opted_out(call.caller_number)
    forwarded = await outbox.messages(rule="reply:forward")
    assert [(m["destination"], m["state"]) for m in forwarded] == [("+447400123201", "queued")]
    assert [r["event_type"] for r in await outbox.webhook_deliveries()] == ["reply.received"]
    assert written == [1]
    assert await outbox.last_created("+447400123201", "reply:forward", T0) == T0 + 5
    assert CallRecord.from_json(await outbox.call_record("main/c1")).call_id == "c1"
    await outbox.record_reply(call.caller_number, "START", "smpp", "START", T0 + 6, 86400, optout="remove")
    assert not await outbox.is_opted_out(call.caller_number)


async def test_a_dead_instances_webhook_posts_pass_to_another(shared):
    written: list[int] = []
    a, b = shared
    a.events = webhook_sink(written)
    await a.record_calls([entry(record("c1"))], ttl_seconds=TTL, now=T0)
    (taken,) = await a.claim_webhooks({"crm": 5}, T0, lease_seconds=30)
    assert await b.claim_webhooks({"crm": 5}, T0 + 29) == []
    (again,) = await b.claim_webhooks({"crm": 5}, T0 + 30)
    assert again.event_id == taken.event_id and again.attempts == 2


async def test_a_server_restart_is_an_outbox_unavailable_then_the_next_call_reconnects(caplog):
    from pgserver import PgServer

    from aftercalld.store.postgres import PgOutbox

    server = PgServer().start()  # its own: stopping the session's would break other tests
    try:
        outbox = await PgOutbox.open(server.new_database(), instance="a")
        await outbox.record_calls([entry(record("before"))], ttl_seconds=TTL, now=T0)
        # "fast": the test server runs without fsync, so only a clean stop keeps what it took.
        server.stop("fast")
        with pytest.raises(OutboxUnavailable) as caught:
            await outbox.record_calls([entry(record("during"))], ttl_seconds=TTL, now=T0 + 1)
        assert str(caught.value).startswith("postgresql://aftercalld@")
        with pytest.raises(OutboxUnavailable, match="cannot connect to the outbox"):
            await outbox.queue_depth()
        server.start()
        assert await outbox.record_calls([entry(record("during"))], ttl_seconds=TTL, now=T0 + 2) == [
            ["main/during/Missed/caller:+447400123456"]]
        assert await outbox.queue_depth() == 2
        assert "connected to the outbox" in caplog.text
        await outbox.close()
    finally:
        server.remove()


async def test_a_receipt_settles_the_text_its_own_transport_sent_when_ids_collide(backend):
    outbox = await backend()
    await outbox.record_calls([entry(record("via-a")), entry(record("via-b"))], ttl_seconds=TTL, now=T0)
    a, b = await outbox.claim_due(10, T0)
    await outbox.record_outcomes([OutcomeRecord(a, MessageState.SUBMITTED, transport_ids=("1",), transport="smsc-a"),
                                  OutcomeRecord(b, MessageState.SUBMITTED, transport_ids=("1",), transport="smsc-b")],
                                 T0 + 1)
    (settled,) = await outbox.apply_reports([DeliveryReport("smsc-a", "1", ReportState.DELIVERED)], T0 + 2)
    assert settled.message_id == a.id


def policy(outbox, **config):
    from zoneinfo import ZoneInfo

    from aftercalld.policy import Policy, PolicyConfig

    return Policy(PolicyConfig(**config), outbox, ZoneInfo("UTC"))


async def test_daily_quotas_count_the_other_instances_sends_at_once(shared):
    a, b = shared
    calls = [record(f"q{i}", caller=f"+4474001234{i:02d}") for i in range(5)]
    await a.record_calls([entry(call) for call in calls], ttl_seconds=TTL, now=T0)
    first = await a.claim_due(1, T0)
    assert [v.send for v in await policy(a, daily_quota=3).check(first, T0)] == [True]
    by_b = await b.claim_due(4, T0)  # b has not submitted a's text's quota away: it counts at once
    verdicts = await policy(b, daily_quota=3).check(by_b, T0)
    assert [v.send for v in verdicts] == [True, True, False, False]
    assert verdicts[2].reason == "daily quota of 3 reached"


async def test_the_last_texts_of_a_quota_decided_on_two_instances_at_once_go_out_once(shared):
    a, b = shared
    await a.record_calls([entry(record(f"q{i}", caller=f"+4474001234{i:02d}")) for i in range(8)],
                         ttl_seconds=TTL, now=T0)
    mine, theirs = await a.claim_due(4, T0), await b.claim_due(4, T0)
    verdicts = await asyncio.gather(policy(a, daily_quota=3).check(mine, T0),
                                    policy(b, daily_quota=3).check(theirs, T0))
    allowed = [m for batch, vs in zip((mine, theirs), verdicts, strict=True)
               for m, v in zip(batch, vs, strict=True) if v.send]
    assert len(allowed) == 3
    # A text allowed again after a transient failure is counted once.
    retried = allowed[0]
    owner = a if retried in mine else b
    await owner.record_outcomes([OutcomeRecord(retried, MessageState.RETRYING, "throttled", next_attempt_at=T0 + 5)],
                                T0 + 1)
    again = await a.claim_due(1, T0 + 5)
    assert [m.id for m in again] == [retried.id]
    assert [v.send for v in await policy(a, daily_quota=3).check(again, T0 + 5)] == [True]
    await a.record_calls([entry(record("q-late", caller="+447400123499"))], ttl_seconds=TTL, now=T0 + 6)
    late = await a.claim_due(1, T0 + 6)
    (verdict,) = await policy(b, daily_quota=3).check(late, T0 + 6)
    assert verdict.reason == "daily quota of 3 reached"


async def test_texts_sent_before_the_quotas_were_counted_count_for_the_day(shared):
    a, b = shared
    await a.record_calls([entry(record("q0", caller="+447400123400"))], ttl_seconds=TTL, now=T0)
    await submit(a, T0 + 1, ("X1",))  # no quota set yet: nothing counted it
    await a.record_calls([entry(record(f"q{i}", caller=f"+4474001234{i:02d}")) for i in (1, 2)],
                         ttl_seconds=TTL, now=T0 + 2)
    rest = await b.claim_due(2, T0 + 2)
    assert [v.send for v in await policy(b, daily_quota=2).check(rest, T0 + 2)] == [True, False]


async def test_two_texts_to_one_number_decided_on_two_instances_at_once_go_out_once(shared):
    a, b = shared
    caller = "+447400123456"
    await a.record_calls([entry(record("first", caller)), entry(record("second", caller))], ttl_seconds=TTL, now=T0)
    mine, theirs = await a.claim_due(1, T0), await b.claim_due(1, T0)
    verdicts = await asyncio.gather(policy(a, cooldown_seconds=1800).check(mine, T0),
                                    policy(b, cooldown_seconds=1800).check(theirs, T0))
    assert sorted(v.send for (v,) in verdicts) == [False, True]
    (held,) = [v for (v,) in verdicts if not v.send]
    assert held.reason == "cooldown: texted 0 min ago (limit 30 min)"


async def test_allow_sends_counts_what_was_sent_and_returns_what_decide_allows(backend):
    outbox = await backend()
    calls = [record(f"a{i}", caller=f"+4474001230{i:02d}") for i in range(3)]
    await outbox.record_calls([entry(calls[0])], ttl_seconds=TTL, now=T0)
    (sent,) = await submit(outbox, T0 + 1, ("X1",))
    await outbox.record_calls([entry(call) for call in calls[1:]], ttl_seconds=TTL, now=T0 + 2)
    rest = await outbox.claim_due(10, T0 + 2)
    seen = []

    def decide(counts):
        seen.append(counts)
        return [rest[0].id]

    allowed = await outbox.allow_sends([m.id for m in rest], [m.destination for m in rest] + [sent.destination],
                                       T0 + 2, day="2026-11-30", midnight=T0,
                                       cooldown_since=T0, decide=decide)
    assert allowed == [rest[0].id]
    (counts,) = seen
    assert (counts.today, counts.today_by_rule, counts.last_sent) == (1, {"Missed": 1}, {sent.destination: T0 + 1})


async def test_an_outbox_of_schema_version_1_is_upgraded_at_start(pg_dsn):
    from aftercalld.store.postgres import SCHEMA_VERSION, PgOutbox

    old = await PgOutbox.open(pg_dsn, instance="a")
    await old.conn.execute("ALTER TABLE messages DROP COLUMN allowed_at")
    await old.conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    await old.record_calls([entry(record("kept"))], ttl_seconds=TTL, now=T0)
    await old.close()
    new = await PgOutbox.open(pg_dsn, instance="a")
    try:
        assert await new.meta_get("schema_version") == str(SCHEMA_VERSION) == "2"
        (message,) = await new.messages()
        assert message["allowed_at"] is None and message["call_key"] == "main/kept"
    finally:
        await new.close()


async def test_a_text_submitted_twice_in_one_batch_keeps_each_parts_last_id(backend):
    outbox = await backend()
    await outbox.record_calls([entry(record("twice"))], ttl_seconds=TTL, now=T0)
    (message,) = await outbox.claim_due(1, T0)
    await outbox.record_outcomes([
        OutcomeRecord(message, MessageState.SUBMITTED, transport_ids=("A1", "A2"), transport="smpp"),
        OutcomeRecord(message, MessageState.SUBMITTED, transport_ids=("B1",), transport="smpp")], T0 + 1)
    (row,) = await outbox.messages()
    assert (row["state"], row["transport_ids"]) == ("submitted", "B1 A2")


async def test_a_policy_decision_another_instance_overtook_is_read_and_made_again(shared, pg_dsn):
    import psycopg

    a, _ = shared
    await a.record_calls([entry(record("raced"))], ttl_seconds=TTL, now=T0)
    claimed = await a.claim_due(1, T0)
    reads = []

    def decide(counts):
        reads.append(counts)
        if len(reads) == 1:  # another instance's decision lands between this read and its write
            with psycopg.connect(pg_dsn, autocommit=True) as other:
                other.execute("UPDATE meta SET value = (value::bigint + 1)::text WHERE key = 'policy_version'")
        return [m.id for m in claimed]

    allowed = await a.allow_sends([m.id for m in claimed], [m.destination for m in claimed], T0, day="2026-11-30",
                                  midnight=T0, cooldown_since=None, decide=decide)
    assert allowed == [claimed[0].id] and len(reads) == 2
    assert (await a.messages())[0]["allowed_at"] == T0
    assert reads[1].today == 0  # the first attempt wrote nothing

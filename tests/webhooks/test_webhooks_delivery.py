"""Webhook deliveries from the durable outbox to a real aiohttp receiver on 127.0.0.1 that
checks signatures: delivered on 2xx, refused for good on 4xx, retried with backoff on 5xx,
408, 429 and refused connections, given up after the time-to-live."""
from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest
from receiver import Receiver

from aftercalld.metrics import Metrics
from aftercalld.model import MessageState, RecipientKind
from aftercalld.phone import PhoneRules
from aftercalld.rules.render import RenderContext, render_adhoc
from aftercalld.store import Outbox, OutcomeRecord
from aftercalld.webhooks.config import WebhookEndpoint
from aftercalld.webhooks.events import WebhookEvents
from aftercalld.webhooks.signing import header_value, verify
from aftercalld.webhooks.worker import WebhookWorker

SECRET = b"s3cret-for-the-tests-0123456789"


def endpoint(url: str, **kw) -> WebhookEndpoint:
    base = dict(name="crm", url=url, secret=SECRET, retry_initial_seconds=0.02, retry_max_seconds=0.05)
    base.update(kw)
    return WebhookEndpoint(**base)


class Harness:
    def __init__(self, tmp_path, endpoints):
        self.outbox = Outbox.open(tmp_path / "outbox.sqlite3")
        self.events = WebhookEvents(endpoints)
        self.outbox.events = self.events
        self.metrics = Metrics()
        self.worker = WebhookWorker(self.outbox, endpoints, metrics=self.metrics)
        self.events.on_written = self.worker.wake
        self.task: asyncio.Task | None = None

    def start(self):
        self.task = asyncio.create_task(self.worker.run())
        return self

    def reply_event(self, n: int = 1):
        now = time.time()
        rows = []
        for i in range(n):
            rows += self.events.rows("reply.received", {"reply_id": i, "from": "+447700900123", "text": f"hi {i}"},
                                     now)
        self.outbox.queue_webhooks(rows, now)
        return rows

    def counted(self, endpoint: str, result: str) -> float:
        return self.metrics.registry.get_sample_value("aftercalld_webhook_deliveries_total",
                                                      {"endpoint": endpoint, "result": result}) or 0.0

    async def close(self):
        if self.task:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.outbox.close()


@pytest.fixture
async def receiver():
    r = await Receiver(SECRET).start()
    yield r
    await r.stop()


async def test_a_delivery_is_posted_signed_with_its_event_id(tmp_path, receiver):
    h = Harness(tmp_path, [endpoint(receiver.url)]).start()
    try:
        (event_id, _, _, body), = h.reply_event()
        await receiver.wait_until(lambda: receiver.accepted())
        await h.worker.wait_idle()
        got = receiver.received[0]
        assert got.signed and receiver.bad_signatures == 0
        assert got.event["id"] == event_id == got.headers["X-Aftercalld-Event-Id"]
        assert got.event["type"] == "reply.received" == got.headers["X-Aftercalld-Event"]
        assert got.event["data"]["text"] == "hi 0"
        assert json.loads(body) == got.event
        row, = h.outbox.webhook_deliveries()
        assert (row["state"], row["attempts"], row["last_error"]) == ("delivered", 1, "")
        assert h.counted("crm", "delivered") == 1
    finally:
        await h.close()


async def test_message_events_are_written_with_the_state_change_and_filtered_per_endpoint(tmp_path, receiver):
    only_final = endpoint(receiver.url, name="finals", events=("message.delivered", "message.failed"))
    everything = endpoint(receiver.url, name="all", events=("*",))
    h = Harness(tmp_path, [only_final, everything])
    ctx = RenderContext(PhoneRules(default_region="GB", allowed_regions=frozenset({"GB"})), {}, {})
    message = render_adhoc("api/1", "api", RecipientKind.CALLER, "+447400123456", "hello", "ACME", ctx)
    now = time.time()
    (message_id, _), = h.outbox.queue_messages([("", message)], ttl_seconds=60, now=now)
    claimed, = h.outbox.claim_due(1, now)
    h.outbox.record_outcomes([OutcomeRecord(claimed, MessageState.FAILED, "rejected by the SMSC")], now)
    # The rows exist before any post: written in the transactions of the changes.
    rows = h.outbox.webhook_deliveries()
    assert sorted((r["endpoint"], r["event_type"]) for r in rows) == [
        ("all", "message.failed"), ("all", "message.queued"), ("finals", "message.failed")]
    failed = [r for r in rows if r["event_type"] == "message.failed"]
    assert failed[0]["event_id"] == failed[1]["event_id"]  # one event, two endpoints
    h.start()
    try:
        await receiver.wait_until(lambda: len(receiver.accepted()) == 3)
        data = receiver.events("message.failed")[0]["data"]
        assert (data["message_id"], data["to"], data["state"], data["reason"]) == (
            message_id, "+447400123456", "failed", "rejected by the SMSC")
    finally:
        await h.close()


async def test_server_errors_are_retried_with_the_same_event_id(tmp_path):
    receiver = await Receiver(SECRET, answers=[500, 503, 408, 429]).start()
    h = Harness(tmp_path, [endpoint(receiver.url)]).start()
    try:
        (event_id, *_), = h.reply_event()
        await receiver.wait_until(lambda: receiver.accepted(), timeout=10)
        assert [r.status for r in receiver.received] == [500, 503, 408, 429, 200]
        assert {r.event["id"] for r in receiver.received} == {event_id}
        assert [r.headers["X-Aftercalld-Attempt"] for r in receiver.received] == ["1", "2", "3", "4", "5"]
        await h.worker.wait_idle()
        row, = h.outbox.webhook_deliveries()
        assert (row["state"], row["attempts"]) == ("delivered", 5)
        assert h.counted("crm", "retry") == 4 and h.counted("crm", "delivered") == 1
    finally:
        await h.close()
        await receiver.stop()


async def test_a_client_error_is_a_permanent_failure(tmp_path):
    receiver = await Receiver(SECRET, answers=[410]).start()
    h = Harness(tmp_path, [endpoint(receiver.url)]).start()
    try:
        h.reply_event()
        await receiver.wait_until(lambda: receiver.received)
        await h.worker.wait_idle()
        row, = h.outbox.webhook_deliveries()
        assert (row["state"], row["attempts"], row["last_error"]) == ("failed", 1, "refused: HTTP 410")
        assert len(receiver.received) == 1
    finally:
        await h.close()
        await receiver.stop()


async def test_a_wrong_secret_is_refused_by_the_receiver_and_not_retried(tmp_path, receiver):
    h = Harness(tmp_path, [endpoint(receiver.url, secret=b"another-secret-0123456789")]).start()
    try:
        h.reply_event()
        await receiver.wait_until(lambda: receiver.received)
        await h.worker.wait_idle()
        assert receiver.bad_signatures == 1
        assert h.outbox.webhook_deliveries()[0]["state"] == "failed"
    finally:
        await h.close()


async def test_an_endpoint_that_never_answers_is_given_up_after_its_time_to_live(tmp_path):
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    h = Harness(tmp_path, [endpoint(f"http://127.0.0.1:{port}/hook", ttl_seconds=0.3)])
    gave_up = asyncio.Event()
    record = h.outbox.record_webhook_results

    def recorded(results, now):
        record(results, now)
        if any(r.state == "failed" for r in results):
            gave_up.set()

    h.outbox.record_webhook_results = recorded
    h.start()
    try:
        h.reply_event()
        await asyncio.wait_for(gave_up.wait(), 10)
        row = h.outbox.webhook_deliveries()[0]
        assert row["last_error"].startswith("gave up after ") and "time-to-live 0.3s" in row["last_error"]
        assert "ClientConnectorError" in row["last_error"]
        assert row["attempts"] >= 2
    finally:
        await h.close()


async def test_concurrency_per_endpoint_is_bounded(tmp_path):
    in_flight = 0
    peak = 0
    gate = asyncio.Event()
    three = asyncio.Event()

    from aiohttp import web

    async def slow(request):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        if in_flight == 3:
            three.set()
        await gate.wait()
        in_flight -= 1
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    h = Harness(tmp_path, [endpoint(f"http://127.0.0.1:{port}/hook", concurrency=3)]).start()
    try:
        h.reply_event(20)
        await asyncio.wait_for(three.wait(), 10)
        # The worker claims only for free slots: three rows are out, the rest wait their turn.
        states = [r["state"] for r in h.outbox.webhook_deliveries()]
        assert (states.count("sending"), states.count("queued")) == (3, 17)
        assert peak == 3
        gate.set()
        await h.worker.wait_idle()
        assert {r["state"] for r in h.outbox.webhook_deliveries()} == {"delivered"}
    finally:
        await h.close()
        await runner.cleanup()


def test_signature_check_refuses_old_timestamps_and_changed_bodies():
    body = b'{"id":"evt_1"}'
    header = header_value(SECRET, 1_800_000_000, body)
    assert verify(SECRET, header, body, now=1_800_000_010)
    assert not verify(SECRET, header, body, now=1_800_000_000 + 301)  # replayed later
    assert not verify(SECRET, header, body + b" ", now=1_800_000_010)
    assert not verify(b"wrong-secret-0123456789", header, body, now=1_800_000_010)
    assert not verify(SECRET, "v1=abc", body, now=1_800_000_010)


def test_the_readme_snippet_verifies_our_signature():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("**Checking the signature.**", 1)[1]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(snippet.replace("# e.g. in Flask", "# "), "README.md", "exec"), namespace)
    body = b'{"id":"evt_1","type":"reply.received"}'
    now = int(time.time())
    assert namespace["verify"](SECRET, header_value(SECRET, now, body), body)
    assert not namespace["verify"](SECRET, header_value(SECRET, now - 600, body), body)
    assert not namespace["verify"](SECRET, header_value(b"x" * 20, now, body), body)

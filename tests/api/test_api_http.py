"""The HTTP API of a real daemon (in this process) over real sockets: an aiohttp client in
front, the SMSC simulator behind. Every answer is checked against the OpenAPI document."""
from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest
from api_helpers import NOW, OTHER_TOKEN, TOKEN, running_daemon, write_config, write_tokens
from smsc_sim import SmscSim, decode

from aftercalld.api.openapi import DOCUMENT
from aftercalld.model import CallRecord


@pytest.fixture
async def smsc():
    sim = SmscSim()
    await sim.start()
    yield sim
    await sim.stop()


def texts(smsc: SmscSim) -> list[tuple[str, str, str]]:
    return [(s.source, s.destination, decode(s.short_message, s.data_coding)) for s in smsc.accepted]


async def test_a_text_goes_out_once_and_a_repeat_returns_the_same_message(tmp_path, smsc, caplog):
    caplog.set_level(logging.DEBUG)
    async with running_daemon(write_config(tmp_path, smsc)) as (daemon, api):
        await smsc.wait_until(lambda: len(smsc.bound()) >= 1)
        request = {"to": "07400 123456", "text": "Your table is ready.", "sender": "Cafe"}
        status, first, headers = await api.call("POST", "/v1/messages", json=request,
                                                headers={"Idempotency-Key": "order-17"})
        assert status == 201
        assert headers["Location"] == f"/v1/messages/{first['id']}"
        assert (first["key"], first["rule"], first["destination"]) == ("api/crm/order-17", "api/crm", "+447400123456")
        assert (first["state"], first["recipient"], first["sender"]) == ("queued", "fixed", "Cafe")
        await smsc.wait_until(lambda: len(smsc.accepted) >= 1)
        assert texts(smsc) == [("Cafe", "447400123456", "Your table is ready.")]

        # The same key again, even with another text: nothing new, the first message, 200.
        status, again, _ = await api.call("POST", "/v1/messages", json={**request, "text": "changed"},
                                          headers={"Idempotency-Key": "order-17"})
        assert status == 200 and again["id"] == first["id"] and again["text"] == "Your table is ready."
        # The same key from another token is another client's text.
        status, other, _ = await api.call("POST", "/v1/messages", json=request, token=OTHER_TOKEN,
                                          headers={"Idempotency-Key": "order-17"})
        assert status == 201 and other["id"] != first["id"] and other["rule"] == "api/billing"
        await smsc.wait_until(lambda: len(smsc.accepted) >= 2)

        # Its state and parts, once the submit response is recorded.
        async def submitted() -> dict:
            while True:
                _, message, _ = await api.call("GET", f"/v1/messages/{first['id']}", route="/v1/messages/{id}")
                if message["state"] == "submitted":
                    return message
                await asyncio.sleep(0.01)

        message = await asyncio.wait_for(submitted(), 10)
        assert message["attempts"] == 1 and [p["part"] for p in message["parts"]] == [1]
        assert message["parts"][0]["transport_id"] and message["parts"][0]["receipt"] is None
        assert len(smsc.accepted) == 2  # the repeat sent nothing
        assert daemon.outbox.messages_by_id([first["id"]])[first["id"]]["created_at"] == NOW.timestamp()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "crm" in logged and TOKEN not in logged and OTHER_TOKEN not in logged


async def test_without_an_idempotency_key_each_request_is_a_new_text(tmp_path, smsc):
    async with running_daemon(write_config(tmp_path, smsc)) as (_, api):
        one = await api.call("POST", "/v1/messages", json={"to": "+447400123456", "text": "a"})
        two = await api.call("POST", "/v1/messages", json={"to": "+447400123456", "text": "a"})
        assert one[0] == two[0] == 201 and one[1]["id"] != two[1]["id"]
        assert one[1]["sender"] == "Acme"  # [api] sender
        await smsc.wait_until(lambda: len(smsc.accepted) >= 2)


async def test_a_number_the_phone_rules_refuse_is_recorded_as_suppressed(tmp_path, smsc):
    async with running_daemon(write_config(tmp_path, smsc, api_extra="max_segments = 1")) as (_, api):
        status, message, _ = await api.call("POST", "/v1/messages", json={"to": "12", "text": "hello"})
        assert status == 201 and message["state"] == "suppressed" and message["destination"] is None
        assert message["reason"]
        status, long, _ = await api.call("POST", "/v1/messages", json={"to": "+447400123456", "text": "x" * 161})
        assert long["state"] == "suppressed" and long["reason"] == "too long: 2 segments, at most 1"
        status, read, _ = await api.call("GET", f"/v1/messages/{message['id']}", route="/v1/messages/{id}")
        assert read["state"] == "suppressed"
    assert smsc.accepted == []


async def test_missing_or_wrong_tokens_get_401_with_a_challenge(tmp_path, smsc, caplog):
    caplog.set_level(logging.DEBUG)
    async with running_daemon(write_config(tmp_path, smsc)) as (_, api):
        for token, headers in ((None, {}), (None, {"Authorization": f"Basic {TOKEN}"}),
                               (TOKEN[:-1] + "X", {}), (TOKEN + "0", {}), ("", {})):
            for method, path, route in (("POST", "/v1/messages", None), ("GET", "/v1/status", None),
                                        ("GET", "/v1/messages/1", "/v1/messages/{id}")):
                status, body, resp_headers = await api.call(method, path, token=token, headers=headers, route=route,
                                                            json={"to": "+447400123456", "text": "x"})
                assert status == 401, (token, headers, body)
                assert resp_headers["WWW-Authenticate"].startswith('Bearer realm="aftercalld"')
        # The document itself needs no token.
        status, document, _ = await api.call("GET", "/v1/openapi.json", token=None)
        assert status == 200 and document == DOCUMENT
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "unknown token" in logged and TOKEN[:-1] not in logged
    assert smsc.accepted == []


@pytest.mark.parametrize(("body", "headers", "status", "error"), [
    (b"{not json", {}, 400, "not JSON"),
    (b"[1, 2]", {}, 400, "must be a JSON object"),
    (b'{"to": "+447400123456", "text": "\\ud800"}', {}, 400, "not JSON"),
    (b'{"to": "+447400123456", "text": "\xff"}', {}, 400, "not JSON"),
    (b'{"text": "x"}', {}, 422, "to: missing"),
    (b'{"to": 447400123456, "text": "x"}', {}, 422, "to: must be a string"),
    (b'{"to": "+447400123456", "text": "x", "colour": "red"}', {}, 422, "unknown field(s): colour"),
    (b'{"to": "+447400123456", "text": "x", "sender": "far too long a sender"}', {}, 422, "sender:"),
    (b'{"to": "+447400123456", "text": "x", "call_id": "main/nope"}', {}, 422, "no call 'main/nope'"),
    (b'{"to": "+447400123456", "text": "x"}', {"Idempotency-Key": "a b"}, 400, "Idempotency-Key"),
    (b'{"to": "+447400123456", "text": "x"}', {"Idempotency-Key": "k" * 201}, 400, "Idempotency-Key"),
    (b'{"to": "+447400123456", "text": "x"}', {"Content-Type": "text/plain"}, 415, "Content-Type"),
    (b'{"to": "+447400123456", "text": "' + b"x" * 3000 + b'"}', {}, 413, "max_body_bytes = 2048"),
])
async def test_bad_requests_get_a_json_error_and_queue_nothing(tmp_path, smsc, body, headers, status, error):
    async with running_daemon(write_config(tmp_path, smsc)) as (daemon, api):
        headers = {"Content-Type": "application/json", **headers}
        got, answer, _ = await api.call("POST", "/v1/messages", data=body, headers=headers)
        assert got == status and error in answer["error"], answer
        assert daemon.outbox.messages() == []


async def test_unknown_routes_and_methods_get_json_errors(tmp_path, smsc):
    async with running_daemon(write_config(tmp_path, smsc)) as (_, api):
        async with api.session.get(api.base + "/v2/nothing", headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status == 404 and (await resp.json())["error"] == "Not Found"
        async with api.session.delete(api.base + "/v1/status", headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status == 405 and "GET" in resp.headers["Allow"] and (await resp.json())["error"]
        status, body, _ = await api.call("GET", "/v1/messages/999", route="/v1/messages/{id}")
        assert status == 404 and body == {"error": "no message 999"}


def missed_call(call_id: str, pbx: str = "main") -> CallRecord:
    return CallRecord(call_id=call_id, pbx=pbx, direction="inbound", status="missed", caller_number="07400123456",
                      dialled_number="442071234567", start_time=NOW, end_time=NOW)


async def test_a_calls_view_its_rules_test_and_a_text_attached_to_it(tmp_path, smsc, caplog):
    caplog.set_level(logging.INFO)
    async with running_daemon(write_config(tmp_path, smsc)) as (daemon, api):
        daemon.handler.handle(missed_call("1700000000.1"))
        daemon.handler.handle(missed_call("1700000000.2"))
        daemon.handler.handle(missed_call("1700000000.2", pbx="branch"))
        await smsc.wait_until(lambda: len(smsc.accepted) >= 3)

        status, sent, _ = await api.call("POST", "/v1/messages", headers={"Idempotency-Key": "follow-up"},
                                         json={"to": "+447400123456", "text": "We will call at 3.",
                                               "call_id": "1700000000.1"})
        assert status == 201 and sent["key"] == "main/1700000000.1/api/crm/follow-up"
        assert sent["call_key"] == "main/1700000000.1"
        await smsc.wait_until(lambda: len(smsc.accepted) >= 4)

        # "/" in the call key as it is, or encoded.
        for path in ("/v1/calls/main/1700000000.1", "/v1/calls/main%2F1700000000.1", "/v1/calls/1700000000.1"):
            status, view, _ = await api.call("GET", path, route="/v1/calls/{call_id}")
            assert status == 200, view
            assert (view["call_key"], view["rule"], view["time_zone"]) == ("main/1700000000.1", "Missed",
                                                                          "Europe/London")
            assert view["start"] == "2026-11-30T12:00:00+00:00" and view["caller"] == "07400123456"
            assert [(m["rule"], m["text"]) for m in view["messages"]] == [
                ("Missed", "Sorry we missed your call."), ("api/crm", "We will call at 3.")]

        status, body, _ = await api.call("GET", "/v1/calls/1700000000.2", route="/v1/calls/{call_id}")
        assert status == 409 and "branch/1700000000.2" in body["error"]
        status, body, _ = await api.call("GET", "/v1/calls/main/none", route="/v1/calls/{call_id}")
        assert status == 404

        caplog.clear()
        status, test, _ = await api.call("POST", "/v1/calls/main/1700000000.1/test", route="/v1/calls/{call_id}/test")
        assert status == 200 and test["rule"] == "Missed" and not test["duplicate"]
        assert [(m["number"], m["state"], m["text"]) for m in test["messages"]] == [
            ("+447400123456", "submitted", "Sorry we missed your call.")]
        assert len(smsc.accepted) == 4  # a test sends nothing
        # ... and logs nothing: its decision and dry-run send are not a call handled again.
        assert [r.getMessage() for r in caplog.records if r.name != "aiohttp.access"] == []


async def test_status_is_the_daemons(tmp_path, smsc):
    async with running_daemon(write_config(tmp_path, smsc)) as (daemon, api):
        status, body, _ = await api.call("GET", "/v1/status")
        assert status == 200 and body["transport"]["type"] == "smpp" and body["queue_depth"] == 0
        assert "http api" in body["task_restarts"]


async def test_a_bug_is_a_500_with_a_json_body_and_a_logged_traceback(tmp_path, smsc, caplog):
    class BrokenStatus:
        name = "smpp"

        def status(self):
            raise RuntimeError("a bug in a transport's status")

    async with running_daemon(write_config(tmp_path, smsc)) as (daemon, api):
        real = daemon.transport
        daemon.transport = BrokenStatus()
        try:
            status, body, _ = await api.call("GET", "/v1/status")
        finally:
            daemon.transport = real
        assert status == 500 and body == {"error": "internal error; the daemon's log says more"}
        assert "RuntimeError" not in str(body)
    assert any(r.exc_info and "a bug in a transport's status" in str(r.exc_info[1]) for r in caplog.records)


async def test_a_reload_takes_new_tokens_without_a_restart(tmp_path, smsc, caplog):
    path = write_config(tmp_path, smsc)
    async with running_daemon(path) as (daemon, api):
        assert (await api.call("GET", "/v1/status"))[0] == 200
        write_tokens(tmp_path / "api-tokens", "rotated:a-brand-new-token-0003\n")
        daemon.reload()
        assert (await api.call("GET", "/v1/status"))[0] == 401
        status, message, _ = await api.call("POST", "/v1/messages", token="a-brand-new-token-0003",
                                            json={"to": "+447400123456", "text": "hi"})
        assert status == 201 and message["rule"] == "api/rotated"
        # A new address waits for a restart, and says so; the old one keeps serving.
        caplog.clear()
        path.write_text(path.read_text().replace(f"listen = \"127.0.0.1:{daemon.config.api.port}\"",
                                                 "listen = \"127.0.0.1:1\""))
        daemon.reload()
        assert any("[api] listen or max_body_bytes was changed" in r.getMessage() for r in caplog.records)
        status, _, _ = await api.call("GET", "/v1/status", token="a-brand-new-token-0003")
        assert status == 200 and daemon.config.api.port != 1


async def test_an_address_in_use_stops_the_start_naming_the_key(tmp_path, smsc):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = write_config(tmp_path, smsc, port=port)
        with pytest.raises(OSError, match=rf"cannot listen on 127.0.0.1:{port} \(\[api\] listen\)"):
            async with running_daemon(path):
                pass


async def test_concurrent_requests_share_transactions_and_all_go_out(tmp_path, smsc):
    async with running_daemon(write_config(tmp_path, smsc)) as (daemon, api):
        await smsc.wait_until(lambda: len(smsc.bound()) >= 1)
        numbers = [f"+4474001{n:05d}" for n in range(250)]
        answers = await asyncio.gather(*(
            api.call("POST", "/v1/messages", json={"to": number, "text": f"n{i}"},
                     headers={"Idempotency-Key": f"k{i}"}) for i, number in enumerate(numbers)))
        assert sorted(a[0] for a in answers) == [201] * 250
        assert len({a[1]["id"] for a in answers}) == 250
        await smsc.wait_until(lambda: len(smsc.accepted) >= 250)
        assert sorted(s.destination for s in smsc.accepted) == sorted(n.lstrip("+") for n in numbers)


async def test_every_route_is_in_the_document(tmp_path, smsc):
    async with running_daemon(write_config(tmp_path, smsc)) as (daemon, _):
        routes = set()
        for resource in daemon.api.app.router.resources():
            info = resource.get_info()
            path = (info.get("path") or info["formatter"]).replace("{id:\\d+}", "{id}")
            for route in resource:
                if route.method != "HEAD":  # aiohttp's own, with each GET
                    routes.add((route.method.lower(), path.replace("{call_id:.+}", "{call_id}")))
    documented = {(method, path) for path, operations in DOCUMENT["paths"].items() for method in operations}
    assert routes == documented


async def test_the_client_can_go_away_mid_request_and_the_text_is_still_queued_once(tmp_path, smsc):
    async with running_daemon(write_config(tmp_path, smsc)) as (daemon, api):
        reader, writer = await asyncio.open_connection(daemon.config.api.host, daemon.config.api.port)
        body = b'{"to": "+447400123456", "text": "bye"}'
        writer.write(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Idempotency-Key: gone-1\r\nAuthorization: Bearer " + TOKEN.encode()
                     + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        await writer.drain()
        writer.close()
        await smsc.wait_until(lambda: len(smsc.accepted) >= 1)
        status, again, _ = await api.call("POST", "/v1/messages", json={"to": "+447400123456", "text": "bye"},
                                          headers={"Idempotency-Key": "gone-1"})
        assert status == 200 and len(smsc.accepted) == 1


async def test_junk_on_the_socket_gets_a_4xx_and_the_api_keeps_serving(tmp_path, smsc):
    async with running_daemon(write_config(tmp_path, smsc)) as (daemon, api):
        for junk in (b"\x00\x01\x02garbage\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n"):
            reader, writer = await asyncio.open_connection(daemon.config.api.host, daemon.config.api.port)
            writer.write(junk)
            await writer.drain()
            head = await asyncio.wait_for(reader.read(200), 5)
            # aiohttp answers what it cannot parse itself, before any handler: plain text, no trace.
            assert head.startswith((b"HTTP/1.0 4", b"HTTP/1.1 4")), head
            assert b"Traceback" not in head
            writer.close()
        assert (await api.call("GET", "/v1/status"))[0] == 200


async def test_an_outbox_that_refuses_writes_gets_503_and_the_same_key_later_queues_once(tmp_path, smsc):
    import sqlite3

    async with running_daemon(write_config(tmp_path, smsc)) as (daemon, api):
        await smsc.wait_until(lambda: len(smsc.bound()) >= 1)
        # Another writer holds the outbox longer than SQLite's busy timeout.
        blocker = sqlite3.connect(daemon.config.outbox_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            status, body, headers = await api.call("POST", "/v1/messages", headers={"Idempotency-Key": "late-1"},
                                                   json={"to": "+447400123456", "text": "later"})
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert status == 503 and "try again with the same Idempotency-Key" in body["error"]
        assert headers["Retry-After"] == "5"
        status, message, _ = await api.call("POST", "/v1/messages", headers={"Idempotency-Key": "late-1"},
                                            json={"to": "+447400123456", "text": "later"})
        assert status == 201
        await smsc.wait_until(lambda: len(smsc.accepted) >= 1)
        assert texts(smsc) == [("Acme", "447400123456", "later")]


def test_the_document_is_valid_openapi_3_1():
    from openapi_spec_validator import validate

    assert DOCUMENT["openapi"].startswith("3.1")
    validate(DOCUMENT)


async def test_a_listener_that_closes_is_logged_and_listens_again(tmp_path, smsc, caplog):
    async with running_daemon(write_config(tmp_path, smsc)) as (daemon, api):
        assert (await api.call("GET", "/v1/status"))[0] == 200
        daemon.api._server.close()  # as if something closed it under the API
        deadline = asyncio.get_running_loop().time() + 10

        async def new_connection_answers() -> bool:
            # Not a connection kept alive from before the close: only a listener takes this one.
            try:
                async with aiohttp.ClientSession() as fresh, fresh.get(api.base + "/v1/openapi.json") as resp:
                    return resp.status == 200
            except aiohttp.ClientConnectionError:
                return False

        while not await new_connection_answers():  # the supervisor restarts it after its backoff (1 s)
            assert asyncio.get_running_loop().time() < deadline, "the API did not listen again"
            await asyncio.sleep(0.05)
        assert daemon.supervisor.status()["http api"] == 1
        assert (await api.call("GET", "/v1/status"))[0] == 200
    assert any(r.exc_info and "the HTTP API's listener closed" in str(r.exc_info[1]) for r in caplog.records)

"""Replies end to end, in the daemon's own wiring: a call is texted over SMPP to the SMSC
simulator, the customer answers with a deliver_sm, and the reply reaches a real webhook
receiver (signature checked) and the agent's mobile as an SMS; STOP, START and HELP act
in two languages."""
from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pytest
from receiver import Receiver
from smsc_sim import SmscSim, decode

from aftercalld.config import load
from aftercalld.daemon import Daemon
from aftercalld.model import CallRecord
from aftercalld.report import why

SECRET = "replies-test-secret-0123456789"

CONFIG = '''
[general]
timezone = "Europe/London"
default_region = "GB"
outbox = "{outbox}"

[agents]
"201" = {{ name = "Alice", mobile = "+447400123201" }}

[transport]
type = "smpp"
hosts = ["127.0.0.1:{smpp_port}"]
system_id = "esme"
password = "secret"
reconnect_min = 0.05
reconnect_max = 0.2

[optout]
help_text = "Acme: call 020 7123 4567. Reply STOP to opt out."

[keywords.de]
stop = ["STOPP"]
help = ["HILFE"]
help_text = "Acme: Hilfe unter 020 7123 4567."

[replies]
default = ["webhook:crm"]
sender = "Acme"
forward_text = "{{caller_name|A customer}} ({{number}}) replied: {{text}}"

[[webhook]]
name = "crm"
url = "{url}"
secret = "{secret}"
events = ["reply.received", "optout.*", "message.delivered"]
retry_initial_seconds = 0.05

[[rules]]
name = "Missed"
recipients = ["caller"]
when = {{ status = "missed" }}
caller = {{ text = "Sorry we missed you.", sender = "Acme" }}
replies = ["agent", "webhook:crm"]
'''

CUSTOMER = "+447400123456"
AGENT_MOBILE = "+447400123201"


def a_call() -> CallRecord:
    start = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
    return CallRecord(call_id="c1", pbx="main", direction="inbound", status="missed", caller_number=CUSTOMER,
                      caller_name="Bob", dialled_number="442071234567", agent_extension="201",
                      start_time=start, end_time=start + timedelta(seconds=30))


def sms(sim: SmscSim) -> list[tuple[str, str]]:
    return [(s.destination, decode(s.short_message, s.data_coding)) for s in sim.accepted]


@pytest.fixture
async def running(tmp_path):
    sim = SmscSim(receipts="tlv")
    await sim.start()
    receiver = await Receiver(SECRET.encode()).start()
    path = tmp_path / "aftercalld.toml"
    path.write_text(CONFIG.format(outbox=tmp_path / "outbox.sqlite3", smpp_port=sim.port, url=receiver.url,
                                  secret=SECRET))
    daemon = Daemon(load(path), str(path))
    await daemon.start()
    assert await daemon.transport.until_bound(10)
    assert "webhooks" in daemon.supervisor.status()  # the worker is a supervised task
    yield daemon, sim, receiver
    await daemon.stop()
    await receiver.stop()
    await sim.stop()


async def test_a_reply_reaches_the_webhook_and_the_agent_and_is_not_forwarded_twice(running):
    daemon, sim, receiver = running
    daemon.handler.handle(a_call())
    await receiver.wait_until(lambda: receiver.events("message.delivered"))
    assert sms(sim) == [("447400123456", "Sorry we missed you.")]

    assert await sim.send_mo("447400123456", "Please call me after 5") == 0
    await receiver.wait_until(lambda: receiver.events("reply.received"))
    await sim.wait_until(lambda: len(sim.accepted) == 2)
    reply = receiver.events("reply.received")[0]
    assert receiver.bad_signatures == 0
    data = reply["data"]
    assert (data["from"], data["text"], data["keyword"]) == (CUSTOMER, "Please call me after 5", "")
    assert data["in_reply_to"]["call_id"] == "main/c1" and data["in_reply_to"]["rule"] == "Missed"
    assert data["forwarded_to"] == [AGENT_MOBILE]
    assert sms(sim)[1] == ("447400123201", "Bob (+447400123456) replied: Please call me after 5")
    forwarded = daemon.outbox.messages(destination=AGENT_MOBILE)
    assert [(m["rule"], m["key"]) for m in forwarded] == [("reply:forward", f"reply/{data['reply_id']}/agent:"
                                                                            f"{AGENT_MOBILE}")]

    # The agent answers the forwarded text: stored and posted, not forwarded on (no loop).
    assert await sim.send_mo("447400123201", "ok, will do") == 0
    await receiver.wait_until(lambda: len(receiver.events("reply.received")) == 2)
    agent_reply = receiver.events("reply.received")[1]["data"]
    assert agent_reply["in_reply_to"]["rule"] == "reply:forward" and agent_reply["forwarded_to"] == []
    await daemon.dispatcher.wait_idle()
    assert len(sim.accepted) == 2

    # `why NUMBER`: the conversation in time order.
    shown = io.StringIO()
    assert why(daemon.outbox, daemon.config, "07400 123456", shown) == 0
    thread = shown.getvalue().split("thread with +447400123456, oldest first:\n")[1].splitlines()
    assert thread[0].startswith("  text to +447400123456") and "(rule Missed, call main/c1): delivered" in thread[0]
    assert thread[1].startswith("  reply from +447400123456") and "'Please call me after 5'" in thread[1]
    assert len(thread) == 2
    shown = io.StringIO()
    assert why(daemon.outbox, daemon.config, AGENT_MOBILE, shown) == 0
    agent_thread = shown.getvalue().split(f"thread with {AGENT_MOBILE}, oldest first:\n")[1].splitlines()
    assert "(rule reply:forward, call main/c1)" in agent_thread[0]
    assert agent_thread[1].startswith(f"  reply from {AGENT_MOBILE}") and "'ok, will do'" in agent_thread[1]


async def test_help_is_answered_once_per_cooldown_in_the_words_language(running):
    daemon, sim, receiver = running
    daemon.handler.handle(a_call())
    await sim.wait_until(lambda: len(sim.accepted) == 1)
    assert await sim.send_mo("447400123456", "help") == 0
    await sim.wait_until(lambda: len(sim.accepted) == 2)
    assert sms(sim)[1] == ("447400123456", "Acme: call 020 7123 4567. Reply STOP to opt out.")
    assert await sim.send_mo("447400123456", "HELP!") == 0
    # A stranger asks in German: answered in German, from [replies] sender.
    assert await sim.send_mo("447400123999", "Hilfe bitte") == 0
    await sim.wait_until(lambda: len(sim.accepted) == 3)
    assert sms(sim)[2] == ("447400123999", "Acme: Hilfe unter 020 7123 4567.")
    await receiver.wait_until(lambda: len(receiver.events("reply.received")) == 3)
    await daemon.dispatcher.wait_idle()
    assert len(sim.accepted) == 3  # the second HELP within the cooldown got no answer
    keywords = [(e["data"]["keyword"], e["data"]["language"]) for e in receiver.events("reply.received")]
    assert keywords == [("HELP", ""), ("HELP", ""), ("HILFE", "de")]
    assert all(e["data"]["forwarded_to"] == [] for e in receiver.events("reply.received"))


async def test_stop_and_start_are_opt_out_events_not_forwarded_replies(running):
    daemon, sim, receiver = running
    daemon.handler.handle(a_call())
    await sim.wait_until(lambda: len(sim.accepted) == 1)
    assert await sim.send_mo("447400123456", "Stopp") == 0
    await receiver.wait_until(lambda: receiver.events("optout.added"))
    assert daemon.outbox.is_opted_out(CUSTOMER)
    added = receiver.events("optout.added")[0]["data"]
    assert (added["number"], added["keyword"], added["language"]) == (CUSTOMER, "STOPP", "de")
    assert await sim.send_mo("447400123456", "START") == 0
    await receiver.wait_until(lambda: receiver.events("optout.removed"))
    assert not daemon.outbox.is_opted_out(CUSTOMER)
    await daemon.dispatcher.wait_idle()
    assert len(sim.accepted) == 1  # nothing forwarded to the agent
    assert receiver.events("reply.received") == []
    assert [r["keyword"] for r in daemon.outbox.replies()] == ["STOPP", "START"]


async def test_a_reload_changes_what_an_endpoint_hears(running, tmp_path):
    daemon, sim, receiver = running
    daemon.handler.handle(a_call())
    await receiver.wait_until(lambda: receiver.events("message.delivered"))
    path = tmp_path / "aftercalld.toml"
    path.write_text(path.read_text().replace('"message.delivered"]', '"message.submitted"]'))
    daemon.reload()
    daemon.handler.handle(a_call().with_text(call_id="c2"))
    await receiver.wait_until(lambda: receiver.events("message.submitted"))
    await daemon.dispatcher.wait_idle()
    await sim.wait_until(lambda: len(sim.accepted) == 2)
    assert len(receiver.events("message.delivered")) == 1
    assert receiver.events("message.submitted")[0]["data"]["call_id"] == "main/c2"

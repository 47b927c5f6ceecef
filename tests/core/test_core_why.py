"""`aftercalld why`: found however the PBX wrote the caller id; tells when the call happened,
why no rule matched, and what became of each text."""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from core_helpers import DEFAULT_RULES, call, write_config

from aftercalld import cli
from aftercalld.config import load
from aftercalld.model import DeliveryReport, MessageState, ReportState
from aftercalld.pipeline import CallHandler
from aftercalld.store import Outbox, OutcomeRecord


@pytest.fixture
def config_path(tmp_path):
    path = write_config(tmp_path)
    config = load(path)
    outbox = Outbox.open(config.outbox_path)
    handler = CallHandler(config, outbox)
    # The PBX presents the caller in national format; the journal shows the text's E.164.
    handler.handle(call(call_id="missed.1", caller_number="07400123456"))
    handler.handle(call(call_id="answered.1", caller_number="07400123456", status="connected"))  # no rule
    handler.handle(call(call_id="other.1", caller_number="07400999999"))
    outbox.close()
    return path


@pytest.mark.parametrize("number", ["+447400123456", "07400 123456", "447400123456", "00447400123456"])
def test_why_finds_a_callers_calls_in_any_written_form(config_path, capsys, number):
    assert cli.main(["why", "-c", str(config_path), number]) == 0
    out = capsys.readouterr().out
    assert "call main/missed.1 " in out and "caller +447400123456: queued" in out
    assert "call main/answered.1 " in out and "no rule matched" in out.split("call main/answered.1")[1]
    assert "other.1" not in out


def test_why_for_a_number_never_seen(config_path, capsys):
    assert cli.main(["why", "-c", str(config_path), "+447400555555"]) == 1
    assert "no call with id or caller '+447400555555'" in capsys.readouterr().out


def aftercalld(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aftercalld", *args], capture_output=True, text=True)


# A summer call (BST), handled two hours after it ended (as a CDR backfill would).
SUMMER = datetime(2026, 7, 1, 9, 0, tzinfo=UTC)
HANDLED = SUMMER.timestamp() + 2 * 3600

TWO_RULES = DEFAULT_RULES + '''
[[rules]]
name = "Long calls"
recipients = ["caller"]
when = { status = "connected", talk_seconds_min = 600 }
caller = { template = "generic", sender = "Acme" }
'''


@pytest.fixture
def story(tmp_path):
    """Calls with every kind of ending, written by the real CallHandler and the outbox
    methods the dispatcher uses; the config file dated before the calls."""
    path = write_config(tmp_path, TWO_RULES)
    os.utime(path, (HANDLED - 86400, HANDLED - 86400))
    config = load(path)
    outbox = Outbox.open(config.outbox_path)
    handler = CallHandler(config, outbox, clock=lambda: HANDLED)
    handler.handle(call(call_id="short.1", status="connected", talk_seconds=42, start_time=SUMMER))  # no rule
    handler.handle(call(call_id="missed.2", caller_number="07400123002", start_time=SUMMER))
    handler.handle(call(call_id="missed.3", caller_number="07400123003", start_time=SUMMER))
    delivered, retrying = outbox.claim_due(10, HANDLED + 1)
    outbox.record_outcomes([
        OutcomeRecord(delivered, MessageState.SUBMITTED, transport_ids=("a1", "a2"), transport="log"),
        OutcomeRecord(retrying, MessageState.RETRYING, reason="ESME_RTHROTTLED", next_attempt_at=HANDLED + 61,
                      transport="log"),
    ], HANDLED + 2)
    outbox.apply_reports([DeliveryReport("log", "a1", ReportState.DELIVERED)], HANDLED + 9)
    outbox.close()
    return path


def test_why_a_call_matched_no_rule_lists_each_rules_failed_condition(story):
    res = aftercalld("why", "-c", str(story), "short.1")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "  decision: no rule matched" in lines
    assert f"  each rule, with the rules now in {story}:" in lines
    assert "    'Missed': status is connected, rule wants missed" in lines
    assert "    'Long calls': talk time 42s is under 600s" in lines


def test_why_says_when_the_config_changed_after_the_call_and_what_would_match_now(story):
    story.write_text(story.read_text().replace("talk_seconds_min = 600", "talk_seconds_min = 30"))
    os.utime(story, (HANDLED + 3600, HANDLED + 3600))
    res = aftercalld("why", "-c", str(story), "short.1")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert (f"  each rule, with the rules now in {story} (edited 2026-07-01 13:00:00 BST, after this call: "
            "the rules then may have differed):") in out
    assert "    'Long calls' would match now" in out


def test_why_shows_when_the_call_happened_and_when_it_was_handled_in_the_pbx_time_zone(story):
    out = aftercalld("why", "-c", str(story), "missed.2").stdout
    assert out.startswith("call main/missed.2 at 2026-07-01 10:00:00 BST: missed inbound from 07400123002 ")
    assert ("  happened 2026-07-01 10:00:00 to 10:00:30 BST (Europe/London); "
            "handled by aftercalld 2026-07-01 12:00:00 BST") in out.splitlines()


def test_why_shows_the_text_attempts_times_and_each_parts_receipt(story):
    out = aftercalld("why", "-c", str(story), "+447400123002").stdout.splitlines()
    i = out.index("  caller +447400123002: submitted")
    assert out[i + 1] == "    from Acme via log, 1 segment(s) gsm7, 1 attempt(s)"
    assert out[i + 2] == "    | Sorry we missed your call to Acme. Our team will call back."
    assert out[i + 3] == ("    recorded 2026-07-01 12:00:00 BST, submitted 2026-07-01 12:00:02 BST")
    assert out[i + 4] == "    part 1 id a1: receipt delivered at 2026-07-01 12:00:09 BST"
    assert out[i + 5] == "    part 2 id a2: no receipt yet"

    out = aftercalld("why", "-c", str(story), "missed.3").stdout.splitlines()
    i = out.index("  caller +447400123003: retrying (ESME_RTHROTTLED)")
    assert out[i + 3] == "    recorded 2026-07-01 12:00:00 BST, next attempt 2026-07-01 12:01:01 BST"

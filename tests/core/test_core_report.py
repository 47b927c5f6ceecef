"""`aftercalld report`: filters that cannot match say so, the per-rule summary has one base,
and `--replies` lists what customers wrote back. Each test runs the real command on an
outbox written by the real code (CallHandler, then the Outbox methods the dispatcher uses)."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from core_helpers import NOW, call, write_config

from aftercalld.config import load
from aftercalld.model import DeliveryReport, MessageState, ReportState
from aftercalld.pipeline import CallHandler
from aftercalld.store import Outbox, OutcomeRecord

T0 = NOW.timestamp()  # 2026-11-30 12:00 UTC, 12:00 in Europe/London

RULES = '''
[[rules]]
name = "Missed"
recipients = ["caller"]
when = { status = "missed" }
caller = { template = "missed", sender = "Acme" }

[[rules]]
name = "Thanks"
recipients = ["caller"]
when = { status = "connected" }
caller = { template = "generic", sender = "Acme" }
'''


def aftercalld(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aftercalld", *args], capture_output=True, text=True)


def build_outbox(tmp_path: Path) -> Path:
    """Seven missed calls (3 delivered, 3 failed, 1 suppressed) and one answered call
    whose text still waits, each written as the daemon writes it."""
    path = write_config(tmp_path, RULES)
    config = load(path)
    outbox = Outbox.open(config.outbox_path)
    handler = CallHandler(config, outbox, clock=lambda: T0)
    for i in range(6):
        handler.handle(call(call_id=f"m{i}", caller_number=f"0740012300{i}"))
    handler.handle(call(call_id="anon", caller_number="anonymous"))  # suppressed: no number to text
    handler.handle(call(call_id="c1", caller_number="07400123999", status="connected"))
    claimed = [m for m in outbox.claim_due(100, T0 + 1) if m.rule == "Missed"]
    outcomes = [OutcomeRecord(m, MessageState.SUBMITTED, transport_ids=(f"id{m.id}",), transport="log")
                for m in claimed[:4]]
    outcomes += [OutcomeRecord(m, MessageState.FAILED, reason="ESME_RINVDSTADR", transport="log")
                 for m in claimed[4:]]
    outbox.record_outcomes(outcomes, T0 + 2)
    # Delivered after 10, 20 and 30 s; the fourth submitted text is rejected by the network.
    for seconds, m in zip((10, 20, 30), claimed[:3], strict=True):
        outbox.apply_reports([DeliveryReport("log", f"id{m.id}", ReportState.DELIVERED)], T0 + 2 + seconds)
    outbox.apply_reports([DeliveryReport("log", f"id{claimed[3].id}", ReportState.REJECTED, error="err:011")],
                         T0 + 50)
    outbox.record_reply("+447400123000", "=HYPERLINK(\"http://x\")\nok", "log", "", T0 + 60, 86400)
    outbox.record_reply("+447400123001", "STOP", "log", "STOP", T0 + 70, 86400)
    outbox.record_reply("+447400555555", "who is this?", "log", "", T0 + 86400 * 3, 86400)
    outbox.close()
    return path


@pytest.fixture(scope="module")
def config_path(tmp_path_factory) -> str:
    return str(build_outbox(tmp_path_factory.mktemp("report")))


@pytest.mark.parametrize("option,value,says", [
    ("--status", "bogus", "--status 'bogus': unknown message state (one of: queued, sending, retrying"),
    ("--status", "deliverd\x1b[2J", "--status 'deliverd\\x1b[2J': unknown message state"),
    ("--rule", "nope", "--rule 'nope': unknown rule: not in "),
])
def test_an_unknown_status_or_rule_is_an_error_not_an_empty_table(config_path, option, value, says):
    res = aftercalld("report", "-c", config_path, option, value)
    assert res.returncode == 2
    assert says in res.stderr and "Traceback" not in res.stderr and "\x1b" not in res.stderr
    assert res.stdout == ""
    if option == "--rule":
        assert "(rules: 'Missed', 'Thanks') and no message in the outbox has it" in res.stderr


def test_known_filters_still_work_and_a_rule_gone_from_the_config_is_still_known(tmp_path):
    path = build_outbox(tmp_path)
    failed = aftercalld("report", "-c", str(path), "--status", "Failed", "--format", "json")
    assert failed.returncode == 0, failed.stderr
    assert {m["state"] for m in json.loads(failed.stdout)["messages"]} == {"failed"}
    # The rule was renamed since: its messages are still in the outbox, so it can be asked for.
    path.write_text(path.read_text().replace('name = "Thanks"', 'name = "Thank you"'))
    old = aftercalld("report", "-c", str(path), "--rule", "Thanks", "--format", "json")
    assert old.returncode == 0, old.stderr
    assert [m["call_key"] for m in json.loads(old.stdout)["messages"]] == ["main/c1"]
    assert aftercalld("report", "-c", str(path), "--rule", "Thank you").returncode == 0  # no messages yet


def test_the_per_rule_summary_has_one_stated_base(config_path):
    res = aftercalld("report", "-c", config_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.split("per rule:\n")[1].splitlines()
    # 3 of 7 delivered, 3 of 7 failed (2 refused at submit, 1 rejected by the network).
    assert lines[0] == ("  Missed: of 7 message(s): 3 delivered (43 %), 3 failed (43 %), 1 suppressed (14 %); "
                        "median time to delivery 20 s")
    assert lines[1] == ("  Thanks: of 1 message(s): 0 delivered (0 %), 0 failed (0 %), 1 waiting to be sent (100 %); "
                        "median time to delivery –")
    assert "-s" not in res.stdout
    summary = {t["rule"]: t for t in json.loads(aftercalld("report", "-c", config_path, "--format", "json").stdout)
               ["summary"]}
    missed = summary["Missed"]
    assert (missed["messages"], missed["delivered"], missed["failed"], missed["suppressed"]) == (7, 3, 3, 1)
    assert (missed["delivered_pct"], missed["failed_pct"], missed["median_delivery_seconds"]) == (42.9, 42.9, 20)
    assert summary["Thanks"]["median_delivery_seconds"] is None


def test_an_empty_report_says_there_is_nothing(config_path):
    res = aftercalld("report", "-c", config_path, "--since", "2026-12-01")
    assert res.returncode == 0, res.stderr
    assert res.stdout.endswith("per rule:\n  – (no messages)\n")


def test_replies_in_the_span_as_a_table_csv_and_json(config_path):
    span = ("--since", "2026-11-30", "--until", "2026-12-01")
    table = aftercalld("report", "-c", config_path, "--replies", *span)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["received", "number", "call_key", "message_id", "keyword", "text"]
    # Times in the PBX time zone; the reply's newline is escaped, so it stays one row.
    assert lines[1].startswith("2026-11-30T12:01:00+00:00  +447400123000  main/m0 ")
    assert lines[1].endswith('=HYPERLINK("http://x")\\nok')
    assert "STOP" in lines[2] and "main/m1" in lines[2]
    assert "who is this?" not in table.stdout  # three days later: outside the span
    assert lines[-1] == "2 replies"

    rows = list(csv.DictReader(io.StringIO(aftercalld("report", "-c", config_path, "--replies", "--format", "csv")
                                          .stdout)))
    assert [r["number"] for r in rows] == ["+447400123000", "+447400123001", "+447400555555"]
    assert rows[0]["text"] == "'=HYPERLINK(\"http://x\")\nok"  # text in a spreadsheet, not a formula
    assert rows[2]["call_key"] == "" and rows[2]["message_id"] == ""

    replies = json.loads(aftercalld("report", "-c", config_path, "--replies", "--format", "json",
                                    "--since", "2026-12-02").stdout)["replies"]
    assert replies == [{"received": "2026-12-03T12:00:00+00:00", "number": "+447400555555", "call_key": None,
                        "message_id": None, "keyword": "", "text": "who is this?"}]


def test_replies_take_no_status_or_rule(config_path):
    res = aftercalld("report", "-c", config_path, "--replies", "--status", "delivered")
    assert res.returncode == 2 and "--replies lists replies, which have no --status or --rule" in res.stderr

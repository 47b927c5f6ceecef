"""What a new admin trips on at the command line: config flags, read-only commands, the
outbox's owner, list edits. Each test runs the real `aftercalld` command."""
from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from core_helpers import write_config


def aftercalld(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aftercalld", *args], capture_output=True, text=True, cwd=cwd)


def outbox_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("outbox.sqlite3*"))


def test_config_flag_before_or_after_the_command(tmp_path):
    path = str(write_config(tmp_path))
    for args in (["-c", path, "check-config"], ["check-config", "-c", path], ["check-config", path],
                 ["-c", path, "optout", "list"], ["optout", "list", "-c", path]):
        res = aftercalld(*args)
        assert "unrecognized arguments" not in res.stderr and "invalid choice" not in res.stderr, (args, res.stderr)
    assert aftercalld("check-config", "-c", path).stdout.startswith(f"{path}: ok")


def test_demo_takes_a_config_to_try_your_own_rules_on_the_samples(tmp_path):
    path = write_config(tmp_path)
    res = aftercalld("demo", "-c", str(path))
    assert res.returncode == 0, res.stderr
    assert f"rules from {path}" in res.stdout
    assert "rule: Missed" in res.stdout  # the rule of this config, not of the bundled demo


@pytest.mark.parametrize("command", [["status"], ["report"], ["why", "+447400123456"], ["optout", "list"],
                                     ["dnd", "list"]])
def test_read_only_commands_never_create_the_outbox(tmp_path, command):
    path = write_config(tmp_path)
    res = aftercalld(*command, "-c", str(path))
    assert res.returncode == 1
    assert "no outbox yet (the daemon creates it when it first starts)" in res.stderr
    assert outbox_files(tmp_path) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, as the admin who types sudo")
def test_root_leaves_the_outbox_to_the_owner_of_the_state_directory(tmp_path):
    nobody = pwd.getpwnam("nobody")
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, nobody.pw_uid, nobody.pw_gid)
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace(str(tmp_path / "outbox.sqlite3"), str(state / "outbox.sqlite3")))
    added = aftercalld("optout", "add", "07400123456", "-c", str(path))
    assert added.returncode == 0, added.stderr
    looked = aftercalld("status", "-c", str(path))
    assert looked.returncode == 3, looked.stderr  # 3: the daemon is not running
    files = outbox_files(state)
    assert files and all(f.stat().st_uid == nobody.pw_uid for f in files), [(f, f.stat().st_uid) for f in files]
    run = aftercalld("run", "-c", str(path))
    assert run.returncode == 1
    assert f"{state} belongs to nobody: run the daemon as nobody" in run.stderr


def test_list_edits_say_what_they_did(tmp_path):
    path = str(write_config(tmp_path))
    empty = aftercalld("optout", "add", "-c", path)
    assert empty.returncode == 2 and "add what? Give one or more phone numbers" in empty.stderr
    assert aftercalld("optout", "add", "07400123456", "-c", path).returncode == 0
    removed = aftercalld("optout", "remove", "07400123456", "07400123999", "-c", path)
    assert "removed 1 entr(ies)" in removed.stdout
    assert "not listed, nothing to remove: +447400123999" in removed.stdout
    star = aftercalld("dnd", "add", "+1415555*0", "-c", path)
    assert star.returncode == 1 and "not a number or prefix, skipped: '+1415555*0'" in star.stderr
    assert aftercalld("dnd", "list", "-c", path).stdout == ""
    zero = aftercalld("prune", "--older-than", "0", "-c", path)
    assert zero.returncode == 2 and "--older-than 0 is less than 7 days" in zero.stderr


def test_weekday_ranges_and_full_names_mean_what_they_say(tmp_path):
    rules = ('[[rules]]\nname = "Weekdays"\nrecipients = ["caller"]\nwhen = {{ weekdays = {days} }}\n'
             'caller = {{ template = "missed", sender = "Acme" }}\n')
    for days in ('"mon-fri"', '["Monday-Friday"]', '["mon", "tue", "wed", "thu", "fri"]'):
        path = write_config(tmp_path, rules=rules.format(days=days))
        saturday = tmp_path / "sat.json"
        friday = tmp_path / "fri.json"
        for file, date in ((saturday, "2026-11-28"), (friday, "2026-11-27")):
            file.write_text(f'{{"call_id": "w", "pbx": "main", "direction": "inbound", "status": "missed", '
                            f'"caller_number": "07400123456", "start_time": "{date}T12:00:00+00:00", '
                            f'"end_time": "{date}T12:01:00+00:00"}}')
        assert "rule 'Weekdays' fires" in aftercalld("test-rule", "--call", str(friday), "-c", str(path)).stdout
        assert "no rule fires" in aftercalld("test-rule", "--call", str(saturday), "-c", str(path)).stdout, days
    bad = write_config(tmp_path, rules=rules.format(days='"mon-fry"'))
    res = aftercalld("check-config", str(bad))
    assert res.returncode == 2 and 'rules["Weekdays"].when.weekdays: unknown day "fry"' in res.stderr


def test_send_test_takes_a_sender_and_will_not_text_an_opted_out_number_unasked(tmp_path):
    path = str(write_config(tmp_path))
    sent = aftercalld("send-test", "07400123456", "--sender", "Acme Ltd", "-c", path)
    assert sent.returncode == 0, sent.stderr
    assert "to +447400123456 from Acme Ltd via log" in sent.stdout
    bad = aftercalld("send-test", "07400123456", "--sender", "way too long sender", "-c", path)
    assert bad.returncode == 2 and "--sender \"way too long sender\" is neither" in bad.stderr
    assert aftercalld("optout", "add", "07400123456", "-c", path).returncode == 0
    refused = aftercalld("send-test", "07400123456", "-c", path)
    assert refused.returncode == 1 and refused.stdout == ""
    assert "+447400123456 is on the opt-out list: the daemon would never text it; not sent" in refused.stderr
    forced = aftercalld("send-test", "07400123456", "--force", "-c", path)
    assert forced.returncode == 0 and "submitted" in forced.stdout
    assert "warning: +447400123456 is on the opt-out list; sending anyway" in forced.stderr


def _calls_file(tmp_path: Path, *calls: tuple[str, str, str]) -> Path:
    """(call id, caller, end time) as CallRecord JSON lines; each call lasted a minute."""
    path = tmp_path / "calls.jsonl"
    lines = []
    for call_id, caller, end in calls:
        start = (datetime.fromisoformat(end) - timedelta(minutes=1)).isoformat()
        lines.append(json.dumps({"call_id": call_id, "pbx": "main", "direction": "inbound", "status": "missed",
                                 "caller_number": caller, "start_time": start, "end_time": end}) + "\n")
    path.write_text("".join(lines))
    return path


def test_replay_and_test_rule_hold_back_what_the_daemon_would(tmp_path):
    rules = ('[[rules]]\nname = "Missed"\nrecipients = ["caller"]\nwhen = { status = "missed" }\n'
             'quiet_hours = ["22:00-07:00"]\ncaller = { template = "missed", sender = "Acme" }\n')
    path = str(write_config(tmp_path, rules=rules))
    assert aftercalld("dnd", "add", "07400123401", "-c", path).returncode == 0
    assert aftercalld("optout", "add", "07400123402", "-c", path).returncode == 0
    calls = _calls_file(tmp_path, ("day-dnd", "07400123401", "2026-11-27T12:00:00+00:00"),
                        ("day-stop", "07400123402", "2026-11-27T12:00:00+00:00"),
                        ("day-ok", "07400123403", "2026-11-27T12:00:00+00:00"),
                        ("night", "07400123404", "2026-11-27T23:30:00+00:00"))
    replayed = aftercalld("replay", str(calls), "-c", path)
    assert replayed.returncode == 0, replayed.stderr
    out = replayed.stdout
    assert "+447400123401: suppressed (DND list)" in out
    assert "+447400123402: suppressed (opt-out)" in out
    assert "+447400123403: submitted" in out
    assert "+447400123404: queued (quiet hours 22:00-07:00)" in out
    assert replayed.stderr == ""  # the outcomes are printed once, not logged again
    night = tmp_path / "night.json"
    night.write_text(calls.read_text().splitlines()[3])
    held = aftercalld("test-rule", "--call", str(night), "-c", path)
    assert "HELD BACK (quiet hours 22:00-07:00): would be sent when that ends" in held.stdout
    # The daemon's lists were only read.
    assert aftercalld("dnd", "list", "-c", path).stdout.startswith("+447400123401\tcli")


def test_replay_json_is_one_document_and_its_output_replays_again(tmp_path):
    path = str(write_config(tmp_path))
    calls = _calls_file(tmp_path, ("a", "07400123403", "2026-11-27T12:00:00+00:00"),
                        ("b", "07400123404", "2026-11-27T12:05:00+00:00"))
    as_json = aftercalld("replay", str(calls), "--format", "json", "-c", path)
    document = json.loads(as_json.stdout)  # one document: json.tool and jq read it whole
    assert [item["call"]["call_id"] for item in document] == ["a", "b"]
    (tmp_path / "out.json").write_text(as_json.stdout)
    as_jsonl = aftercalld("replay", str(tmp_path / "out.json"), "--format", "jsonl", "-c", path)
    assert [json.loads(line)["call"]["call_id"] for line in as_jsonl.stdout.splitlines()] == ["a", "b"]
    assert as_jsonl.stderr == ""  # nothing skipped as an unknown field
    (tmp_path / "out.jsonl").write_text(as_jsonl.stdout)
    again = aftercalld("replay", str(tmp_path / "out.jsonl"), "--format", "jsonl", "-c", path)
    assert again.stdout == as_jsonl.stdout
    (tmp_path / "one.json").write_text(json.dumps(document[:1]))
    one = aftercalld("test-rule", "--call", str(tmp_path / "one.json"), "-c", path)
    assert one.returncode == 0 and "rule 'Missed' fires" in one.stdout, one.stderr

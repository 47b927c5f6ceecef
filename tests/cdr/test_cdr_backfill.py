"""Backfill runs on real files in a tmp dir: what is read when, what is texted, what is
only recorded, and that a call already recorded live is never texted twice.

Time comes from an injected clock set relative to the fixture's own call times
(2026-12-05 11:22 UTC, the recording), never from today's date."""
from __future__ import annotations

import asyncio
import csv
import io
import logging
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from testdata import DATA

from aftercalld.ami import iter_trace_calls
from aftercalld.cdr.backfill import TOO_OLD_REASON, Backfill, position_key
from aftercalld.cdr.freeswitch import UNCERTAIN_REASON
from aftercalld.cdr.sources import MysqlTable
from aftercalld.config import load
from aftercalld.configreader import ConfigError
from aftercalld.pipeline import CallHandler
from aftercalld.store import Outbox

# The last call of the recording ended at 11:22:54 UTC.
RECORDED = datetime(2026, 12, 5, 11, 22, 54, tzinfo=UTC).timestamp()

CONFIG = '''
[general]
timezone = "UTC"
default_region = "{region}"
outbox = "{outbox}"

[[pbx]]
name = "pbx"
type = "{type}"
timezone = "UTC"
{connection}
cdr = "{cdr}"
{extra}

[transport]
type = "log"

[templates.missed]
text = "Sorry we missed your call."

[templates.thanks]
text = "Thanks for your call."

[[rules]]
name = "Missed"
recipients = ["caller"]
when = {{ status = "missed", direction = "inbound" }}
caller = {{ template = "missed", sender = "Acme" }}

[[rules]]
name = "Thanks"
recipients = ["caller"]
when = {{ status = "connected", direction = "inbound" }}
caller = {{ template = "thanks", sender = "Acme" }}
'''
AMI = 'host = "127.0.0.1"\nport = 1\nusername = "aftercalld"\nsecret = "s3cret"'
ESL = 'host = "127.0.0.1"\nport = 1'


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def write_config(tmp_path: Path, cdr: Path | str, type_: str = "asterisk", extra: str = "") -> Path:
    path = tmp_path / "aftercalld.toml"
    # The FreeSWITCH recording's callers have Indian mobile numbers, Asterisk's American ones.
    path.write_text(CONFIG.format(outbox=tmp_path / "outbox.sqlite3", type=type_, cdr=cdr, extra=extra,
                                  region="US" if type_ == "asterisk" else "IN",
                                  connection=AMI if type_ == "asterisk" else ESL))
    return path


def fixture_text(traces, columns: int = 21) -> str:
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n")
    with open(traces / "asterisk-actions" / "Master.csv", newline="") as f:
        for fields in csv.reader(f):
            writer.writerow(fields[:columns])
    return out.getvalue()


class Setup:
    def __init__(self, tmp_path: Path, cdr: Path, type_: str = "asterisk", extra: str = "",
                 now: float = RECORDED + 60) -> None:
        self.config_path = write_config(tmp_path, cdr, type_, extra)
        self.config = load(self.config_path)
        self.outbox = Outbox.open(self.config.outbox_path)
        self.clock = Clock(now)
        self.handler = CallHandler(self.config, self.outbox, clock=self.clock)
        self.backfill = Backfill(self.config.pbxs, self.handler, clock=self.clock)

    def run(self):
        return asyncio.run(self.backfill.run("pbx"))

    def messages(self) -> list[dict]:
        return self.outbox.messages()


@pytest.fixture
def master(tmp_path) -> Path:
    path = tmp_path / "cdr-csv" / "Master.csv"
    path.parent.mkdir()
    path.write_text("")
    return path


def append(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)


def test_first_run_reads_nothing_old_then_each_run_reads_only_what_was_appended(tmp_path, master, traces, caplog):
    caplog.set_level(logging.INFO)
    append(master, fixture_text(traces))  # yesterday's calls, already in the file at install
    s = Setup(tmp_path, master)
    first = s.run()
    assert (first.recovered, first.too_old) == (0, 0) and s.messages() == []
    assert "CDR backfill starts from now" in caplog.text

    append(master, fixture_text(traces).replace("1796469765.", "1796469999."))  # four new calls
    second = s.run()
    assert (second.recovered, second.too_old, second.known) == (4, 0, 0)
    calls = {c["call_id"]: c for c in s.outbox.calls()}
    assert set(calls) == {"1796469999.32", "1796469999.36", "1796469999.40", "1796469999.42"}
    assert {m["call_key"]: (m["rule"], m["state"]) for m in s.messages()} == {
        "pbx/1796469999.32": ("Thanks", "queued"), "pbx/1796469999.36": ("Missed", "queued"),
        "pbx/1796469999.40": ("Thanks", "queued")}  # .42 is outbound: no rule
    assert "pbx pbx: backfilled 4 call(s) from CDR, 0 too old to text" in caplog.text
    assert ("missed inbound call from 2025550192 (backfilled from the CDR) → rule 'Missed' → caller: queued"
            in caplog.text)

    third = s.run()
    assert (third.recovered, third.known) == (0, 0)


def test_a_line_being_written_is_left_for_the_next_run(tmp_path, master, traces):
    s = Setup(tmp_path, master)
    s.run()
    text = fixture_text(traces)
    cut = text.index("\n") + 40  # the first line whole, the second one half written
    append(master, text[:cut])
    assert s.run().recovered == 1  # only the first row: a leg of .32
    append(master, text[cut:])
    result = s.run()
    # .32's other rows arrive as the same call id: the outbox already has it.
    assert (result.recovered, result.known) == (3, 1)


def aftercalld(*args: str) -> str:
    """The CLI in its own process: in this one it would leave its log handler behind."""
    res = subprocess.run([sys.executable, "-m", "aftercalld", *args], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_a_call_older_than_backfill_max_age_is_recorded_and_not_texted(tmp_path, master, traces):
    s = Setup(tmp_path, master, now=RECORDED + 11 * 60)  # default 10 minutes: too late
    s.run()
    append(master, fixture_text(traces))
    result = s.run()
    assert (result.recovered, result.too_old) == (4, 4)
    states = {(m["state"], m["reason"]) for m in s.messages()}
    assert states == {("suppressed", TOO_OLD_REASON)}
    s.outbox.close()
    out = aftercalld("why", "-c", str(s.config_path), "2025550192")
    assert "(backfilled from the PBX's CDR)" in out and TOO_OLD_REASON in out
    rows = list(csv.DictReader(io.StringIO(aftercalld("report", "-c", str(s.config_path), "--format", "csv"))))
    assert rows and {r["source"] for r in rows} == {"cdr"}


def test_backfill_max_age_is_per_pbx_and_takes_units(tmp_path, master, traces):
    s = Setup(tmp_path, master, extra='backfill_max_age = "2h"', now=RECORDED + 3600)
    assert s.config.pbxs[0].backfill_max_age == 7200
    s.run()
    append(master, fixture_text(traces))
    assert s.run().too_old == 0
    assert {m["state"] for m in s.messages()} == {"queued"}


def test_a_call_recorded_live_is_not_texted_again_from_the_cdr(tmp_path, master, traces):
    s = Setup(tmp_path, master)
    s.run()
    live = list(iter_trace_calls(traces / "asterisk-actions" / "live.ami", s.config.pbxs[0]))
    s.handler.handle_many(live)
    before = s.messages()
    append(master, fixture_text(traces))
    result = s.run()
    assert (result.recovered, result.known) == (0, 4)
    assert s.messages() == before
    assert {c["call_id"] for c in s.outbox.calls()} == {r.call_id for r in live}


def test_without_ids_a_call_recorded_live_is_matched_by_number_and_time(tmp_path, master, traces, caplog):
    # The live records are written at the calls' end (the handler's clock), as the daemon does.
    s = Setup(tmp_path, master, now=RECORDED)
    s.run()
    s.handler.handle_many(list(iter_trace_calls(traces / "asterisk-actions" / "live.ami", s.config.pbxs[0])))
    before = s.messages()
    append(master, fixture_text(traces, columns=16))
    s.clock.now = RECORDED + 60
    result = s.run()
    assert (result.recovered, result.known) == (0, 4)
    assert s.messages() == before
    assert "has no uniqueid/linkedid columns" in caplog.text


def test_without_ids_calls_nobody_saw_are_recovered(tmp_path, master, traces):
    s = Setup(tmp_path, master)
    s.run()
    append(master, fixture_text(traces, columns=16))
    assert s.run().recovered == 4
    assert all(c["call_id"].startswith("cdr-") for c in s.outbox.calls())


def test_a_rotated_file_is_read_from_its_start(tmp_path, master, traces):
    s = Setup(tmp_path, master)
    s.run()
    append(master, fixture_text(traces))
    assert s.run().recovered == 4
    rotated = master.with_name("Master.csv.1")
    master.rename(rotated)
    master.write_text(fixture_text(traces).replace("1796469765.", "1796469888."))
    assert s.run().recovered == 4
    assert os.stat(master).st_size == int(__import__("json").loads(s.outbox.meta_get(position_key("pbx")))["offset"])


def test_freeswitch_default_template_texts_only_what_it_can_be_sure_of(tmp_path, master):
    s = Setup(tmp_path, master, type_="freeswitch", now=datetime(2026, 11, 30, 4, 45, tzinfo=UTC).timestamp())
    s.run()
    append(master, (DATA / "cdr" / "freeswitch" / "Master.csv").read_text())
    result = s.run()
    assert (result.recovered, result.uncertain) == (6, 5)
    by_state = {(m["call_key"], m["state"], m["reason"]) for m in s.messages()}
    assert ("pbx/2c71eeb2-14fc-4392-9abf-739896a36972", "queued", "") in by_state  # never answered: missed
    assert {r for _, st, r in by_state if st == "suppressed"} == {UNCERTAIN_REASON}


def test_freeswitch_extended_template_texts_like_live(tmp_path, master):
    s = Setup(tmp_path, master, type_="freeswitch", now=datetime(2026, 11, 30, 4, 45, tzinfo=UTC).timestamp())
    s.run()
    append(master, (DATA / "cdr" / "freeswitch" / "Master-extended.csv").read_text())
    result = s.run()
    assert (result.recovered, result.uncertain, result.too_old) == (6, 0, 0)
    assert {m["state"] for m in s.messages()} == {"queued"}
    got = {m["call_key"].split("/")[1][:8]: m["rule"] for m in s.messages()}
    # John and Dana talked; Mary was never answered, Ivy left the IVR, Vic reached voicemail.
    assert got == {"1cf1c3a4": "Thanks", "1dccefa9": "Thanks", "2c71eeb2": "Missed", "7f590450": "Missed",
                   "fca221dc": "Missed"}


def test_a_mysql_table_is_read_from_the_newest_end_seen(tmp_path, master, traces):
    from test_cdr_rows import db_rows

    rows = db_rows(traces)
    asked: list[datetime] = []

    class Table(MysqlTable):
        def query(self, since_local):  # the driver's part: rows as the cdr table returns them
            asked.append(since_local)
            return [r for r in rows if r["calldate"].timestamp() + r["duration"] >=
                    since_local.replace(tzinfo=UTC).timestamp()]

    s = Setup(tmp_path, master)
    from aftercalld.cdr.config import parse_cdr_setting

    table = Table(parse_cdr_setting("mysql://cdr:pw@127.0.0.1/asteriskcdrdb", "asterisk"), ZoneInfo("UTC"))
    s.backfill.stores["pbx"] = table
    s.clock.now = RECORDED - 30  # installed before the calls
    assert s.run().recovered == 0 and asked == []
    s.clock.now = RECORDED + 60
    result = s.run()
    assert result.recovered == 4
    assert asked[0] == datetime(2026, 12, 5, 11, 22, 24)
    assert s.run().recovered == 0  # the rows at the newest end second come again: the same calls


@pytest.mark.parametrize("value, reason", [
    ("/nonexistent/Master.csv", "no such file"),
    ("cdr-csv/Master.csv", "is not an absolute path"),
    ("ftp://host/x", "expected a CSV file path or a mysql:// URL"),
    ("mysql://host/asteriskcdrdb", "needs a user"),
    ("/", 'is a directory: name the CSV file in it (e.g. /Master.csv)'),
])
def test_bad_cdr_setting_names_the_key_and_exits_2(tmp_path, value, reason):
    path = write_config(tmp_path, value)
    with pytest.raises(ConfigError) as err:
        load(path)
    assert err.value.key == "pbx[0].cdr" and reason in err.value.reason
    res = subprocess.run([sys.executable, "-m", "aftercalld", "check-config", "-c", str(path)],
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert f"{path}: pbx[0].cdr: " in res.stderr and "Traceback" not in res.stderr


def test_a_password_in_a_bad_mysql_url_is_never_echoed(tmp_path):
    path = write_config(tmp_path, "mysql://cdr:Sup3rSecret@host/bad-name")
    with pytest.raises(ConfigError) as err:
        load(path)
    assert "Sup3rSecret" not in str(err.value) and "letters, digits" in str(err.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_an_unreadable_cdr_file_is_a_config_error(tmp_path, master):
    master.chmod(0)
    with pytest.raises(ConfigError, match=r"pbx\[0\].cdr: .*not readable"):
        load(write_config(tmp_path, master))


@pytest.mark.parametrize("value", ['"soon"', "-5", "true"])
def test_bad_backfill_max_age(tmp_path, master, value):
    with pytest.raises(ConfigError, match=r"pbx\[0\].backfill_max_age"):
        load(write_config(tmp_path, master, extra=f"backfill_max_age = {value}"))


def test_a_broken_line_costs_that_line_only(tmp_path, master, traces, caplog):
    s = Setup(tmp_path, master)
    s.run()
    lines = fixture_text(traces).splitlines(keepends=True)
    append(master, "".join(lines[:3]) + '"\x00broken",\x1b[31m\n' + "".join(lines[3:]))
    assert s.run().recovered == 4
    assert "CDR line skipped (" in caplog.text and "'\"\\x00broken\",\\x1b[31m'" in caplog.text
    assert "\x1b" not in caplog.text  # escaped: a terminal reading the journal is safe


def test_a_failed_run_is_tried_again_until_it_succeeds(tmp_path, master, traces, monkeypatch, caplog):
    import aftercalld.cdr.backfill as backfill_module

    monkeypatch.setattr(backfill_module, "RETRY_MIN_SECONDS", 0.01)
    s = Setup(tmp_path, master)
    s.run()
    append(master, fixture_text(traces))
    moved = master.with_name("elsewhere.csv")
    master.rename(moved)  # gone for a moment (a rotation, a remount)
    calls = []

    async def scenario():
        s.backfill.request("pbx")
        await s.backfill._tasks.copy().pop()  # the failing run; it schedules the retry
        assert "failed: FileNotFoundError" in caplog.text and "trying again in 0.01s" in caplog.text
        moved.rename(master)
        while s.backfill._tasks:
            await asyncio.gather(*s.backfill._tasks)
        calls.extend(s.outbox.calls())

    asyncio.run(scenario())
    assert len(calls) == 4


def test_a_read_without_any_line_end_is_stepped_over(tmp_path, master, traces, monkeypatch):
    import aftercalld.cdr.sources as sources

    monkeypatch.setattr(sources, "MAX_READ_BYTES", 4096)
    s = Setup(tmp_path, master)
    s.run()
    append(master, "x" * 10_000 + "\n" + fixture_text(traces))
    assert s.run().recovered == 4

"""Small builders for core tests: configs as TOML text and CallRecords."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from aftercalld.model import CallRecord

BASE_CONFIG = '''
[general]
timezone = "Europe/London"
default_region = "GB"
outbox = "{outbox}"

[variables]
company = "Acme"

[agents]
"201" = {{ name = "Alice", mobile = "+447400123201" }}

[transport]
type = "log"

[dispatch]
retry_initial_seconds = 0.05
retry_max_seconds = 0.2
ttl_seconds = 60

[templates.missed]
text = "Sorry we missed your call to {{company}}. {{agent_name|Our team}} will call back."

[templates.generic]
text = "Thanks for calling {{company}}."

{rules}
'''

DEFAULT_RULES = '''
[[rules]]
name = "Missed"
recipients = ["caller"]
when = { status = "missed" }
caller = { template = "missed", sender = "Acme" }
'''


def write_config(tmp_path: Path, rules: str = DEFAULT_RULES, extra: str = "") -> Path:
    path = tmp_path / "aftercalld.toml"
    text = BASE_CONFIG.format(outbox=tmp_path / "outbox.sqlite3", rules=rules) + extra
    path.write_text(text)
    return path


# The date the core tests live on: every clock they hand the code reads from here.
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def call(**kw) -> CallRecord:
    start = kw.pop("start_time", datetime(2026, 11, 30, 10, 0, tzinfo=UTC))
    base = dict(
        call_id="c1", pbx="main", direction="inbound", status="missed",
        caller_number="+447400123456", dialled_number="442071234567",
        start_time=start, end_time=start + timedelta(seconds=30),
    )
    base.update(kw)
    return CallRecord(**base)

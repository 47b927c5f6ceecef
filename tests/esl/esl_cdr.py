"""The ESL test server's ``mod_cdr_csv``: a ``Master.csv`` of the calls it lived through.

One row per A leg (``legs = a``: a channel no other channel originated), appended whole at
its ``CHANNEL_HANGUP_COMPLETE`` from that event's own fields, in the layout of the module's
``example`` template plus the two columns the README recommends (``last_app``,
``last_bridge_to``: 17 columns, every column quoted, local times ``YYYY-MM-DD HH:MM:SS``
from the channel's created/answered/hangup times). aftercalld/cdr/freeswitch.py reads it.
"""
from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from pathlib import Path


class FsCdrCsv:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows_written = 0
        path.touch()

    def cut_all(self, channels: dict[str, dict[str, str]], now: float) -> None:
        """FreeSWITCH shuts down: every A leg still up hangs up with SYSTEM_SHUTDOWN (the
        cause a `fsctl shutdown` gives) and gets its row; `channels` are the server's
        `show channels` rows (a B leg's ``call_uuid`` names its originator)."""
        for uuid, row in channels.items():
            if row.get("call_uuid"):
                continue
            created = int(row.get("created_epoch") or 0) * 1_000_000
            self.apply({"Event-Name": "CHANNEL_HANGUP_COMPLETE", "Unique-ID": uuid,
                        "Caller-Caller-ID-Name": row.get("cid_name", ""),
                        "Caller-Caller-ID-Number": row.get("cid_num", ""),
                        "Caller-Destination-Number": row.get("dest", ""), "Caller-Context": row.get("context", ""),
                        "Caller-Channel-Created-Time": str(created),
                        "Caller-Channel-Hangup-Time": str(int(now * 1e6)), "Hangup-Cause": "SYSTEM_SHUTDOWN",
                        "variable_billsec": "0"})

    def apply(self, ev: dict[str, str]) -> None:
        if ev.get("Event-Name") != "CHANNEL_HANGUP_COMPLETE" or not ev.get("Unique-ID"):
            return
        if ev.get("variable_originator"):
            return  # a B leg: legs = a writes none
        start, answer, end = (_stamp(ev.get(f"Caller-Channel-{what}-Time", "")) for what in
                              ("Created", "Answered", "Hangup"))
        duration = max(0, int(_seconds(ev, "Hangup") - _seconds(ev, "Created")))
        row = [ev.get("Caller-Caller-ID-Name", ""), ev.get("Caller-Caller-ID-Number", ""),
               ev.get("Caller-Destination-Number", ""), ev.get("Caller-Context", ""), start, answer, end,
               str(duration), ev.get("variable_billsec", "0"), ev.get("Hangup-Cause", ""), ev["Unique-ID"],
               "", ev.get("variable_accountcode", ""), "PCMU", "PCMU", ev.get("variable_last_app", ""),
               ev.get("variable_last_bridge_to", "")]
        buf = io.StringIO()
        csv.writer(buf, quoting=csv.QUOTE_ALL, lineterminator="\n").writerow(row)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(buf.getvalue())
        self.rows_written += 1


def _seconds(ev: dict[str, str], what: str) -> float:
    try:
        return int(ev.get(f"Caller-Channel-{what}-Time", "0") or 0) / 1e6
    except ValueError:
        return 0.0


def _stamp(micros: str) -> str:
    try:
        value = int(micros or 0)
    except ValueError:
        return ""
    return datetime.fromtimestamp(value // 1_000_000, UTC).strftime("%Y-%m-%d %H:%M:%S") if value else ""

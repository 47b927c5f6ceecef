"""Asterisk CDR rows (``cdr_csv``'s ``Master.csv``, FreePBX's ``asteriskcdrdb.cdr``) to calls.

Asterisk writes one row per CDR *leg*, several per call. Rows are grouped into calls by
``linkedid`` (the ``Uniqueid`` of the call's oldest channel: the very id the AMI tracker
uses, so a call seen live and again here is one call); by ``uniqueid`` when there is no
linkedid; without either (``Master.csv`` without ``loguniqueid``/``newcdrcolumns``) by
caller id and overlapping times, which cannot be matched with a live call by id.

What a CDR can tell, and what it cannot (the README says the same):

* talk: a row of the call leg that is ``ANSWERED`` with a ``dstchannel`` that is a person
  (not a leg that ran ``VoiceMail``), from the later of the two answers to the earlier end;
  whole seconds, and an answer before ``Queue()`` is not counted when the member's own row
  is there;
* voicemail: a row whose ``lastapp`` is ``VoiceMail`` says it was *reached*; whether a
  message was left is not in any CDR column, so such a call is ``missed`` with
  ``voicemail_reached`` set;
* a PBX shutdown, channel variables and the department are not in the CDR.
"""
from __future__ import annotations

import csv
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar
from zoneinfo import ZoneInfo

from ..ami import dialstring
from ..classify import CallFacts, Talk

log = logging.getLogger(__name__)

Row = TypeVar("Row")

# cdr_csv's columns in order; 16 without options, 18 with loguniqueid + loguserfield,
# 21 with newcdrcolumns too (tests/data/traces/asterisk-actions/README.md).
CSV_COLUMNS = ("accountcode", "src", "dst", "dcontext", "clid", "channel", "dstchannel", "lastapp",
               "lastdata", "start", "answer", "end", "duration", "billsec", "disposition", "amaflags",
               "uniqueid", "userfield", "peeraccount", "linkedid", "sequence")
CSV_WIDTHS = (16, 18, 21)
_CLID = re.compile(r'^\s*"?(?P<name>.*?)"?\s*<(?P<num>[^>]*)>\s*$')


@dataclass(frozen=True, slots=True)
class AstCdr:
    """One CDR leg, times in Unix seconds (0: none)."""

    src: str
    dst: str
    dcontext: str
    clid: str
    channel: str
    dstchannel: str
    lastapp: str
    lastdata: str
    start: float
    answer: float
    end: float
    billsec: int
    disposition: str
    accountcode: str = ""
    uniqueid: str = ""
    linkedid: str = ""


class BadRow(ValueError):
    """A row that is not a CDR in a layout we know; the message says why."""


def _local_time(text: str, tz: ZoneInfo) -> float:
    text = text.strip()
    if not text:
        return 0.0
    try:
        return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=tz).timestamp()
    except ValueError:
        raise BadRow(f"not a time: {text[:40]!r}") from None


def _int(text: str | int | None, column: str) -> int:
    try:
        return int(text or 0)
    except (TypeError, ValueError):
        raise BadRow(f"{column}: not a number: {str(text)[:20]!r}") from None


def parse_csv_line(fields: list[str], tz: ZoneInfo) -> AstCdr:
    """One parsed ``Master.csv`` line; raises `BadRow`."""
    if len(fields) not in CSV_WIDTHS:
        raise BadRow(f"{len(fields)} columns, expected {' or '.join(map(str, CSV_WIDTHS))} (cdr_csv's Master.csv)")
    row = dict(zip(CSV_COLUMNS, fields, strict=False))
    return AstCdr(
        src=row["src"], dst=row["dst"], dcontext=row["dcontext"], clid=row["clid"], channel=row["channel"],
        dstchannel=row["dstchannel"], lastapp=row["lastapp"], lastdata=row["lastdata"],
        start=_local_time(row["start"], tz), answer=_local_time(row["answer"], tz), end=_local_time(row["end"], tz),
        billsec=_int(row["billsec"], "billsec"), disposition=row["disposition"], accountcode=row["accountcode"],
        uniqueid=row.get("uniqueid", ""), linkedid=row.get("linkedid", ""),
    )


def csv_rows(lines: Iterable[str], parse_line: Callable[[list[str], ZoneInfo], Row], tz: ZoneInfo,
             where: str) -> list[Row]:
    """Complete CSV lines of a CDR file, each read by `parse_line` (Asterisk's and
    FreeSWITCH's layouts); a bad line is logged (escaped) and skipped."""
    out = []
    for line in lines:
        if not line.strip():
            continue
        try:
            # Line by line: one broken line (a NUL, a stray quote) costs that line only.
            (fields,) = csv.reader([line])
            out.append(parse_line(fields, tz))
        except (csv.Error, ValueError) as exc:  # BadRow is a ValueError
            log.warning("%s: CDR line skipped (%s): %r", where, exc, line[:120])
    return out


def parse_csv(lines: Iterable[str], tz: ZoneInfo, where: str = "Master.csv") -> list[AstCdr]:
    """Complete lines of ``Master.csv``."""
    return csv_rows(lines, parse_csv_line, tz, where)


def from_db_row(row: Mapping[str, object], tz: ZoneInfo) -> AstCdr:
    """One row of FreePBX's ``asteriskcdrdb.cdr`` as a DB-API dict cursor returns it:
    ``calldate`` a naive ``datetime`` in the PBX's local time, ``duration``/``billsec``
    integers, the rest strings. The table has no answer or end column: end is calldate +
    duration, answer is end - billsec."""
    calldate = row.get("calldate")
    if isinstance(calldate, datetime):
        start_dt = calldate if calldate.tzinfo else calldate.replace(tzinfo=tz)
    elif isinstance(calldate, str):
        start_dt = datetime.fromtimestamp(_local_time(calldate, tz), tz)
    else:
        raise BadRow(f"calldate: not a time: {calldate!r}")
    duration = _int(row.get("duration"), "duration")  # type: ignore[arg-type]
    billsec = _int(row.get("billsec"), "billsec")  # type: ignore[arg-type]
    end_dt = start_dt + timedelta(seconds=duration)

    def text(name: str) -> str:
        value = row.get(name)
        return "" if value is None else str(value)

    return AstCdr(
        src=text("src"), dst=text("dst"), dcontext=text("dcontext"), clid=text("clid"), channel=text("channel"),
        dstchannel=text("dstchannel"), lastapp=text("lastapp"), lastdata=text("lastdata"),
        start=start_dt.timestamp(), answer=(end_dt - timedelta(seconds=billsec)).timestamp() if billsec else 0.0,
        end=end_dt.timestamp(), billsec=billsec, disposition=text("disposition"),
        accountcode=text("accountcode"), uniqueid=text("uniqueid"), linkedid=text("linkedid"),
    )


# ---------------------------------------------------------------------- grouping


@dataclass(slots=True)
class AstCall:
    call_id: str
    rows: list[AstCdr]
    by_id: bool  # grouped by linkedid/uniqueid: the id the live tracker uses

    @property
    def end(self) -> float:
        return max(r.end or r.start for r in self.rows)


def group(rows: Iterable[AstCdr]) -> list[AstCall]:
    """Rows to calls, in the order their first row came. Rows without any id go together
    when they carry the same caller id and their times touch or overlap."""
    calls: dict[str, AstCall] = {}
    loose: list[AstCall] = []
    for row in rows:
        key = row.linkedid or row.uniqueid
        if key:
            call = calls.get(key)
            if call is None:
                calls[key] = AstCall(key, [row], True)
            else:
                call.rows.append(row)
            continue
        for call in loose:
            if call.rows[0].clid == row.clid and row.start <= call.end and (row.end or row.start) >= min(
                    r.start for r in call.rows):
                call.rows.append(row)
                break
        else:
            loose.append(AstCall(f"cdr-{int(row.start)}-{row.src or 'anonymous'}", [row], False))
    return [*calls.values(), *loose]


# ---------------------------------------------------------------------- facts


def _partner(name: str) -> str:
    if name.startswith("Local/") and name.endswith((";1", ";2")):
        return name[:-1] + ("2" if name[-1] == "1" else "1")
    return ""


def _main_channel(call: AstCall) -> str:
    """The call leg, as the AMI tracker picks it: the linkedid channel, or for a
    ``Local/…;1`` its ``;2`` half (which runs the dialplan). Without ids: the earliest
    channel that nobody dialled and that is not the ``;1`` half of a Local pair seen here."""
    channels = {r.channel for r in call.rows}
    if call.by_id:
        own = next((r.channel for r in call.rows if r.uniqueid == call.call_id), "")
        if own:
            partner = _partner(own)
            return partner if own.endswith(";1") and partner in channels else own
    dialled = {r.dstchannel for r in call.rows if r.dstchannel}
    for row in sorted(call.rows, key=lambda r: r.start):
        name = row.channel
        partner = _partner(name)
        if name in dialled or (partner and partner in dialled):
            continue
        if name.endswith(";1") and partner in channels:
            continue
        return name
    return min(call.rows, key=lambda r: r.start).channel


def _clid_name(clid: str) -> str:
    match = _CLID.match(clid)
    return match.group("name").strip() if match else ""


def facts(call: AstCall, pbx: str, is_extension) -> CallFacts:
    main_name = _main_channel(call)
    main_rows = sorted((r for r in call.rows if r.channel == main_name), key=lambda r: r.start)
    first = main_rows[0] if main_rows else min(call.rows, key=lambda r: r.start)
    by_channel: dict[str, list[AstCdr]] = {}
    for r in call.rows:
        by_channel.setdefault(r.channel, []).append(r)

    def own_rows(channel: str) -> list[AstCdr]:
        return by_channel.get(channel, []) + by_channel.get(_partner(channel), [])

    def is_voicemail(channel: str) -> bool:
        return any(r.lastapp.lower() == "voicemail" for r in own_rows(channel))

    talks: list[Talk] = []
    rung: list[tuple[str, str]] = []
    ring_end = 0.0
    queue = ""
    for r in main_rows:
        if r.lastapp.lower() == "queue" and not queue:
            queue = r.lastdata.split(",", 1)[0]
        if not r.dstchannel:
            continue
        ext = dialstring.extension(r.dstchannel, r.lastdata if r.lastapp.lower() == "dial" else "", is_extension)
        if r.disposition == "ANSWERED" and r.billsec > 0 and r.answer and not is_voicemail(r.dstchannel):
            # The agent's own row answers later than the call leg's when a queue or IVR
            # answered first: talk counts from the person's answer.
            answers = [o.answer for o in own_rows(r.dstchannel) if o.answer] or [r.answer]
            ends = [o.end for o in own_rows(r.dstchannel) if o.end] + [r.end]
            start = max(r.answer, min(answers))
            talks.append(Talk(ext, "", start, max(start, min(ends))))
        else:
            rung.append((ext, ""))
            ring_end = max(ring_end, r.end)
    if not ring_end and not talks:
        ring_end = next((r.answer for r in main_rows if r.answer), 0.0)  # the PBX answered itself
    vm_rows = [r for r in call.rows if r.lastapp.lower() == "voicemail"]
    return CallFacts(
        call_id=call.call_id,
        pbx=pbx,
        start=min(r.start for r in call.rows),
        end=call.end,
        caller_number=first.src,
        caller_name=_clid_name(first.clid),
        dialled_number=first.dst if first.dst != "s" else "",
        context=first.dcontext,
        talks=talks,
        rung=rung,
        ring_end=ring_end,
        voicemail_reached=bool(vm_rows),
        voicemail_left=False,  # no CDR column says a message was left
        voicemail_box=vm_rows[0].lastdata.split(",", 1)[0] if vm_rows else "",
        queue=queue,
    )

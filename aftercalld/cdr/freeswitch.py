"""FreeSWITCH ``mod_cdr_csv`` rows to calls.

The module's shipped template ``example`` (``cdr_csv.conf.xml``, ``default-template``) writes:

    "${caller_id_name}","${caller_id_number}","${destination_number}","${context}",
    "${start_stamp}","${answer_stamp}","${end_stamp}","${duration}","${billsec}",
    "${hangup_cause}","${uuid}","${bleg_uuid}","${accountcode}","${read_codec}","${write_codec}"

to ``<log-base>/cdr-csv/Master.csv`` (and a copy per accountcode), one row per A leg with
the default ``legs = a`` (a channel no other channel originated). The A leg is the channel
that ran the routing dialplan, the one the ESL tracker names the call after: ``uuid`` is
the call id, so a call seen live and again here is one call.

What the shipped template can tell: not answered is missed; a shutdown's hangup cause is
interrupted. *Who* answered it cannot: FreeSWITCH 1.10 sets no ``bleg_uuid`` variable (the
recorded traces show it), so an IVR, voicemail and an agent all look the same. Such a call
is recorded but not texted (`uncertain` says why). Two columns more at the end of the
template, ``"${last_app}","${last_bridge_to}"`` (17 columns), make it exact: bridged to a
person is connected, the voicemail app is voicemail reached, anything else missed.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from ..classify import CallFacts, Talk
from ..esl.legs import SHUTDOWN_CAUSES
from .asterisk import BadRow, _int, _local_time, csv_rows

log = logging.getLogger(__name__)

CSV_COLUMNS = ("caller_id_name", "caller_id_number", "destination_number", "context", "start_stamp",
               "answer_stamp", "end_stamp", "duration", "billsec", "hangup_cause", "uuid", "bleg_uuid",
               "accountcode", "read_codec", "write_codec")
EXTRA_COLUMNS = ("last_app", "last_bridge_to")  # the README's recommended addition
UNCERTAIN_REASON = ("the CDR does not say who answered (add \"${last_app}\",\"${last_bridge_to}\" "
                    "to the cdr_csv template)")


@dataclass(frozen=True, slots=True)
class FsCdr:
    caller_id_name: str
    caller_id_number: str
    destination_number: str
    context: str
    start: float
    answer: float
    end: float
    billsec: int
    hangup_cause: str
    uuid: str
    bleg_uuid: str
    accountcode: str = ""
    last_app: str | None = None  # None: the template does not carry it
    last_bridge_to: str = ""


def parse_csv_line(fields: list[str], tz: ZoneInfo) -> FsCdr:
    if len(fields) not in (len(CSV_COLUMNS), len(CSV_COLUMNS) + len(EXTRA_COLUMNS)):
        raise BadRow(f"{len(fields)} columns, expected {len(CSV_COLUMNS)} (mod_cdr_csv's example template) "
                     f"or {len(CSV_COLUMNS) + len(EXTRA_COLUMNS)} (with last_app, last_bridge_to)")
    row = dict(zip(CSV_COLUMNS + EXTRA_COLUMNS, fields, strict=False))
    if not row["uuid"]:
        raise BadRow("no uuid")
    return FsCdr(
        caller_id_name=row["caller_id_name"], caller_id_number=row["caller_id_number"],
        destination_number=row["destination_number"], context=row["context"],
        start=_local_time(row["start_stamp"], tz), answer=_local_time(row["answer_stamp"], tz),
        end=_local_time(row["end_stamp"], tz), billsec=_int(row["billsec"], "billsec"),
        hangup_cause=row["hangup_cause"], uuid=row["uuid"], bleg_uuid=row["bleg_uuid"],
        accountcode=row["accountcode"], last_app=row.get("last_app"), last_bridge_to=row.get("last_bridge_to", ""),
    )


def parse_csv(lines: Iterable[str], tz: ZoneInfo, where: str = "Master.csv") -> list[FsCdr]:
    return csv_rows(lines, parse_csv_line, tz, where)


@dataclass(slots=True)
class FsCall:
    call_id: str
    a: FsCdr
    b: FsCdr | None = None
    by_id: bool = True  # the uuid is the ESL tracker's call id

    @property
    def end(self) -> float:
        return max(self.a.end, self.b.end if self.b else 0.0) or self.a.start


def _bridged(a: FsCdr) -> str:
    return a.last_bridge_to or a.bleg_uuid


def group(rows: Iterable[FsCdr]) -> list[FsCall]:
    rows = list(rows)
    b_legs = {_bridged(r) for r in rows if _bridged(r)}
    by_uuid = {r.uuid: r for r in rows}
    calls = []
    for row in rows:
        if row.uuid in b_legs:
            continue  # a B leg (legs = ab): it joins the A row that names it
        b = by_uuid.get(_bridged(row)) if _bridged(row) else None
        calls.append(FsCall(row.uuid, row, b))
    return calls


def uncertain(call: FsCall) -> str:
    """Why this call must not be texted although it was found, or "": answered, and the
    row cannot say whether a person or the PBX (IVR, voicemail) answered."""
    a = call.a
    if a.answer and a.last_app is None and not _bridged(a) and call.b is None \
            and a.hangup_cause not in SHUTDOWN_CAUSES:
        return UNCERTAIN_REASON
    return ""


def facts(call: FsCall, pbx: str, is_extension) -> CallFacts:
    a, b = call.a, call.b
    talks: list[Talk] = []
    rung: list[tuple[str, str]] = []
    if b is not None:
        agent = b.destination_number.split("@", 1)[0]
    else:
        agent = a.destination_number if is_extension(a.destination_number) else ""
    voicemail = (a.last_app or "").lower() == "voicemail"
    # Bridged says a person answered. With the shipped template nothing says who did: the
    # call is recorded as answered (connected) and never texted (see uncertain()).
    person_answered = bool(a.answer) and a.billsec > 0 and (
        bool(_bridged(a)) or b is not None or a.last_app is None)
    if person_answered and not voicemail:
        start = max(a.answer, b.answer if b is not None and b.answer else 0.0)
        end = min(t for t in (a.end, b.end if b is not None else 0.0) if t) or a.end
        talks.append(Talk(agent, "", start, max(start, end)))
    elif agent:
        rung.append((agent, ""))
    ring_end = 0.0
    if not talks:
        ring_end = (b.end if b is not None else 0.0) or a.answer
    return CallFacts(
        call_id=call.call_id,
        pbx=pbx,
        start=a.start,
        end=call.end,
        caller_number=a.caller_id_number,
        caller_name=a.caller_id_name,
        dialled_number=a.destination_number,
        context=a.context,
        talks=talks,
        rung=rung,
        ring_end=ring_end,
        voicemail_reached=voicemail,
        voicemail_box="voicemail" if voicemail else "",
        interrupted=a.hangup_cause in SHUTDOWN_CAUSES,
        hangup_cause=a.hangup_cause,
    )

"""The AMI test server's ``cdr_csv``: a ``Master.csv`` of the calls it replayed.

Rows are in the layout Asterisk 22's ``cdr_csv`` writes with ``loguniqueid``,
``loguserfield`` and ``newcdrcolumns`` on (21 columns, every text quoted, numbers not,
local times ``YYYY-MM-DD HH:MM:SS``; tests/data/traces/asterisk-actions/Master.csv is
the real thing). As there, a channel that was dialled has no row of its own (it is the
``dstchannel`` of its dialler's row); every other channel has one: its last application,
what it dialled and how that dial ended (``ANSWERED``, ``NO ANSWER``, ``BUSY``,
``FAILED``), or whether it was answered itself.

A call's rows are appended when its last channel hangs up, all at once, as Asterisk
dispatches a call's CDR chain; a line is written whole (one ``write`` of complete lines),
so a reader never sees half of one. Times are the server's clock when the event went
through it, not the trace's: the rows say *now*, as a live PBX's do.
"""
from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

# DialEnd's DialStatus to the CDR disposition Asterisk writes for the dialling channel.
_DISPOSITIONS = {"ANSWER": "ANSWERED", "BUSY": "BUSY", "NOANSWER": "NO ANSWER", "CANCEL": "NO ANSWER",
                 "CONGESTION": "CONGESTION", "CHANUNAVAIL": "FAILED"}


@dataclass
class _Leg:
    uid: str
    linkedid: str
    channel: str
    start: float
    src: str = ""
    clid_name: str = ""
    dst: str = ""
    dcontext: str = ""
    accountcode: str = ""
    lastapp: str = ""
    lastdata: str = ""
    answered: float = 0.0  # the channel itself went Up
    dstchannel: str = ""
    dial_app: tuple[str, str] = ("", "")  # the Dial() that made the row: its lastapp/lastdata
    dial_status: str = ""
    dial_answer: float = 0.0
    dialled: bool = False  # someone's DialBegin destination: no row of its own
    end: float = 0.0
    seq: int = 0


@dataclass
class CdrCsv:
    path: Path
    rows_written: int = 0
    _legs: dict[str, _Leg] = field(default_factory=dict)
    _calls: dict[str, set[str]] = field(default_factory=dict)  # linkedid -> live Uniqueids
    _ended: dict[str, list[_Leg]] = field(default_factory=dict)  # linkedid -> its legs that hung up
    _seq: int = 0

    def __post_init__(self) -> None:
        self.path.touch()

    def apply(self, ev: dict[str, str], now: float | None = None) -> None:
        """Follow one event the PBX lived through."""
        now = time.time() if now is None else now
        name, uid = ev.get("Event"), ev.get("Uniqueid", "")
        if name == "DialBegin":
            self._dial_begin(ev, now)
            return
        if name == "DialEnd":
            self._dial_end(ev, now)
            return
        if not uid:
            return
        if name == "Newchannel":
            self._seq += 1
            lid = ev.get("Linkedid") or uid
            self._legs[uid] = _Leg(uid, lid, ev.get("Channel", ""), now, dst=ev.get("Exten", ""),
                                   dcontext=ev.get("Context", ""), seq=self._seq)
            self._calls.setdefault(lid, set()).add(uid)
        leg = self._legs.get(uid)
        if leg is None:
            return
        cid = ev.get("CallerIDNum", "")
        if cid and cid != "<unknown>":
            leg.src = cid
            name_ = ev.get("CallerIDName", "")
            leg.clid_name = "" if name_ == "<unknown>" else name_
        if ev.get("AccountCode"):
            leg.accountcode = ev["AccountCode"]
        if name == "Newexten" and ev.get("Application"):
            leg.lastapp, leg.lastdata = ev["Application"], ev.get("AppData", "")
        elif name == "Newstate" and ev.get("ChannelStateDesc") == "Up" and not leg.answered:
            leg.answered = now
        elif name == "Hangup":
            self._hang_up(leg, now)

    def cut_all(self, now: float | None = None) -> None:
        """The PBX shut down: every channel hangs up at once and its CDRs are written."""
        now = time.time() if now is None else now
        for leg in list(self._legs.values()):
            self._hang_up(leg, now)

    # ------------------------------------------------------------------ events

    def _dial_begin(self, ev: dict[str, str], now: float) -> None:
        dest = self._legs.get(ev.get("DestUniqueid", ""))
        if dest is not None:
            dest.dialled = True
        src = self._legs.get(ev.get("Uniqueid", ""))
        if src is not None and dest is not None:
            src.dstchannel, src.dial_status, src.dial_answer = dest.channel, "", 0.0
            src.dial_app = (src.lastapp, src.lastdata)

    def _dial_end(self, ev: dict[str, str], now: float) -> None:
        src = self._legs.get(ev.get("Uniqueid", ""))
        if src is None:
            return
        src.dial_status = ev.get("DialStatus", "")
        if src.dial_status == "ANSWER":
            src.dial_answer = now

    def _hang_up(self, leg: _Leg, now: float) -> None:
        leg.end = now
        del self._legs[leg.uid]
        self._ended.setdefault(leg.linkedid, []).append(leg)
        live = self._calls.get(leg.linkedid)
        if live is not None:
            live.discard(leg.uid)
            if live:
                return
            del self._calls[leg.linkedid]
        self._write(self._ended.pop(leg.linkedid))

    # ------------------------------------------------------------------ the file

    def _write(self, legs: list[_Leg]) -> None:
        out = io.StringIO()
        rows = 0
        for leg in sorted(legs, key=lambda item: item.seq):
            if leg.dialled:
                continue
            if leg.dstchannel:
                disposition = _DISPOSITIONS.get(leg.dial_status, "NO ANSWER")
                answer = leg.dial_answer
                # Asterisk closes a dial's CDR when the dial ends: what the channel runs
                # after it (a NoOp, Hangup) is not its lastapp.
                leg.lastapp, leg.lastdata = leg.dial_app
            else:
                disposition = "ANSWERED" if leg.answered else "NO ANSWER"
                answer = leg.answered
            clid = f'"{leg.clid_name}" <{leg.src}>' if leg.src else ""
            duration = int(leg.end - leg.start)
            billsec = int(leg.end - answer) if answer else 0
            head = [leg.accountcode, leg.src, leg.dst, leg.dcontext, clid, leg.channel, leg.dstchannel,
                    leg.lastapp, leg.lastdata, _time(leg.start)]
            tail = [disposition, "DOCUMENTATION", leg.uid, "", "", leg.linkedid]
            # cdr_csv quotes every text column and none of the numbers; an unanswered
            # call's answer time is an empty, unquoted column.
            answered = _quote(_time(answer)) if answer else ""
            out.write(",".join(_quote(v) for v in head) + f",{answered},{_quote(_time(leg.end))},{duration},{billsec},"
                      + ",".join(_quote(v) for v in tail) + f",{leg.seq}\n")
            rows += 1
        if rows:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(out.getvalue())
            self.rows_written += rows


def _quote(value: str) -> str:
    buf = io.StringIO()
    csv.writer(buf, quoting=csv.QUOTE_ALL, lineterminator="").writerow([value])
    return buf.getvalue()


def _time(ts: float) -> str:
    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%d %H:%M:%S") if ts else ""

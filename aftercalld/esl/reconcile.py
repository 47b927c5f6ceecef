"""Reconcile the ESL tracker with FreeSWITCH's own list of live channels
(``api show channels as json``), on every connect, and finish calls a restart cut.

* a channel FreeSWITCH lists that the tracker does not know began while nobody listened:
  it is *adopted* as if its CHANNEL_CREATE had been seen (caller, destination, direction,
  context, creation time, and the call it belongs to: ``call_uuid``), so that its call is
  grouped and classified at once when its CHANNEL_HANGUP_COMPLETE comes, instead of
  waiting for legs it never saw;
* a tracked call none of whose channels is listed any more ended while we were away: the
  CDR backfill's when ``[[pbx]] cdr`` is set, else finished here with what was seen
  (end = now, hangup cause saying so).

Only channels the tracker knew before the list was asked for are judged by it: the events
that arrive between the question and the answer are the newer truth.
"""
from __future__ import annotations

import json
import logging
import re
from typing import TYPE_CHECKING

from ..classify import build_record
from ..logutil import fields
from ..model import CallRecord
from .legs import call_leg

if TYPE_CHECKING:
    from .tracker import EslTracker, _Call

log = logging.getLogger("aftercalld.esl.tracker")

ENDED_UNSEEN_CAUSE = "unknown (ended while aftercalld was not connected)"
RESTARTED_CAUSE = "unknown (FreeSWITCH restarted while the call was up)"
SHOW_CHANNELS = "show channels as json"
# FreeSWITCH sets the global variable core_uuid at start: the same value its events carry
# as Core-UUID. An unknown variable answers an empty body; older builds may say -ERR.
CORE_UUID = "global_getvar core_uuid"
_UUID = re.compile(r"[0-9A-Za-z][0-9A-Za-z-]{7,63}")


def looks_like_uuid(text: str) -> bool:
    return bool(_UUID.fullmatch(text))



def parse_channels(body: str) -> list[dict[str, str]]:
    """The rows of ``show channels as json`` (``{"row_count": 0}`` when there are none).
    Raises ValueError for anything else (an ``-ERR`` line)."""
    data = json.loads(body)
    if not isinstance(data, dict) or "row_count" not in data:
        raise ValueError(body.strip()[:120] or "empty answer")
    rows = data.get("rows") or []
    return [{k: str(v) for k, v in row.items()} for row in rows if isinstance(row, dict) and row.get("uuid")]


def apply(tracker: EslTracker, rows: list[dict[str, str]], asked_after_seq: int, now: float, now_us: int,
          core: str) -> list[CallRecord]:
    listed = {row["uuid"] for row in rows}
    out: list[CallRecord] = []
    for call in list(tracker._calls.values()):
        judged = [leg for leg in call.legs.values() if leg.seq <= asked_after_seq]
        if not judged or any(leg.uuid in listed for leg in call.legs.values()):
            continue
        if call_leg(call.legs.values(), tracker._direction_var).final is not None:
            out += tracker._finish(call, now)  # its own end was seen; legs it waited for ended meanwhile
        else:
            out += ended_unseen(tracker, call, now, now_us)
    for row in rows:
        uuid = row["uuid"]
        if uuid in tracker._by_uuid and uuid in tracker._by_uuid[uuid].legs or uuid in tracker._done:
            continue
        out += tracker.feed(_create_event(row, core), now)
        tracker.stats["adopted"] += 1
        log.info("ESL call leg %s (%s) adopted from FreeSWITCH's list of live channels", uuid,
                 row.get("cid_num", "") or "-", extra=fields(call_id=uuid, pbx=tracker.pbx.name))
    return out


def _create_event(row: dict[str, str], core: str) -> dict[str, str]:
    """A live channel as the CHANNEL_CREATE it would have sent."""
    try:
        created_us = str(int(float(row.get("created_epoch", "0")) * 1_000_000))
    except ValueError:
        created_us = "0"
    event = {
        "Event-Name": "CHANNEL_CREATE", "Unique-ID": row["uuid"], "Core-UUID": core,
        "Event-Date-Timestamp": created_us, "Caller-Channel-Created-Time": created_us,
        "Call-Direction": row.get("direction", ""), "Caller-Context": row.get("context", ""),
        "Caller-Destination-Number": row.get("dest", ""), "Caller-Caller-ID-Number": row.get("cid_num", ""),
        "Caller-Caller-ID-Name": row.get("cid_name", ""),
    }
    partner = row.get("call_uuid", "")
    if partner and partner != row["uuid"]:
        event["Other-Leg-Unique-ID"] = partner
    return event


def ended_unseen(tracker: EslTracker, call: _Call, now: float, now_us: int) -> list[CallRecord]:
    tracker.stats["ended_unseen"] += 1
    ident = next(iter(sorted(call.legs)), "?")
    if tracker.pbx.backfills_from_cdr:
        log.info("ESL call %s ended while aftercalld was not connected; left to the CDR backfill", ident,
                 extra=fields(call_id=ident, pbx=tracker.pbx.name))
        tracker._forget(call, now)
        return []
    log.info("ESL call %s ended while aftercalld was not connected; recorded with what was seen (end = now)",
             ident, extra=fields(call_id=ident, pbx=tracker.pbx.name))
    return finish(tracker, call, now, now_us, ENDED_UNSEEN_CAUSE, interrupted=False)


def interrupted(tracker: EslTracker, call: _Call, now: float, now_us: int) -> list[CallRecord]:
    """FreeSWITCH restarted: the call was cut by its shutdown (not texted by default)."""
    return finish(tracker, call, now, now_us, RESTARTED_CAUSE, interrupted=True)


def finish(tracker: EslTracker, call: _Call, now: float, now_us: int, cause: str, *,
           interrupted: bool) -> list[CallRecord]:
    """Record a call whose end was not seen: legs still open end at ``now_us``."""
    for leg in call.legs.values():
        if leg.final is None:
            leg.final = {"Caller-Channel-Hangup-Time": str(now_us)}
    tracker._forget(call, now)
    try:
        facts = tracker._reader.facts(call.legs)
        facts.hangup_cause = cause
        facts.interrupted = interrupted or facts.interrupted
        record = build_record(facts, tracker.settings, tracker.tz)
    except Exception:
        tracker.stats["malformed"] += 1
        log.exception("ESL tracker: could not build a record for call with channels %s", ", ".join(sorted(call.legs)),
                      extra=fields(pbx=tracker.pbx.name))
        return []
    tracker.stats["calls"] += 1
    return [record]

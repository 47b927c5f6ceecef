"""Reconcile the AMI tracker with Asterisk's own list of live channels (``CoreShowChannels``).

Run on every connect, so that nothing depends on having listened the whole time:

* a channel Asterisk lists that the tracker does not know began while nobody listened (a
  fresh process after a crash or a restart, or a link blip): its call is *adopted*, its
  facts taken from the list (caller, DID, state, application, bridge, age), and it is
  classified normally at its last Hangup;
* a tracked channel that is no longer listed hung up while we were away: once all of a
  call's channels are gone, the call ended unseen. When the PBX's CDRs are read
  (``[[pbx]] cdr``), the CDR backfill records it with its real end; otherwise it is finished
  here with what is known (end = now) and says so in its hangup cause.

What the list cannot tell (who rang before, how long the talk already lasted) is left out
rather than guessed: talk counts from the moment of the list, rings from the dial seen.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..logutil import fields
from ..model import CallRecord
from .calls import Call, Chan, Dial, voicemail_box

if TYPE_CHECKING:
    from .tracker import CallTracker

log = logging.getLogger("aftercalld.ami.tracker")

ENDED_UNSEEN_CAUSE = "unknown (ended while aftercalld was not connected)"
_UNKNOWN = ("", "<unknown>", "<Unknown>")
# Channels Asterisk created to place a Dial: their Application is AppDial (AppDial2 for a
# Local channel's ;1 half), with "(Outgoing Line)" as data.
_OUTGOING = ("AppDial", "AppDial2")



def age_seconds(duration: str) -> float:
    """CoreShowChannel's ``Duration`` (``HH:MM:SS``) in seconds; 0 when unreadable."""
    try:
        hours, minutes, seconds = duration.split(":")
        return max(0.0, int(hours) * 3600.0 + int(minutes) * 60.0 + int(seconds))
    except ValueError:
        return 0.0


def _clean(value: str | None) -> str:
    return "" if value is None or value in _UNKNOWN else value


def apply(tracker: CallTracker, rows: list[dict[str, str]], now: float) -> list[CallRecord]:
    book = tracker.book
    listed = {row["Uniqueid"]: row for row in rows if row.get("Uniqueid") and row.get("Linkedid")}
    out: list[CallRecord] = []
    # Tracked channels Asterisk no longer lists hung up while we were away.
    for call in list(book.calls.values()):
        gone = [c for c in call.channels.values() if not c.hung and c.uid not in listed]
        for hung in gone:
            hung.hung = True
            call.live -= 1
            call.leave_all_bridges(hung.uid, now)
        if gone and call.live <= 0:
            out += _ended_unseen(tracker, call, now)
    adopted: dict[str, list[tuple[Chan, dict[str, str]]]] = {}
    known = set(book.chans)
    for uid, row in listed.items():
        found = book.chans.get(uid)
        lid = row["Linkedid"]
        if found is None:
            if lid in book.finished:
                continue
            existing = book.calls.get(lid)
            call = existing if existing is not None else book.new_call(
                lid, now - age_seconds(row.get("Duration", "")), partial=False)
            chan = book.add_chan(call, uid, row.get("Channel", ""))
        elif found.hung:
            continue
        else:
            chan = found
        if chan.call.partial or uid not in known:
            _fill(chan, row, now)
            adopted.setdefault(chan.call.linkedid, []).append((chan, row))
        bridge = row.get("BridgeId", "")
        call = chan.call
        if bridge:
            if not call.bridges or chan.uid not in call.bridges.get(bridge, ()):
                call.leave_all_bridges(chan.uid, now)
                call.bridge_enter(chan.uid, bridge, now)
        else:
            call.leave_all_bridges(chan.uid, now)
    for lid, chans in adopted.items():
        _adopt(tracker, book.calls[lid], chans, now)
    return out


def _fill(chan: Chan, row: dict[str, str], now: float) -> None:
    """What the list says of a channel, where its own events (if any came) did not."""
    chan.context = chan.context or row.get("Context", "")
    chan.exten = chan.exten or row.get("Exten", "")
    if not chan.cid_num:
        chan.cid_num = _clean(row.get("CallerIDNum"))
        chan.cid_name = _clean(row.get("CallerIDName"))
    if not chan.cl_num:
        chan.cl_num = _clean(row.get("ConnectedLineNum"))
        chan.cl_name = _clean(row.get("ConnectedLineName"))
    chan.account = chan.account or row.get("AccountCode", "")
    if row.get("ChannelStateDesc") == "Up" and not chan.up_at:
        chan.up_at = now  # since when is not in the list: not before now, to not invent talk


def _adopt(tracker: CallTracker, call: Call, chans: list[tuple[Chan, dict[str, str]]], now: float) -> None:
    # Opened by events that came just before the list: the list makes it whole enough.
    call.partial = False
    oldest = max(age_seconds(row.get("Duration", "")) for _, row in chans)
    call.start = min(call.start, now - oldest)
    dialler: tuple[Chan, str] | None = None
    for chan, row in chans:
        app, data = row.get("Application", ""), row.get("ApplicationData", "")
        if app == "VoiceMail":
            chan.ran_vm = call.vm_ran = True
            call.vm_box = call.vm_box or voicemail_box(data)
        elif app == "Queue" and not call.queue:
            call.queue = data.split(",", 1)[0].strip()
        elif app == "Dial" and (dialler is None or chan.uid == call.linkedid):
            dialler = (chan, data.split(",", 1)[0])
    if dialler is not None:
        src, dialled = dialler
        known = {d.dest for d in call.dials}
        for chan, row in chans:
            if row.get("Application") in _OUTGOING and chan.uid not in known:
                call.dials.append(Dial(src.uid, chan.uid, dialled))
    tracker.stats["adopted"] += 1
    log.info("AMI call %s adopted from Asterisk's list of live channels (%d channel(s), up %.0f s)",
             call.linkedid, len(chans), oldest, extra=fields(call_id=call.linkedid, pbx=tracker.pbx.name))


def interrupt_all(tracker: CallTracker, now: float, seen_before: float) -> list[CallRecord]:
    """Asterisk restarted: its calls in progress (first seen before ``seen_before``, our
    clock: not those of the new Asterisk whose events came before its CoreStatus answer)
    were cut by the shutdown. Recorded as interrupted (not texted by default)."""
    out: list[CallRecord] = []
    for call in [c for c in tracker.book.calls.values() if c.seen < seen_before]:
        call.shutdown = True
        tracker.stats["interrupted"] += 1
        out += tracker.finish(call, now, "unknown (Asterisk restarted while the call was up)")
    return out


def _ended_unseen(tracker: CallTracker, call: Call, now: float) -> list[CallRecord]:
    tracker.stats["ended_unseen"] += 1
    if tracker.pbx.backfills_from_cdr:
        log.info("AMI call %s ended while aftercalld was not connected; left to the CDR backfill",
                 call.linkedid, extra=fields(call_id=call.linkedid, pbx=tracker.pbx.name))
        tracker.book.forget(call)
        return []
    log.info("AMI call %s ended while aftercalld was not connected; recorded with what was seen (end = now)",
             call.linkedid, extra=fields(call_id=call.linkedid, pbx=tracker.pbx.name))
    return tracker.finish(call, now, ENDED_UNSEEN_CAUSE)

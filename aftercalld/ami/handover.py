"""The AMI tracker's calls in progress as JSON, and back: handed over across a clean stop.

At SIGTERM the daemon writes them to the outbox; the next start reads them back before it
connects, and the first connect's reconciliation (`reconcile.py`) then settles what changed
meanwhile: calls still up continue with every fact seen so far (variables, who rang, talk
so far, which a channel list alone cannot give), calls that ended are finished. The
``startup`` of the Asterisk they belonged to travels with them, so that a PBX restart
during the stop still records them as interrupted.
"""
from __future__ import annotations

from typing import Any

from .book import CallBook
from .calls import Call, Chan, Dial

FORMAT = 1
_CALL_SKIP = frozenset({"channels", "by_name", "main", "dials"})


def _fields(obj: Any, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__slots__ if name not in skip}


def dump(book: CallBook, startup: str | None) -> dict[str, Any]:
    calls = []
    for call in book.calls.values():
        fields = _fields(call, _CALL_SKIP)
        fields["channels"] = [_fields(chan, frozenset({"call"})) for chan in call.channels.values()]
        fields["dials"] = [_fields(dial) for dial in call.dials]
        calls.append(fields)
    return {"format": FORMAT, "startup": startup, "calls": calls}


def load(book: CallBook, state: dict[str, Any]) -> tuple[int, str | None]:
    """Put the calls back in ``book``; returns how many, and the Asterisk startup they
    belong to. Calls the book already has (events came first) are left as they are."""
    if state.get("format") != FORMAT:
        return 0, None
    count = 0
    for fields in state.get("calls", ()):
        lid = fields["linkedid"]
        if lid in book.calls or lid in book.finished:
            continue
        call = Call(lid, fields["start"], fields["partial"], fields["seen"])
        for name, value in fields.items():
            if name not in ("channels", "dials"):
                setattr(call, name, value)
        call.stretches = [(peer, start, end) for peer, start, end in fields["stretches"]]
        call.dials = []
        for dial_fields in fields["dials"]:
            dial = Dial(dial_fields["src"], dial_fields["dest"], dial_fields["dialstring"])
            dial.status, dial.end = dial_fields["status"], dial_fields["end"]
            call.dials.append(dial)
        for chan_fields in fields["channels"]:
            chan = Chan(chan_fields["uid"], chan_fields["name"], call)
            for name, value in chan_fields.items():
                setattr(chan, name, value)
            call.channels[chan.uid] = chan
            if chan.name:
                call.by_name[chan.name] = chan
            book.chans[chan.uid] = chan
        book.calls[lid] = call
        count += 1
    return count, state.get("startup")

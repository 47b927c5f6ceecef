"""Read-only views of the outbox for people: `report` and `why`."""
from __future__ import annotations

import csv
import json
import os
import statistics
from collections.abc import Set as AbstractSet
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from .clock import Clock, system_clock, utc_now
from .config import Config
from .model import CallRecord, MessageState
from .phone import caller_id_forms, normalise_for_list
from .store import Outbox
from .store.location import shown
from .textsafety import csv_cell, escape_controls

COLUMNS = ("id", "call_key", "rule", "recipient_kind", "destination", "state", "reason", "attempts",
           "created", "submitted", "final", "transport_ids", "source")


NO_DATA = "–"  # a figure with nothing to compute it from


class ReportError(ValueError):
    """A --since/--until the report cannot use: the CLI prints it and exits 2."""


_DAYS_BACK = {"today": 0, "yesterday": 1}


def _parse_time(value: str | None, config: Config, clock: Clock, option: str) -> float | None:
    """An ISO date/time (in the PBX time zone unless it carries an offset), or ``today`` /
    ``yesterday``: local midnight by the injected clock."""
    if not value:
        return None
    days_back = _DAYS_BACK.get(value.strip().lower())
    if days_back is not None:
        local = utc_now(clock).astimezone(config.timezone).date() - timedelta(days=days_back)
        return datetime(local.year, local.month, local.day, tzinfo=config.timezone).timestamp()
    try:
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=config.timezone)
        return moment.timestamp()
    except (ValueError, OverflowError, OSError):
        raise ReportError(f"{option} {escape_controls(repr(value))}: not a date/time (use an ISO date such as "
                          f"2026-11-30 or 2026-11-30T08:00, or today / yesterday)") from None


def _iso(ts: float | None, config: Config) -> str:
    return datetime.fromtimestamp(ts, UTC).astimezone(config.timezone).isoformat(timespec="seconds") if ts else ""


def _row(m: dict[str, Any], config: Config, backfilled: AbstractSet[str] = frozenset()) -> dict[str, Any]:
    return {
        "id": m["id"], "call_key": m["call_key"], "rule": m["rule"], "recipient_kind": m["recipient_kind"],
        "destination": m["destination"] or m["raw_number"], "state": m["state"], "reason": m["reason"],
        "attempts": m["attempts"], "created": _iso(m["created_at"], config),
        "submitted": _iso(m["submitted_at"], config), "final": _iso(m["final_at"], config),
        "transport_ids": m["transport_ids"] or "",
        "source": "cdr" if m["call_key"] in backfilled else "live",  # cdr: recovered from the PBX's CDRs
    }


# How the per-rule summary sorts message states: every message falls in exactly one group,
# so the groups add up to the rule's messages, the one base of every percentage.
_OUTCOMES = (
    ("delivered", frozenset({MessageState.DELIVERED})),
    ("failed", frozenset({MessageState.FAILED, MessageState.UNDELIVERABLE, MessageState.EXPIRED,
                          MessageState.REJECTED})),
    ("suppressed", frozenset({MessageState.SUPPRESSED})),
    ("awaiting_receipt", frozenset({MessageState.SUBMITTED})),
    ("waiting", frozenset({MessageState.QUEUED, MessageState.RETRYING, MessageState.SENDING})),
)
_OUTCOME_WORDS = {"awaiting_receipt": "awaiting a receipt", "waiting": "waiting to be sent"}


def summary(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per rule: how many messages, and how many of them (the same base for every
    percentage) were delivered, failed, suppressed, are awaiting a receipt or still waiting."""
    by_rule: dict[str, list[dict[str, Any]]] = {}
    for m in messages:
        by_rule.setdefault(m["rule"], []).append(m)
    out = []
    for rule, ms in sorted(by_rule.items()):
        counts = {name: sum(m["state"] in states for m in ms) for name, states in _OUTCOMES}
        latencies = [m["final_at"] - m["submitted_at"] for m in ms
                     if m["state"] == MessageState.DELIVERED and m["final_at"] and m["submitted_at"]]
        out.append({
            "rule": rule,
            "messages": len(ms),
            "sent": sum(bool(m["submitted_at"]) for m in ms),  # handed to the transport
            **counts,
            "delivered_pct": round(100 * counts["delivered"] / len(ms), 1),
            "failed_pct": round(100 * counts["failed"] / len(ms), 1),
            "median_delivery_seconds": round(statistics.median(latencies), 1) if latencies else None,
        })
    return out


def _summary_line(t: dict[str, Any]) -> str:
    total = t["messages"]
    parts = [f"{t[name]} {_OUTCOME_WORDS.get(name, name)} ({_pct(t[name], total)})" for name, _ in _OUTCOMES
             if t[name] or name in ("delivered", "failed")]
    median = t["median_delivery_seconds"]
    return (f"  {escape_controls(t['rule'])}: of {total} message(s): {', '.join(parts)}; "
            f"median time to delivery {NO_DATA if median is None else f'{median:g} s'}\n")


def _pct(count: int, total: int) -> str:
    return NO_DATA if not total else f"{round(100 * count / total):d} %"


def check_filters(outbox: Outbox, config: Config, args) -> None:
    """A --status or --rule that can match nothing is a typo, not an empty report."""
    # repr() writes control characters as escapes: the value goes to a terminal.
    states = [s.value for s in MessageState]
    if args.status is not None:
        if args.status.strip().lower() not in states:
            raise ReportError(f"--status {args.status!r}: unknown message state (one of: {', '.join(states)})")
        args.status = args.status.strip().lower()
    if args.rule is not None and args.rule not in {r.name for r in config.rules.rules} \
            and not outbox.messages(rule=args.rule, limit=1):
        names = ", ".join(repr(r.name) for r in config.rules.rules) or "none"
        raise ReportError(f"--rule {args.rule!r}: unknown rule: not in {config.file} "
                          f"(rules: {names}) and no message in the outbox has it")


def report(outbox: Outbox, config: Config, args, out: TextIO, clock: Clock = system_clock) -> int:
    since = _parse_time(args.since, config, clock, "--since")
    until = _parse_time(args.until, config, clock, "--until")
    if getattr(args, "replies", False):
        if args.status is not None or args.rule is not None:
            raise ReportError("--replies lists replies, which have no --status or --rule; "
                              "use --since/--until to choose them")
        return _replies(outbox.replies(since=since, until=until), config, args.format, out)
    check_filters(outbox, config, args)
    messages = outbox.messages(since=since, until=until, rule=args.rule, state=args.status)
    backfilled = outbox.backfilled_among(m["call_key"] for m in messages)
    rows = [_row(m, config, backfilled) for m in messages]
    totals = summary(messages)
    if args.format == "json":
        json.dump({"messages": rows, "summary": totals}, out, ensure_ascii=False, indent=1)
        out.write("\n")
    elif args.format == "csv":
        _csv(out, COLUMNS, rows)
    else:
        _table(out, COLUMNS, rows)
        out.write("\nper rule:\n")
        for t in totals:
            out.write(_summary_line(t))
        if not totals:
            out.write(f"  {NO_DATA} (no messages)\n")
    return 0


REPLY_COLUMNS = ("received", "number", "call_key", "message_id", "keyword", "text")


def _replies(replies: list[dict[str, Any]], config: Config, fmt: str, out: TextIO) -> int:
    rows = [{"received": _iso(r["received_at"], config), "number": r["number"], "call_key": r["call_key"] or "",
             "message_id": r["message_id"] if r["message_id"] is not None else "", "keyword": r["keyword"],
             "text": r["text"]} for r in replies]
    if fmt == "json":
        for row in rows:  # JSON has null for "answers no text we sent"
            row["call_key"] = row["call_key"] or None
            row["message_id"] = row["message_id"] if row["message_id"] != "" else None
        json.dump({"replies": rows}, out, ensure_ascii=False, indent=1)
        out.write("\n")
    elif fmt == "csv":
        _csv(out, REPLY_COLUMNS, rows)
    else:
        _table(out, REPLY_COLUMNS, rows)
        out.write(f"\n{len(rows)} repl{'y' if len(rows) == 1 else 'ies'}\n")
    return 0


def _csv(out: TextIO, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    # A refused caller's raw text or a reply (=HYPERLINK(…), @SUM(…)) must stay text in a spreadsheet.
    writer.writerows({c: csv_cell(v) for c, v in r.items()} for r in rows)


def _table(out: TextIO, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    # Caller ids and replies come from strangers: no cursor movement or forged lines on a terminal.
    rows = [{c: escape_controls(v) for c, v in r.items()} for r in rows]
    widths = {c: max([len(c)] + [len(str(r[c])) for r in rows]) for c in columns}
    out.write("  ".join(c.ljust(widths[c]) for c in columns).rstrip() + "\n")
    for r in rows:
        out.write("  ".join(str(r[c]).ljust(widths[c]) for c in columns).rstrip() + "\n")


# A call handled this long after it ended was not handled live (CDR backfill, a replayed
# event): `why` then shows both times.
_HANDLED_LATE_SECONDS = 60.0


def _when(moment: float | datetime | None, tz: tzinfo, *, zone: bool = True) -> str:
    """A time for people: local to `tz`, with the zone's abbreviation (GMT, BST, CET)."""
    if moment is None:
        return NO_DATA
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S" + (" %Z" if zone else ""))


def why(outbox: Outbox, config: Config, what: str, out: TextIO) -> int:
    calls = outbox.calls(call_key=what)
    replies: list[dict[str, Any]] = []
    number = None
    texted = False
    if not calls:
        number = normalise_for_list(what, config.phone.default_region)
        calls = outbox.calls(callers=[what, *caller_id_forms(number)] if number else [what], texted=number)
        replies = outbox.replies(numbers=[what] + ([number] if number and number != what else []))
        texted = bool(number and outbox.messages(destination=number, limit=1))
    if not calls and not replies and not texted:
        out.write(f"no call with id or caller {escape_controls(repr(what))} in {shown(config.outbox_path)}\n")
        return 1
    for call in calls:
        _why_call(outbox, config, call, out)
    if number or replies:
        _why_thread(outbox, config, number or what, replies, out)
    return 0


def _why_thread(outbox: Outbox, config: Config, number: str, replies: list[dict[str, Any]], out: TextIO) -> None:
    """The conversation with one number, oldest first: every text sent to it (a rule's,
    a HELP answer, a forwarded reply) and every reply it sent."""
    esc = escape_controls
    tz = config.timezone
    items: list[tuple[float, int, str]] = []
    for m in outbox.messages(destination=number):
        at = m["submitted_at"] or m["created_at"]
        about = f", call {esc(m['call_key'])}" if m["call_key"] else ""
        state = esc(m["state"]) + (f" ({esc(m['reason'])})" if m["reason"] else "")
        items.append((at, 0, f"text to {esc(number)} at {_when(at, tz)} (rule {esc(m['rule'])}{about}): {state}: "
                             f"{esc(repr(m['text']))}"))
    for reply in replies:
        about = f" to the text about call {esc(reply['call_key'])}" if reply["call_key"] else ""
        acted = f" ({esc(reply['keyword'])})" if reply["keyword"] else ""
        items.append((reply["received_at"], 1, f"reply from {esc(reply['number'])} at "
                                               f"{_when(reply['received_at'], tz)}{about}{acted}: "
                                               f"{esc(repr(reply['text']))}"))
    if not items:
        return
    out.write(f"thread with {esc(number)}, oldest first:\n")
    for _, _, line in sorted(items, key=lambda item: (item[0], item[1])):
        out.write(f"  {line}\n")


def _why_call(outbox: Outbox, config: Config, call: dict[str, Any], out: TextIO) -> None:
    view = call_view(outbox, config, call)
    # Everything printed came from the PBX or the SMSC: escaped, one line per item.
    esc = escape_controls
    tz = ZoneInfo(view["time_zone"])
    start, end, handled = view["start"], view["end"], view["handled"]
    out.write(f"call {esc(view['call_key'])} at {_when(start or end or handled, tz)}: {esc(view['status'] or '?')} "
              f"{esc(view['direction'] or '?')} from {esc(view['caller'] or '?')} "
              f"to {esc(view['dialled'] or '?')}"
              + (" (backfilled from the PBX's CDR)" if view["backfilled"] else "") + "\n")
    happened = _when(start or end, tz)
    if start and end:
        same_day = start.astimezone(tz).date() == end.astimezone(tz).date()
        happened = f"{_when(start, tz, zone=False)} to " + (end.astimezone(tz).strftime("%H:%M:%S %Z")
                                                           if same_day else _when(end, tz))
    late = end is None or abs(handled.timestamp() - end.timestamp()) >= _HANDLED_LATE_SECONDS
    out.write(f"  happened {happened} ({tz.key})"
              + (f"; handled by aftercalld {_when(handled, tz)}" if late else "") + "\n")
    out.write(f"  decision: {esc(view['decision'])}\n")
    rules_now = view["rules_now"]
    if rules_now is not None:
        version = f"with the rules now in {rules_now['config']}"
        if rules_now["edited_after_call"] is not None:
            version += (f" (edited {_when(rules_now['edited_after_call'], tz)}, after this call: "
                        f"the rules then may have differed)")
        out.write(f"  each rule, {esc(version)}:\n")
        for skipped in rules_now["skipped"]:
            out.write(f"    {esc(repr(skipped['rule']))}: {esc(skipped['reason'])}\n")
        if rules_now["would_match"] is not None:
            out.write(f"    {esc(repr(rules_now['would_match']))} would match now\n")
    for message in view["messages"]:
        _why_message(message, tz, out)


def call_view(outbox: Outbox, config: Config, call: dict[str, Any]) -> dict[str, Any]:
    """What `why` knows of one call (a row of Outbox.calls), as data: `why` prints it, the
    HTTP API serves it as JSON. Times are aware datetimes in the PBX's time zone."""
    data = json.loads(call["record"])
    tz = config.timezone_for(call["pbx"])
    try:
        record: CallRecord | None = CallRecord.from_dict(data)
    except ValueError:
        record = None  # stored by a version with other fields: shown, not re-evaluated
    start = record.start_time if record else None
    end = record.end_time if record else None
    handled = call["created_at"]
    rules_now = None
    if call["rule"] is None and record is not None and config.rules.rules:
        rules_now = _rules_now(config, record, tz, handled)
    messages = outbox.messages(call_key=call["call_key"])
    parts = outbox.parts(m["id"] for m in messages)
    return {
        "call_key": call["call_key"],
        "pbx": call["pbx"],
        "call_id": call["call_id"],
        "time_zone": tz.key,
        "status": data.get("status"),
        "direction": data.get("direction"),
        "caller": data.get("caller_number") or None,
        "dialled": data.get("dialled_number") or None,
        "backfilled": data.get("source") == "cdr",
        "start": start.astimezone(tz) if start else None,
        "end": end.astimezone(tz) if end else None,
        "handled": _moment(handled, tz),
        "rule": call["rule"],
        "decision": call["decision"],
        "rules_now": rules_now,
        "messages": [message_view(m, parts.get(m["id"], []), tz) for m in messages],
    }


def _rules_now(config: Config, record: CallRecord, tz: ZoneInfo, handled: float) -> dict[str, Any]:
    """Each rule's failed condition. The hot path stores no reasons (formatting them for
    every call costs more than matching), so the rules are asked again: today's rules,
    which may not be the ones that decided."""
    try:
        edited = os.stat(config.file).st_mtime
    except OSError:
        edited = None
    selection = config.rules.select(record, tz, explain=True)
    return {
        "config": config.file,
        "edited_after_call": _moment(edited, tz) if edited is not None and edited > handled else None,
        "skipped": [{"rule": name, "reason": reason} for name, reason in selection.skipped],
        "would_match": selection.rule.name if selection.rule is not None else None,
    }


def _moment(ts: float | None, tz: tzinfo) -> datetime | None:
    return datetime.fromtimestamp(ts, UTC).astimezone(tz) if ts else None


def message_view(m: dict[str, Any], parts: list[dict[str, Any]], tz: tzinfo) -> dict[str, Any]:
    """One message (a row of Outbox.messages) and its parts' receipts, as data."""
    waiting = m["state"] in (MessageState.QUEUED, MessageState.RETRYING)
    return {
        "id": m["id"],
        "key": m["key"],
        "call_key": m["call_key"] or None,
        "rule": m["rule"],
        "recipient": m["recipient_kind"],
        "to": m["destination"] or m["raw_number"] or None,
        "destination": m["destination"],  # E.164; None when the number itself was refused
        "sender": m["sender"],
        "transport": m.get("transport"),  # the transport that sent it, or last tried
        "text": m["text"],
        "encoding": m["encoding"],
        "segments": m["segments"],
        "state": m["state"],
        "reason": m["reason"],
        "attempts": m["attempts"],
        "created": _moment(m["created_at"], tz),
        "next_attempt": _moment(m["next_attempt_at"], tz) if waiting else None,
        "submitted": _moment(m["submitted_at"], tz),
        "final": _moment(m["final_at"], tz),
        "parts": [{"part": p["part"], "transport_id": p["transport_id"],
                   "receipt": None if p["state"] == MessageState.SUBMITTED else p["state"],
                   "error": p["error"], "updated": _moment(p["updated_at"], tz)} for p in parts],
    }


def _why_message(m: dict[str, Any], tz: ZoneInfo, out: TextIO) -> None:
    esc = escape_controls
    out.write(f"  {m['recipient']} {esc(m['to'] or '?')}: {esc(m['state'])}"
              + (f" ({esc(m['reason'])})" if m["reason"] else "") + "\n")
    via = f" via {esc(m['transport'])}" if m.get("transport") else ""  # the transport that last tried it
    out.write(f"    from {esc(m['sender'])}{via}, {m['segments']} segment(s) {m['encoding']}, "
              f"{m['attempts']} attempt(s)\n")
    for line in m["text"].splitlines() or [""]:
        out.write(f"    | {esc(line)}\n")
    times = [f"recorded {_when(m['created'], tz)}"]
    if m["next_attempt"]:
        times.append(f"next attempt {_when(m['next_attempt'], tz)}")
    if m["submitted"]:
        times.append(f"submitted {_when(m['submitted'], tz)}")
    if m["final"]:
        times.append(f"final {_when(m['final'], tz)}")
    out.write(f"    {', '.join(times)}\n")
    for p in m["parts"]:
        receipt = (f"receipt {esc(p['receipt'])}" + (f" ({esc(p['error'])})" if p["error"] else "")
                   + f" at {_when(p['updated'], tz)}") if p["receipt"] is not None else "no receipt yet"
        out.write(f"    part {p['part']} id {esc(p['transport_id'])}: {receipt}\n")


# `aftercalld status` exits with this when the daemon is not running (as LSB init scripts'
# `status` do), so that scripts and monitoring can tell it from a failure to look (1).
EXIT_NOT_RUNNING = 3
# The daemon rewrites status.json every STATUS_EVERY_SECONDS; missing three is a hung or dead daemon.
STALE_AFTER_INTERVALS = 3


def status(outbox: Outbox, config: Config, fmt: str, out: TextIO, clock: Clock = system_clock) -> int:
    """The outbox's counts and the running daemon's live status (status.json, which the
    daemon rewrites every few seconds). Exit 0 when the daemon runs, EXIT_NOT_RUNNING when not."""
    now = utc_now(clock).astimezone(config.timezone)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    sent_today, by_rule = outbox.submitted_counts_since(midnight)
    live, down = _live_status(config, now.timestamp())
    # A shared (PostgreSQL) outbox: every instance's heartbeat, wherever it runs.
    instances = _instances(outbox, now.timestamp()) if config.outbox_is_postgres else None
    if down is not None and instances and any(i["alive"] for i in instances):
        down = None  # not here, but the outbox is served
    info: dict[str, Any] = {
        "running": down is None,
        "not_running": down,  # why, when not running
        "daemon": live,  # as the daemon wrote it (UTC ISO times, epochs); kept when stale
        "outbox": shown(config.outbox_path),
        "queue_depth": outbox.queue_depth(),
        "states": outbox.counts_by_state(),
        "submitted_today": sent_today,
        "submitted_today_by_rule": by_rule,
        "last_call": _iso(outbox.last_call_time(), config) or None,
        "pbxs": [{"name": p.name, "type": p.type} for p in config.pbxs],
        "transport": config.transport.type,
        "transports": [{"name": t.label, "type": t.type} for t in config.all_transports],
        "routes": [r.name for r in config.routes],
    }
    if instances is not None:
        info["instances"] = instances
    code = 0 if down is None else EXIT_NOT_RUNNING
    if fmt == "json":
        json.dump(info, out, indent=1)
        out.write("\n")
        return code
    tz = config.timezone
    if instances is not None:
        _write_instances(out, instances, tz)
    elif down is not None:
        out.write(f"daemon: NOT RUNNING ({escape_controls(down)})\n")
    else:
        assert live is not None
        out.write(f"daemon: running, pid {live.get('pid')}, up since {_status_time(live.get('started'), tz)}; "
                  f"status of {_status_time(live.get('updated'), tz)}\n")
        out.write(f"  {live.get('submitted_since_start', 0)} submitted since start\n")
        restarts = {k: v for k, v in (live.get("task_restarts") or {}).items() if v}
        if restarts:
            out.write("  restarted: " + ", ".join(f"{escape_controls(k)} {v} time(s)" for k, v in restarts.items())
                      + "\n")
        for source in live.get("sources") or []:
            _block(out, "pbx", source, tz)
        if live.get("transports"):  # several, behind routes: one block each
            for transport in live["transports"]:
                _block(out, "transport", transport, tz)
        elif live.get("transport"):
            _block(out, "transport", live["transport"], tz)
    out.write(f"\noutbox {info['outbox']}\n")
    out.write(f"  {info['queue_depth']} waiting to be sent; {sent_today} submitted today"
              + (" (" + ", ".join(f"{escape_controls(k)} {v}" for k, v in sorted(by_rule.items())) + ")"
                 if by_rule else "") + "\n")
    out.write(f"  last call: {_when(outbox.last_call_time(), tz) if outbox.last_call_time() else 'never'}\n")
    out.write("  messages by state: " + (", ".join(f"{k} {v}" for k, v in sorted(info["states"].items()))
                                         or "none") + "\n")
    if down is not None:
        out.write(f"\nconfigured: transport {_configured_transports(config)}; PBXs: "
                  + (", ".join(f"{p.name} ({p.type})" for p in config.pbxs) or "none") + "\n")
    return code


# An instance whose heartbeat is older than this is listed as gone (it writes every 5 s).
INSTANCE_GONE_SECONDS = 30.0


def _instances(outbox: Any, now: float) -> list[dict[str, Any]]:
    rows = outbox.instances()
    for row in rows:
        row["alive"] = now - row["heartbeat_at"] <= INSTANCE_GONE_SECONDS
        row["heartbeat_age_seconds"] = round(now - row["heartbeat_at"], 1)
    return rows


def _write_instances(out: TextIO, instances: list[dict[str, Any]], tz: ZoneInfo) -> None:
    alive = sum(1 for i in instances if i["alive"])
    out.write(f"instances: {alive} running" + (f", {len(instances) - alive} gone" if alive < len(instances) else "")
              + "\n")
    for inst in instances:
        info = inst.get("info") or {}
        state = "running" if inst["alive"] else "GONE"
        out.write(f"\ninstance {escape_controls(inst['instance'])}: {state}, heartbeat "
                  f"{inst['heartbeat_age_seconds']:g}s ago ({_when(inst['heartbeat_at'], tz)}), "
                  f"pid {info.get('pid', '?')}, queue {info.get('queue_depth', '?')}, "
                  f"{info.get('submitted_since_start', 0)} submitted since start\n")
        if not inst["alive"]:
            continue
        for source in info.get("sources") or []:
            _block(out, "  pbx", source, tz)
        if info.get("transport"):
            _block(out, "  transport", info["transport"], tz)


def _configured_transports(config: Config) -> str:
    if len(config.all_transports) == 1:
        return config.transport.type
    return ", ".join(f"{t.label} ({t.type})" for t in config.all_transports)


# Fields of the daemon's status record that hold a time: epochs or UTC ISO strings.
_TIME_FIELDS = frozenset({"connected_since", "last_event", "started", "updated"})
# Shown in a block's first line, not again below it.
_HEADLINE_FIELDS = frozenset({"name", "type", "state", "address", "endpoint", "device", "connected_since"})


def _block(out: TextIO, kind: str, status: dict[str, Any], tz: ZoneInfo) -> None:
    """One PBX connection or transport: a headline, then one line per field that has a
    value; lists of records (an SMPP transport's sessions) one line each."""
    esc = escape_controls  # states carry peers' error texts
    where = status.get("address") or status.get("endpoint") or status.get("device")
    since = status.get("connected_since")
    binds = isinstance(status.get("configured"), int) and isinstance(status.get("bound"), int)  # SMPP
    out.write(f"\n{kind} {esc(status.get('name', '?'))}"
              + (f" ({esc(status['type'])})" if status.get("type") else "")
              + (f" at {esc(where)}" if where else "")
              + f": {esc(status.get('state', '?'))}"
              + (f" since {_status_time(since, tz)}" if since else "")
              + (f", {status['bound']} of {status['configured']} session(s) bound" if binds else "") + "\n")
    for key, value in status.items():
        if key in _HEADLINE_FIELDS or (binds and key in ("bound", "configured")) or value in (None, "", [], {}):
            continue
        label = key.replace("_", " ")
        if isinstance(value, list) and all(isinstance(v, dict) for v in value):
            for item in value:
                out.write(f"  {esc(_item_line(item, tz))}\n")
        else:
            out.write(f"  {label}: {esc(_status_value(key, value, tz))}\n")


def _item_line(item: dict[str, Any], tz: ZoneInfo) -> str:
    head = ""
    if "session" in item:
        head = f"session {item['session']}" + (f" {item['mode']}" if item.get("mode") else "")
    rest = [f"{k.replace('_', ' ')} {_status_value(k, v, tz)}" for k, v in item.items()
            if k not in ("session", "mode") and v not in (None, "", [], {})]
    return f"{head}: {', '.join(rest)}" if head else ", ".join(rest)


def _status_value(key: str, value: Any, tz: ZoneInfo) -> str:
    if key in _TIME_FIELDS:
        return _status_time(value, tz)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def _status_time(value: Any, tz: ZoneInfo) -> str:
    """A time from the status record (epoch or ISO) in the config's time zone, named."""
    if value is None or value == "":
        return NO_DATA
    try:
        if isinstance(value, int | float):
            return _when(float(value), tz)
        moment = datetime.fromisoformat(str(value))
        return _when(moment if moment.tzinfo else moment.replace(tzinfo=UTC), tz)
    except (ValueError, OverflowError, OSError):
        return str(value)


def _live_status(config: Config, now: float) -> tuple[dict[str, Any] | None, str | None]:
    """The daemon's status record, and why it is not running (None when it is)."""
    from .daemon import STATUS_EVERY_SECONDS, status_path

    path = status_path(config)
    try:
        live = json.loads(path.read_text())
        if not isinstance(live, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        return None, f"no {path}: it was not started, or stopped"
    except (OSError, ValueError) as exc:
        return None, f"cannot read {path}: {exc}"
    try:
        pid = int(live["pid"])
        if pid <= 0:  # kill(0 or -n, 0) would ask about a whole process group
            raise ValueError(pid)
        os.kill(pid, 0)
    except (KeyError, TypeError, ValueError):
        return live, f"{path} names no process"
    except ProcessLookupError:
        return live, f"process {live['pid']} of {path} is gone: it stopped without cleaning up"
    except PermissionError:
        pass  # it exists, as another user (the service's)
    except OSError as exc:
        return live, f"cannot check process {live['pid']}: {exc.strerror}"
    try:
        updated = datetime.fromisoformat(str(live["updated"])).timestamp()
    except (KeyError, ValueError):
        return live, f"{path} has no time of update"
    age = now - updated
    if age > STALE_AFTER_INTERVALS * STATUS_EVERY_SECONDS:
        return live, (f"its status was last written {_status_time(live['updated'], config.timezone)}, "
                      f"{age:.0f} s ago: it is hung, or stopped and its pid reused")
    return live, None

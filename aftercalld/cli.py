"""`aftercalld` and its subcommands. Exit codes: 0 ok, 1 runtime failure, 2 bad config or usage."""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

from . import __version__
from .clock import Clock, system_clock, utc_now
from .configreader import ConfigError
from .ownership import OwnershipError
from .store import Outbox, StoreError
from .store.location import shown

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2

SAMPLES = Path(__file__).parent / "samples"


def _default_config() -> str:
    return os.environ.get("AFTERCALLD_CONFIG", "/etc/aftercalld/aftercalld.toml")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aftercalld",
        description="After-call SMS for Asterisk and FreeSWITCH: classify finished calls, pick a rule, send a text.",
    )
    parser.add_argument("--version", action="version", version=f"aftercalld {__version__}")
    # -c and -v go before or after the command: `aftercalld -c f.toml status` and
    # `aftercalld status -c f.toml` both work. The subcommands' copies default to SUPPRESS
    # so that they do not overwrite a value given before the command.
    config_help = "config file (default: $AFTERCALLD_CONFIG or /etc/aftercalld/aftercalld.toml)"
    parser.add_argument("-c", "--config", default=None, metavar="FILE", help=config_help)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help_: str, *, config_help: str = config_help) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("-c", "--config", default=argparse.SUPPRESS, metavar="FILE", help=config_help)
        p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                       help="more log output (-vv: debug)")
        return p

    p = add("check-config", "Validate the config file and exit (0 ok, 2 error).")
    p.add_argument("file", nargs="?", default=None, help="config file (default: as for --config)")

    p = add("test-rule", "Show which rule a call would fire and the messages it would render.")
    p.add_argument("--call", required=True, help="a CallRecord as a JSON file (see README)")

    p = add("replay", "Feed a recorded trace through the whole pipeline, sending nothing.")
    p.add_argument("trace", nargs="+", help=".ami (Asterisk), .esl (FreeSWITCH) or .json/.jsonl (CallRecords)")
    p.add_argument("--pbx", help="which [[pbx]] of the config the trace came from (its time zone and variables)")
    p.add_argument("--format", choices=("text", "json", "jsonl"), default="text",
                   help="json: one array of the finished calls; jsonl: one object per line (for jq); "
                        "both can be replayed again")
    p.add_argument("--outbox", help="keep the replay's outbox in this SQLite file (default: a temporary one)")

    p = add("demo", "Replay the bundled sample calls through the example rules into the log transport.",
            config_help="try your own config's rules on the sample calls (default: the bundled demo rules)")
    p.add_argument("--format", choices=("text", "json", "jsonl"), default="text")

    p = add("run", "Run the daemon: connect to the PBXs, queue and send texts.")

    p = add("optout", "Manage the opt-out list (numbers that are never texted).")
    p.add_argument("action", choices=("add", "remove", "list", "import"))
    p.add_argument("entries", nargs="*", help="numbers (add/remove) or one file with a number per line (import)")

    p = add("dnd", "Manage the do-not-disturb list: numbers and prefixes (+4490*) never texted.")
    p.add_argument("action", choices=("add", "remove", "list", "import"))
    p.add_argument("entries", nargs="*", help="numbers or prefixes ending in * (add/remove), or one file (import)")

    p = add("status", "Is the daemon running, its PBX and transport connections, and what the outbox holds; "
                      "on a PostgreSQL outbox, every instance with its heartbeat "
                      "(exit 0 running, 3 not running, 1 no outbox yet).")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="json: the daemon's status record as it wrote it, and the outbox's counts, for scripts")

    p = add("send-test", "Send one real message through the configured transport and show the result.")
    p.add_argument("number", help="destination number")
    p.add_argument("--rule", help="render this rule's caller template for a sample call (default: a fixed test text)")
    p.add_argument("--text", help="the text to send (default: a test text)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the submit result")
    p.add_argument("--sender", help="the sender id to send from (default: the rule's, or 'aftercalld')")
    p.add_argument("--force", action="store_true",
                   help="send even to a number on the opt-out or do-not-disturb list")
    p.add_argument("--transport", metavar="NAME",
                   help="send through this [[transport]] (default: the first of the number's route)")

    p = add("prune", "Delete calls, their messages and receipts older than a number of days from the outbox.")
    p.add_argument("--older-than", type=float, metavar="DAYS",
                   help="days to keep (default: [general] keep_days); the daemon may keep running")

    p = add("report", "Messages and per-rule outcomes from the outbox.")
    p.add_argument("--since", help="ISO date/time (PBX time zone unless it has an offset), today or yesterday")
    p.add_argument("--until", help="ISO date/time, today or yesterday; exclusive")
    p.add_argument("--rule", help="only this rule's messages (a rule of the config, or one the outbox has)")
    p.add_argument("--status", help="only messages in this state: queued, sending, retrying, submitted, delivered, "
                                     "undeliverable, expired, rejected, failed or suppressed")
    p.add_argument("--replies", action="store_true",
                   help="list the replies customers sent in the span (number, time, the call and message they "
                        "answer, keyword, text) instead of the messages")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")

    p = add("why", "Explain what happened after a call: by call id or caller number.")
    p.add_argument("what", help="a call id (e.g. 1796012880.0) or the caller's number")

    p = add("migrate", "Copy the SQLite outbox into a PostgreSQL one (safe to run again; stop the daemon first).")
    p.add_argument("--to", required=True, metavar="URL",
                   help="the PostgreSQL outbox: a libpq URL or connection string, e.g. "
                        "postgresql://aftercalld@db.example.net/aftercalld (password from ~/.pgpass or PGPASSFILE)")
    p.add_argument("--from", dest="source", metavar="FILE",
                   help="the SQLite outbox to copy (default: [general] outbox of the config)")

    p = add("files", "List, print or install what the package ships: the example config and the systemd files.",
            config_help="not used (accepted like every command's)")
    p.add_argument("names", nargs="*", metavar="NAME",
                   help="print this file (e.g. aftercalld.example.toml, aftercalld.service); with --install: these")
    p.add_argument("--install", action="store_true",
                   help="copy the files to their places (default: config, unit, sysusers, tmpfiles); "
                        "an existing config is never replaced")
    p.add_argument("--root", default="/", help="install under this directory instead of / (for packagers)")
    p.add_argument("--force", action="store_true", help="with --install: replace existing unit files")

    add("man", "Print the man page (roff), e.g. aftercalld man > /usr/local/share/man/man1/aftercalld.1",
        config_help="not used (accepted like every command's)")
    p = add("completion", "Print shell completion, e.g. aftercalld completion bash > "
                          "/etc/bash_completion.d/aftercalld", config_help="not used (accepted like every command's)")
    p.add_argument("shell", choices=("bash", "zsh"))
    return parser


def main(argv: Sequence[str] | None = None, *, clock: Clock = system_clock) -> int:
    """`clock` is the one clock the commands read dates from (tests pass a fixed one)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.clock = clock
    if not args.command:
        parser.print_help()
        return EXIT_CONFIG
    args.config_given = args.config is not None
    if args.config is None:
        args.config = _default_config()
    _setup_logging(args.verbose, args.command)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        _print_config_errors(exc)
        return EXIT_CONFIG
    except (StoreError, OwnershipError) as exc:
        print(f"aftercalld: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


def _setup_logging(verbose: int, command: str) -> None:
    from .logsetup import setup_logging

    # Interactive commands print their results; their logs stay quiet unless asked.
    quiet = command not in ("run",)
    level = logging.DEBUG if verbose >= 2 else logging.INFO if verbose == 1 or not quiet else logging.WARNING
    setup_logging(level)


def _load(path: str):
    from .config import load

    return load(path)


def _print_config_errors(exc: ConfigError) -> None:
    """Every error, one `aftercalld: config error: file: key.path: reason` line each."""
    for line in str(exc).splitlines():
        print(f"aftercalld: config error: {line}", file=sys.stderr)


def cmd_check_config(args) -> int:
    path = args.file or args.config
    try:
        config = _load(path)
    except ConfigError as exc:
        _print_config_errors(exc)
        return EXIT_CONFIG
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    warned = f", {len(config.warnings)} warning(s)" if config.warnings else ""
    if len(config.all_transports) == 1:
        transports = f"transport {config.transport.type}"
    else:
        transports = "transports " + ", ".join(f"{t.label} ({t.type})" for t in config.all_transports)
    routes = f", {len(config.routes)} route(s)" if config.routes else ""
    print(f"{path}: ok ({len(config.pbxs)} PBX(s), {transports}{routes}, "
          f"{len(config.rules.rules)} rule(s){warned})")
    return EXIT_OK


def cmd_test_rule(args) -> int:
    from .replay import call_from_json, replay_sync

    config = _load(args.config)
    try:
        record = call_from_json(Path(args.call).read_text(encoding="utf-8"))
    except OSError as exc:
        print(f"aftercalld: {args.call}: {exc.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    except ValueError as exc:
        print(f"aftercalld: {args.call}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    from .textsafety import escape_controls

    # The whole pipeline, as for replay: rules, then the daemon's policy (opt-out and DND
    # lists, quiet hours, quotas) at the time the call ended, into a throwaway outbox.
    (result,) = replay_sync([record], config)
    sel = result.decision.selection
    for name, why in sel.skipped:
        print(f"  skipped {name!r}: {escape_controls(why)}")
    if sel.rule is None:
        print(f"no rule fires: {sel.reason}")
        return EXIT_OK
    print(f"rule {sel.rule.name!r} fires")
    for m in result.messages:
        where = escape_controls(m['destination'] or m['raw_number'] or '(none)')
        print(f"\n  to {m['recipient_kind']} {where} from {m['sender']}: {_would(m)}")
        print(f"  encoding {m['encoding']}, {m['segments']} segment(s), {len(m['text'])} characters")
        for line in m["text"].splitlines() or [""]:
            print(f"  | {line}")
    return EXIT_OK


def _would(message: dict) -> str:
    """What the daemon would do with a message, from its state after a replay."""
    state, reason = message["state"], message["reason"]
    if state == "submitted":
        return "would be sent"
    if state == "suppressed":
        return f"SUPPRESSED ({reason})"
    if state == "queued" and reason:
        return f"HELD BACK ({reason}): would be sent when that ends"
    return f"would end {state}" + (f" ({reason})" if reason else "")


def cmd_replay(args) -> int:
    from .replay import TraceError, read_calls, replay_sync

    # Without -c, a machine with no config yet still replays, with the demo rules.
    config = _load(args.config) if args.config_given or Path(args.config).exists() else _demo_config()
    try:
        records = [r for trace in args.trace for r in read_calls(trace, config, args.pbx)]
    except TraceError as exc:
        print(f"aftercalld: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except UnicodeDecodeError as exc:
        print(f"aftercalld: a trace is not UTF-8 text (byte {exc.start}): {', '.join(args.trace)}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"aftercalld: {exc.filename or ', '.join(args.trace)}: {exc.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    except RecursionError:
        print(f"aftercalld: a trace is nested too deeply to read: {', '.join(args.trace)}", file=sys.stderr)
        return EXIT_CONFIG
    results = replay_sync(records, config, args.outbox)
    _print_results(results, args.format)
    return EXIT_OK


def cmd_demo(args) -> int:
    from .model import CallRecord
    from .replay import read_calls, replay_sync

    config = _load(args.config) if args.config_given else _demo_config()
    traces = sorted(p for p in (SAMPLES / "traces").iterdir() if p.suffix in (".ami", ".esl", ".jsonl"))
    records: list[CallRecord] = []
    for trace in traces:
        try:
            records.extend(read_calls(trace, config))
        except ImportError:
            continue  # a tracker not installed in this build
    results = replay_sync(records, config)
    if args.format == "text":
        print(f"aftercalld demo: {len(traces)} recorded trace(s) from {SAMPLES / 'traces'}, "
              f"rules from {config.file}, transport: log (nothing is sent)\n")
    _print_results(results, args.format)
    return EXIT_OK


def _demo_config():
    from .config import load

    return load(SAMPLES / "demo.toml")


def _print_results(results, fmt: str) -> None:
    if fmt == "json":
        print(json.dumps([r.to_json() for r in results], ensure_ascii=False, indent=1))
        return
    if fmt == "jsonl":
        for r in results:
            print(json.dumps(r.to_json(), ensure_ascii=False))
        return
    from .textsafety import escape_controls as esc

    for r in results:
        rec = r.decision.record
        sel = r.decision.selection
        print(esc(f"call {rec.call_id} [{rec.pbx}] {rec.status} {rec.direction} "
                  f"from {rec.caller_number or '?'} to {rec.dialled_number or '?'}"
                  + (f", agent {rec.agent_extension}" if rec.agent_extension else "")
                  + (f", dept {rec.department}" if rec.department else "")
                  + f", talk {rec.talk_seconds:g}s"))
        if r.decision.duplicate:
            print("  already handled: nothing queued")
        elif sel.rule is None:
            print("  no rule matched")
        else:
            print(f"  rule: {sel.rule.name}")
        for m in r.messages:
            state = m["state"] + (f" ({m['reason']})" if m["reason"] else "")
            print(f"  → {m['recipient_kind']} {esc(m['destination'] or m['raw_number'] or '-')}: {esc(state)}, "
                  f"{m['encoding']}, {m['segments']} segment(s)")
            print(f"    \"{m['text']}\"")
        print()


def cmd_run(args) -> int:
    from .daemon import run
    from .ownership import refuse_daemon_as_root

    config = _load(args.config)
    if config.outbox_is_postgres:
        from .logsetup import show_instance
        show_instance(config.instance)
    else:  # a PostgreSQL outbox leaves no file behind to chown
        refuse_daemon_as_root(config.outbox_path)
    if not args.verbose:
        logging.getLogger().setLevel(config.log_level.upper())
    # What the daemon writes (status.json, the outbox) holds phone numbers: never
    # world-readable, even when started outside the unit (which sets UMask=0027).
    os.umask(os.umask(0o027) | 0o027)
    return asyncio.run(run(config, args.config))


@contextlib.contextmanager
def _open_outbox(config, *, write: bool) -> Iterator[Outbox]:
    """The configured outbox, read-only unless `write`; files created as root go back to
    the state directory's owner (see ownership.py)."""
    from .ownership import give_back
    from .store import Outbox

    if config.outbox_is_postgres:
        from .store.blocking import open_configured
        shared = open_configured(config.outbox_path, config.outbox_password_file, config.instance)
        try:
            yield shared  # type: ignore[misc]  # the same methods, run to their end
        finally:
            shared.close()
        return
    outbox = Outbox.open(config.outbox_path, synchronous=config.sqlite_synchronous) if write \
        else Outbox.open_readonly(config.outbox_path)
    try:
        give_back(config.outbox_path)  # at once: the daemon may want them while we work
        yield outbox
    finally:
        outbox.close()
        give_back(config.outbox_path)


def _read_entries(entries: list[str], action: str) -> list[str]:
    """The command-line entries, or for import the first column of each line of one file
    (a CSV export from an operator's DND register works as it is; # starts a comment)."""
    if action != "import":
        return list(entries)
    if len(entries) != 1:
        raise SystemExit("aftercalld: import takes one file")
    lines = Path(entries[0]).read_text(encoding="utf-8").splitlines()
    return [e for e in (line.split("#")[0].strip().split(",")[0].strip() for line in lines) if e]


def _manage_list(args, *, kind: str, normalise, add, remove, listing) -> int:
    """add/remove/list/import for the opt-out and DND lists: same rules, different table."""
    if args.action == "list":
        for entry, source, _ in listing():
            print(f"{entry}\t{source}")
        return EXIT_OK
    if not args.entries:
        print(f"aftercalld: {args.action} what? Give one or more {kind}s"
              + (" or one file" if args.action == "import" else ""), file=sys.stderr)
        return EXIT_CONFIG
    good: list[str] = []
    bad: list[str] = []
    for raw in _read_entries(args.entries, args.action):
        entry = normalise(raw)
        (good if entry else bad).append(entry or raw)
    for b in bad:
        print(f"aftercalld: not a {kind}, skipped: {b!r}", file=sys.stderr)
    if args.action == "remove":
        removed = remove(good)
        print(f"removed {len(removed)} entr(ies)")
        not_listed = [g for g in dict.fromkeys(good) if g not in removed]
        if not_listed:
            print(f"not listed, nothing to remove: {', '.join(not_listed)}")
    else:
        source = "cli" if args.action == "add" else f"import {args.entries[0]}"
        changed = add(good, source, system_clock())
        print(f"added {changed} entr(ies) ({len(good) - changed} already listed)")
    return EXIT_FAILURE if bad and not good else EXIT_OK


def cmd_optout(args) -> int:
    from .phone import normalise_for_list

    config = _load(args.config)
    with _open_outbox(config, write=args.action != "list") as outbox:
        return _manage_list(args, kind="phone number",
                            normalise=lambda raw: normalise_for_list(raw, config.phone.default_region),
                            add=outbox.optout_add, remove=outbox.optout_remove, listing=outbox.optout_list)


def cmd_dnd(args) -> int:
    from .phone import normalise_for_list

    config = _load(args.config)

    def normalise(raw: str) -> str | None:
        if raw.endswith("*"):  # a prefix: digits, kept as written after the +
            digits = raw[:-1].replace(" ", "").lstrip("+")
            return f"+{digits}*" if digits.isascii() and digits.isdigit() else None
        if "*" in raw:  # '+1415555*0' is neither a number nor a prefix
            return None
        return normalise_for_list(raw, config.phone.default_region)

    with _open_outbox(config, write=args.action != "list") as outbox:
        return _manage_list(args, kind="number or prefix", normalise=normalise,
                            add=outbox.dnd_add, remove=outbox.dnd_remove, listing=outbox.dnd_list)


def _on_outbox(args, view) -> int:
    """Run a read-only view (`report`, `why`, `status`) on the configured outbox."""
    config = _load(args.config)
    with _open_outbox(config, write=False) as outbox:
        return view(outbox, config)


def cmd_status(args) -> int:
    from .report import status

    return _on_outbox(args, lambda outbox, config: status(outbox, config, args.format, sys.stdout, args.clock))


def cmd_send_test(args) -> int:
    from .sendtest import send_test

    config = _load(args.config)
    return asyncio.run(send_test(config, args.number, rule_name=args.rule, text=args.text, timeout=args.timeout,
                                 sender=args.sender, force=args.force, transport_name=args.transport))


def cmd_prune(args) -> int:
    from .retention import MIN_KEEP_DAYS, prune

    config = _load(args.config)
    days = args.older_than if args.older_than is not None else config.keep_days
    if args.older_than is None and not days:
        print(f"aftercalld: say how many days to keep: --older-than DAYS, or keep_days in [general] of {config.file}",
              file=sys.stderr)
        return EXIT_CONFIG
    if days < MIN_KEEP_DAYS:
        print(f"aftercalld: --older-than {days:g} is less than {MIN_KEEP_DAYS} days: delivery receipts can arrive "
              f"days after the text", file=sys.stderr)
        return EXIT_CONFIG
    with _open_outbox(config, write=True) as outbox:
        run = getattr(outbox, "run", asyncio.run)  # PostgreSQL: on the loop its connection lives on
        pruned = run(prune(getattr(outbox, "store", outbox), days, system_clock()))
    print(f"removed {pruned} older than {days:g} days from {shown(config.outbox_path)}")
    if pruned.kept:
        print(f"kept {pruned.kept} call(s) older than that with a message still to send")
    return EXIT_OK


def cmd_report(args) -> int:
    from .report import ReportError, report

    try:
        return _on_outbox(args, lambda outbox, config: report(outbox, config, args, sys.stdout, args.clock))
    except ReportError as exc:
        print(f"aftercalld: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def cmd_files(args) -> int:
    from .files import SHIPPED, find, install, read_text

    if args.install:
        try:
            lines = install(args.names, Path(args.root), force=args.force)
        except (LookupError, OSError) as exc:
            print(f"aftercalld: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        print("\n".join(lines))
        return EXIT_OK
    if not args.names:
        width = max(len(s.name) for s in SHIPPED)
        for s in SHIPPED:
            print(f"{s.name:<{width}}  {s.destination or '(example)':<52}  {s.about}")
        return EXIT_OK
    for name in args.names:
        shipped = find(name)
        if shipped is None:
            print(f"aftercalld: no shipped file named {name!r}; `aftercalld files` lists them", file=sys.stderr)
            return EXIT_CONFIG
        sys.stdout.write(read_text(shipped))
    return EXIT_OK


def cmd_man(args) -> int:
    from .clidocs import man_page

    # Reproducible builds set SOURCE_DATE_EPOCH; the page's date is otherwise today's.
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    today = (datetime.fromtimestamp(int(epoch), UTC) if epoch and epoch.isdigit() else utc_now(system_clock)).date()
    sys.stdout.write(man_page(build_parser(), today))
    return EXIT_OK


def cmd_completion(args) -> int:
    from .clidocs import bash_completion, zsh_completion

    sys.stdout.write((bash_completion if args.shell == "bash" else zsh_completion)(build_parser()))
    return EXIT_OK


def cmd_why(args) -> int:
    from .report import why

    return _on_outbox(args, lambda outbox, config: why(outbox, config, args.what, sys.stdout))


def cmd_migrate(args) -> int:
    from .store.migrate import copy_outbox
    from .store.postgres import shown_dsn

    source = args.source or str(_load(args.config).outbox_path)
    target = shown_dsn(args.to)
    print(f"copying {source} to {target}")
    copied = asyncio.run(copy_outbox(source, args.to))
    print(f"copied {copied}")
    print("rows already there were left as they were; running this again copies only what is missing")
    return EXIT_OK


# Each subcommand of build_parser() and the function that runs it.
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "check-config": cmd_check_config,
    "test-rule": cmd_test_rule,
    "replay": cmd_replay,
    "demo": cmd_demo,
    "run": cmd_run,
    "optout": cmd_optout,
    "dnd": cmd_dnd,
    "status": cmd_status,
    "send-test": cmd_send_test,
    "prune": cmd_prune,
    "report": cmd_report,
    "why": cmd_why,
    "files": cmd_files,
    "migrate": cmd_migrate,
    "man": cmd_man,
    "completion": cmd_completion,
}


if __name__ == "__main__":
    sys.exit(main())

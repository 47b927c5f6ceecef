"""Load /etc/aftercalld/aftercalld.toml into typed objects, or fail naming file, key and why."""
from __future__ import annotations

import functools
import importlib
import json
import logging
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import time
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers

from .api.config import ApiConfig, parse_api
from .cdr.config import parse_backfill_keys
from .configreader import ConfigError, DependsOnFailedPart, Problems, Section, format_problem
from .model import CallStatus, Direction, RecipientKind
from .pbxconfig import PBX_TYPES, PbxConfig
from .phone import DEFAULT_CACHE_SIZE, PhoneRules
from .policy import PolicyConfig, QuietAction, RulePolicy
from .replyconfig import RepliesConfig, parse_replies
from .retention import MIN_KEEP_DAYS
from .routeconfig import Route, parse_routes
from .rules.encoding import DEFAULT_PROFILE, SegmentingProfile, segment
from .rules.engine import Conditions, RecipientSpec, Rule, RuleSet, TimeWindow
from .rules.render import AgentEntry, RenderContext
from .rules.templates import Template, TemplateError, known_placeholders, parse_template
from .store.location import dsn_problem, has_password, is_postgres
from .webhooks.config import WebhookEndpoint, parse_webhooks

DEFAULT_PATH = "/etc/aftercalld/aftercalld.toml"
TRANSPORT_TYPES = ("log", "smpp", "modem")
DEFAULT_FAILOVER_AFTER = 30.0
RECIPIENT_CHOICES = ("caller", "agent", "both", "fixed")
_SENDER_ALNUM = re.compile(r"[A-Za-z0-9 ._&-]{1,11}")
_SENDER_NUMBER = re.compile(r"\+?[0-9]{1,15}")
T = TypeVar("T")
F = TypeVar("F")


def sender_problem(sender: str) -> str | None:
    """Why a sender id cannot be used, or None when it can."""
    if _SENDER_NUMBER.fullmatch(sender) or _SENDER_ALNUM.fullmatch(sender):
        return None
    return f'"{sender}" is neither a phone number nor an alphanumeric sender id of at most 11 characters'


@dataclass(frozen=True)
class TransportConfig:
    type: str
    settings: Any = None  # the transport package's own settings object
    name: str = ""  # "" for the single [transport] table: it is named after its type
    # Routes pass its texts to the next transport once it has had no bind this long.
    failover_after: float = DEFAULT_FAILOVER_AFTER

    @property
    def label(self) -> str:
        return self.name or self.type

    @property
    def segmenting(self) -> SegmentingProfile:
        """How this transport encodes and splits texts (SMPP settings say; a modem and the
        log transport send GSM 7-bit with an 8-bit-reference UDH)."""
        return getattr(self.settings, "segmenting", DEFAULT_PROFILE)


@dataclass(frozen=True)
class DispatchConfig:
    ttl_seconds: float = 3600.0  # give up on transient failures after this long
    retry_initial_seconds: float = 5.0
    retry_max_seconds: float = 300.0
    batch_size: int = 500  # messages claimed from the outbox per turn
    drain_timeout_seconds: float = 10.0


@dataclass(frozen=True)
class OptOutConfig:
    stop_keywords: frozenset[str] = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT"})
    start_keywords: frozenset[str] = frozenset({"START", "UNSTOP", "SUBSCRIBE", "OPTIN"})
    help_keywords: frozenset[str] = frozenset({"HELP", "INFO"})
    help_text: str = ""  # the auto-answer to a help word; "" answers nothing


@dataclass(frozen=True)
class Config:
    file: str
    timezone: ZoneInfo
    outbox_path: str
    sqlite_synchronous: str
    keep_days: int  # 0: keep every call
    phone: PhoneRules
    render: RenderContext
    pbxs: tuple[PbxConfig, ...]
    transport: TransportConfig
    dispatch: DispatchConfig
    optout: OptOutConfig
    rules: RuleSet
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    metrics_listen: str | None = None  # "127.0.0.1:9469"
    # Every transport, `transport` first; empty when built without a file (one transport).
    transports: tuple[TransportConfig, ...] = ()
    routes: tuple[Route, ...] = ()
    log_level: str = "info"
    unwritten_calls_max: int = 20_000  # finished calls held in memory while the outbox refuses writes
    disk_reserve_mb: float = 8.0  # held next to the outbox, released when a full disk blocks a start or stop
    sqlite_cache_mib: int = 32  # SQLite page cache of the outbox connection
    # This daemon's name among those sharing a PostgreSQL outbox: in logs, status and rows.
    instance: str = ""
    lease_seconds: float = 60.0  # a claimed message is another instance's to send after this
    outbox_password_file: str = ""  # the PostgreSQL password, never in the config itself
    state_dir: str = "/var/lib/aftercalld"  # status.json with a PostgreSQL outbox
    replies: RepliesConfig = field(default_factory=RepliesConfig)
    webhooks: tuple[WebhookEndpoint, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)
    api: ApiConfig | None = None  # [api]: None while the HTTP API is off
    # `file: key.path: reason` for what is legal but surely not meant (check-config prints
    # them, the daemon logs them at start and reload).
    warnings: tuple[str, ...] = ()

    @property
    def outbox_is_postgres(self) -> bool:
        return is_postgres(self.outbox_path)

    @property
    def all_transports(self) -> tuple[TransportConfig, ...]:
        return self.transports or (self.transport,)

    def timezone_for(self, pbx_name: str) -> ZoneInfo:
        for pbx in self.pbxs:
            if pbx.name == pbx_name:
                return pbx.timezone
        return self.timezone


def load(path: str | Path) -> Config:
    path = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(path, "", "file not found") from None
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(path, "", "not UTF-8 text") from None
    return loads(text, path)


def loads(text: str, file: str = "<config>") -> Config:
    """A config from TOML text; `file` names it in errors."""
    path = file
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "", f"TOML syntax error: {exc}") from None
    except ValueError as exc:
        # tomllib lets int()'s digit limit through (an integer of more than 4,300 digits).
        raise ConfigError(path, _long_integer_key(text), f"not a usable number: {exc}") from None
    except RecursionError:
        raise ConfigError(path, "", "TOML nested too deeply") from None
    return parse(data, path)


_TABLE_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?")
_LONG_INTEGER = re.compile(r"^\s*([A-Za-z0-9_.\-\"' ]+?)\s*=\s*[+-]?[0-9_]{4000,}")


def _long_integer_key(text: str) -> str:
    """The key path of the first overlong integer, for the error (tomllib does not say)."""
    table = ""
    for line in text.splitlines():
        header = _TABLE_HEADER.match(line)
        if header:
            table = header.group(1)
            continue
        match = _LONG_INTEGER.match(line)
        if match:
            key = match.group(1).strip()
            return f"{table}.{key}" if table else key
    return ""


def parse(data: dict[str, Any], file: str = "<config>") -> Config:
    """Every independent error is collected (one ConfigError lists them all); a part that
    failed is left out of the checks that depend on it, so it causes no follow-on errors."""
    problems = Problems()
    root = Section(data, "", file, problems)
    general = problems.attempt(lambda: _general(root), None)
    tz = general.timezone if general else ZoneInfo("UTC")

    constants: dict[str, str] = problems.attempt(lambda: root.str_map("variables", {}), {})
    agents = problems.attempt(lambda: _agents(root), {})
    pbx_tables = problems.attempt(lambda: root.sections("pbx"), [])
    pbx_seen: set[str] = set()
    parsed = [problems.attempt(functools.partial(_pbx, sec, tz, pbx_seen), None) for sec in pbx_tables]
    pbxs = tuple(p for p in parsed if p is not None)
    if len(pbxs) < len(pbx_tables):
        # A [[pbx]] that failed still declares its variables as far as they can be read,
        # and its name is unknown: templates and rules using them must not fail because of it.
        pbx_names: set[str] | None = None
        channel_vars = sorted({v for sec in pbx_tables for v in _declared_list(sec.data.get("variables"))})
    else:
        pbx_names = {p.name for p in pbxs}
        channel_vars = sorted({v for p in pbxs for v in p.variables})
    transports = problems.attempt(lambda: _transports(root), None)
    transport = transports[0] if transports else None
    dispatch = problems.attempt(lambda: _dispatch(root), DispatchConfig())
    optout = problems.attempt(lambda: _optout(root), OptOutConfig())

    known = known_placeholders(channel_vars, constants)
    templates = _templates(root, known, problems)
    rule_policies: dict[str, RulePolicy] = {}
    rules = _rules(root, templates, known, pbx_names, rule_policies, problems)
    if pbxs and pbx_names is not None:
        problems.attempt(lambda: _check_rule_variables(root, rules, set(channel_vars)), None)
    policy = problems.attempt(lambda: _policy(root, rule_policies), PolicyConfig())
    rule_tables = root.data.get("rules", [])
    every_rule_read = isinstance(rule_tables, list) and len(rules) == len(rule_tables)
    routes = problems.attempt(lambda: parse_routes(
        root, [t.label for t in transports] if transports else None,
        [r.name for r in rules] if every_rule_read else None), ())
    metrics_listen = problems.attempt(lambda: _metrics(root), None)
    webhooks = problems.attempt(lambda: parse_webhooks(root), None)
    replies = problems.attempt(lambda: parse_replies(
        root, optout, {w.name for w in webhooks} if webhooks is not None else None), RepliesConfig())
    api = problems.attempt(lambda: parse_api(root), None)
    root.done()
    problems.raise_if_any()
    assert general is not None and transport is not None  # else raise_if_any raised
    config = Config(
        file=file,
        timezone=tz,
        outbox_path=general.outbox_path,
        sqlite_synchronous=general.synchronous,
        keep_days=general.keep_days,
        phone=general.phone,
        render=RenderContext(general.phone, constants, agents, general.max_value_length, transport.segmenting),
        pbxs=pbxs,
        transport=transport,
        dispatch=dispatch,
        optout=optout,
        rules=RuleSet(rules),
        policy=policy,
        metrics_listen=metrics_listen,
        transports=transports or (),
        routes=routes,
        log_level=general.log_level,
        unwritten_calls_max=general.unwritten_calls_max,
        disk_reserve_mb=general.disk_reserve_mb,
        sqlite_cache_mib=general.sqlite_cache_mib,
        instance=general.instance,
        lease_seconds=general.lease_seconds,
        outbox_password_file=general.outbox_password_file,
        state_dir=general.state_dir,
        replies=replies,
        webhooks=webhooks or (),
        api=api,
    )
    return replace(config, warnings=config_warnings(config, set(templates)))


@dataclass(frozen=True)
class _General:
    timezone: ZoneInfo
    phone: PhoneRules
    outbox_path: str
    synchronous: str
    keep_days: int
    log_level: str
    max_value_length: int
    unwritten_calls_max: int
    disk_reserve_mb: float
    sqlite_cache_mib: int
    instance: str
    lease_seconds: float
    outbox_password_file: str
    state_dir: str


def _general(root: Section) -> _General:
    general = root.section("general")
    tz = _zone(general, "timezone", "UTC")
    region = general.str("default_region", pattern=r"[A-Z]{2}")
    if region not in phonenumbers.SUPPORTED_REGIONS:
        general.report("default_region",
                       f'"{region}" is not a region libphonenumber knows (ISO 3166 code, e.g. "GB")')
    allowed = general.str_list("allowed_countries", [region])
    for code in allowed:
        if code != "*" and code not in phonenumbers.SUPPORTED_REGIONS:
            general.report("allowed_countries", f'"{code}" is not an ISO 3166 region code')
    phone = PhoneRules(
        default_region=region,
        max_extension_digits=general.int("max_extension_digits", 6, min=1, max=8),
        allowed_regions=frozenset(allowed),
        allow_landlines=general.bool("allow_landlines", False),
        cache_size=general.int("phone_cache_size", DEFAULT_CACHE_SIZE, min=0, max=1_000_000),
    )
    outbox_path = _outbox(general)
    instance = general.str("instance", socket.gethostname() or "aftercalld", pattern=r"[A-Za-z0-9._@:-]{1,64}")
    lease_seconds = general.float("lease_seconds", 60.0, min=5, max=3600)
    password_file = general.str("outbox_password_file", "")
    state_dir = general.str("state_dir", "/var/lib/aftercalld", nonempty=True)
    if password_file:
        if not is_postgres(outbox_path):
            general.report("outbox_password_file", "is for a PostgreSQL outbox; [general] outbox is an SQLite file")
        elif not Path(password_file).is_file():
            general.report("outbox_password_file", f"{password_file}: no such file")
        elif has_password(outbox_path):
            general.report("outbox_password_file", "[general] outbox holds a password already: keep it in one place")
    synchronous = general.str("sqlite_synchronous", "normal", choices=("normal", "full"))
    sqlite_cache_mib = general.int("sqlite_cache_mib", 32, min=1, max=4096)
    keep_days = general.int("keep_days", 0, min=0, max=36500)
    unwritten_calls_max = general.int("unwritten_calls_max", 20_000, min=1, max=10_000_000)
    disk_reserve_mb = general.float("disk_reserve_mb", 8.0, min=0, max=4096)
    if 0 < keep_days < MIN_KEEP_DAYS:
        general.report("keep_days", f"{keep_days} is less than {MIN_KEEP_DAYS}: delivery receipts can arrive "
                                    f"days after the text (0 keeps every call)")
    log_level = general.str("log_level", "info", choices=("debug", "info", "warning", "error"))
    max_value_length = general.int("template_value_max_length", 64, min=1, max=1000)
    general.done()
    return _General(tz, phone, outbox_path, synchronous, keep_days, log_level, max_value_length,
                    unwritten_calls_max, disk_reserve_mb, sqlite_cache_mib, instance, lease_seconds,
                    password_file, state_dir)


def _outbox(general: Section) -> str:
    """An SQLite file, or a PostgreSQL URL or connection string. Read as a secret: a
    connection string may hold a password, which no error may repeat."""
    default = "/var/lib/aftercalld/outbox.sqlite3"
    value = general.secret("outbox", default)
    if not value.strip():
        general.report("outbox", "must not be empty")
        return default
    if is_postgres(value):
        problem = dsn_problem(value)
        if problem:
            general.report("outbox", problem)
            return default
    return str(value)


def _metrics(root: Section) -> str | None:
    metrics = root.section("metrics")
    listen = metrics.str("listen", None, pattern=r"[0-9A-Za-z.\-\[\]:]+:[0-9]{1,5}")
    if listen is not None and not 1 <= int(listen.rsplit(":", 1)[1]) <= 65535:
        metrics.report("listen", f'port {listen.rsplit(":", 1)[1]} is outside 1-65535')
    metrics.done()
    return listen


def _declared_list(value: Any) -> list[str]:
    """The strings of a list as written, whatever else is wrong with it."""
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


_ZONE_NAME = re.compile(r"[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*")


def _zone(section: Section, key: str, default: str) -> ZoneInfo:
    name = section.str(key, default)
    hint = 'use an IANA name such as "Europe/London"'
    # Checked before ZoneInfo sees it: a directory ("America") or an overlong name is an
    # OSError from the file system there, not a ZoneInfoNotFoundError.
    if len(name) > 64 or not _ZONE_NAME.fullmatch(name):
        section.report(key, f'"{name}" is not a time zone name ({hint})')
        return ZoneInfo(default)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        section.report(key, f'unknown time zone "{name}" ({hint})')
        return ZoneInfo(default)


def _agents(root: Section) -> dict[str, AgentEntry]:
    table = root.section("agents")
    out: dict[str, AgentEntry] = {}
    for ext in list(table.data):
        entry = _problems(root).attempt(functools.partial(_agent, table, ext), None)
        if entry is not None:
            out[ext] = entry
    table.done()
    return out


def _agent(table: Section, ext: str) -> AgentEntry:
    entry = table.section(ext)
    agent = AgentEntry(name=entry.str("name", ""), mobile=entry.str("mobile", ""))
    entry.done()
    return agent


def _problems(section: Section) -> Problems:
    assert section.problems is not None  # parse() gives every section the file's Problems
    return section.problems


def _pbx(sec: Section, default_tz: ZoneInfo, names: set[str]) -> PbxConfig:
    problems = _problems(sec)
    errors_before = len(problems.errors)
    name = problems.attempt(lambda: sec.str("name", pattern=r"[A-Za-z0-9_.@:-]{1,64}"), None)  # no "/": ends a call key
    if name is not None:
        if name in names:
            problems.add(sec.error("name", f'duplicate PBX name "{name}"'))
        names.add(name)
    type_ = sec.str("type", choices=PBX_TYPES)  # the protocol's keys cannot be read without it
    tz = problems.attempt(lambda: _zone(sec, "timezone", default_tz.key), default_tz)
    dept_default = "DEPARTMENT" if type_ == "asterisk" else "department"
    department_variable = problems.attempt(
        lambda: sec.str("department_variable", dept_default, nonempty=True), dept_default)
    variables = tuple(problems.attempt(lambda: sec.str_list("variables", []), []))
    timeout = sec.float("call_timeout_seconds", 4 * 3600.0, min=60)
    backfill = problems.attempt(lambda: parse_backfill_keys(sec, type_), None)
    module = importlib.import_module(f"aftercalld.{'ami' if type_ == 'asterisk' else 'esl'}.config")
    settings = problems.attempt(lambda: module.parse_settings(sec), None)
    if len(problems.errors) > errors_before or name is None or backfill is None or settings is None:
        raise DependsOnFailedPart
    cdr, backfill_max_age = backfill
    return PbxConfig(name, type_, tz, department_variable, variables, timeout, settings,
                     cdr=cdr, backfill_max_age=backfill_max_age)


def _transports(root: Section) -> tuple[TransportConfig, ...]:
    """One `[transport]` table (named after its type), or named `[[transport]]` tables."""
    if not isinstance(root.data.get("transport"), list):
        return (_transport(root.section("transport")),)
    tables = root.sections("transport")
    if not tables:
        raise root.error("transport", "lists no transport: give at least one [[transport]] table")
    problems = _problems(root)
    names: set[str] = set()
    parsed = [problems.attempt(functools.partial(_named_transport, sec, names), None) for sec in tables]
    if None in parsed:
        raise DependsOnFailedPart
    return tuple(t for t in parsed if t is not None)


def _named_transport(sec: Section, names: set[str]) -> TransportConfig:
    problems = _problems(sec)
    errors_before = len(problems.errors)
    # Read before the type's own keys: its parser rejects every key it did not read.
    name = problems.attempt(lambda: sec.str("name", pattern=r"[A-Za-z0-9_.@:-]{1,64}"), None)
    if name is not None:
        if name in names:
            problems.add(sec.error("name", f'duplicate transport name "{name}"'))
        names.add(name)
    failover_after = sec.float("failover_after", DEFAULT_FAILOVER_AFTER, min=0.1, max=86400)
    transport = problems.attempt(lambda: _transport(sec), None)
    if transport is None or name is None or len(problems.errors) > errors_before:
        raise DependsOnFailedPart
    return replace(transport, name=name, failover_after=failover_after)


def _transport(sec: Section) -> TransportConfig:
    type_ = sec.str("type", "log", choices=TRANSPORT_TYPES, decides_keys=True)
    if type_ == "log":
        sec.done()
        return TransportConfig("log")
    module = importlib.import_module(f"aftercalld.{type_}.config")
    return TransportConfig(type_, module.parse_settings(sec))


def _dispatch(root: Section) -> DispatchConfig:
    sec = root.section("dispatch")
    cfg = DispatchConfig(
        ttl_seconds=sec.float("ttl_seconds", 3600.0, min=1),
        retry_initial_seconds=sec.float("retry_initial_seconds", 5.0, min=0.01),
        retry_max_seconds=sec.float("retry_max_seconds", 300.0, min=0.01),
        batch_size=sec.int("batch_size", 500, min=1, max=10000),
        drain_timeout_seconds=sec.float("drain_timeout_seconds", 10.0, min=0),
    )
    if cfg.retry_max_seconds < cfg.retry_initial_seconds:
        sec.report("retry_max_seconds", "must not be less than retry_initial_seconds")
    sec.done()
    return cfg


def _optout(root: Section) -> OptOutConfig:
    sec = root.section("optout")
    default = OptOutConfig()
    stop = frozenset(k.strip().upper() for k in sec.str_list("stop_keywords", sorted(default.stop_keywords)))
    start = frozenset(k.strip().upper() for k in sec.str_list("start_keywords", sorted(default.start_keywords)))
    both = stop & start
    if both:
        sec.report("start_keywords", f"{sorted(both)[0]} is also a stop keyword")
    help_ = frozenset(k.strip().upper() for k in sec.str_list("help_keywords", sorted(default.help_keywords)))
    if help_ & (stop | start):
        sec.report("help_keywords", f"{sorted(help_ & (stop | start))[0]} is also a stop or start keyword")
    help_text = sec.str("help_text", "")
    sec.done()
    return OptOutConfig(stop, start, help_, help_text)


@dataclass(frozen=True)
class _TemplateDef:
    template: Any
    options: Mapping[str, Any]


def _templates(root: Section, known: frozenset[str], problems: Problems) -> dict[str, _TemplateDef | None]:
    """Every template by name; None for one that failed (its error is recorded)."""
    table = problems.attempt(lambda: root.section("templates"), None)
    if table is None:
        return {}
    out: dict[str, _TemplateDef | None] = {}
    for name in list(table.data):
        out[name] = problems.attempt(functools.partial(_template_table, table, name, known), None)
    table.done()
    return out


def _template_table(table: Section, name: str, known: frozenset[str]) -> _TemplateDef:
    sec = table.section(name)
    try:
        return _template_def(sec, known)
    finally:
        sec.done()  # _template_def reads every key even when one is wrong: typos are still typos


def _template_def(sec: Section, known: frozenset[str]) -> _TemplateDef:
    problems = _problems(sec)
    errors_before = len(problems.errors)
    template = problems.attempt(lambda: _template_text(sec, known), None)
    tlvs = sec.str_map("tlvs", {})
    if tlvs:
        from .smpp.parts import parse_tlv_map  # the transport's own reading, so both agree

        for tag, value in tlvs.items():
            try:
                parse_tlv_map({tag: value})
            except ValueError as exc:
                sec.report(f"tlvs.{tag}", str(exc))
    if template is None or len(problems.errors) > errors_before:
        raise DependsOnFailedPart
    return _TemplateDef(template, {"tlvs": tlvs} if tlvs else {})


def _template_text(sec: Section, known: frozenset[str]) -> Template:
    text = sec.str("text", nonempty=True)
    try:
        return parse_template(text, known)
    except TemplateError as exc:
        raise sec.error("text", str(exc)) from None


def _check_rule_variables(root: Section, rules: list[Rule], collected: set[str]) -> None:
    """A condition on a channel variable no PBX collects could never match: say so."""
    for rule in rules:
        for name in rule.conditions.variables:
            if name not in collected:
                _problems(root).add(ConfigError(
                    root.file, f"{rule_path(rule.name)}.when.variables.{name}",
                    "no [[pbx]] lists this variable in its variables = [...], so it is never known"))


def rule_path(name: str) -> str:
    """How errors and warnings name a rule: by its name, which the admin searches for."""
    return f"rules[{json.dumps(name, ensure_ascii=False)}]"


def _policy(root: Section, rules: dict[str, RulePolicy]) -> PolicyConfig:
    sec = root.section("policy")
    cooldown = sec.float("cooldown_minutes", 0.0, min=0)
    quota = sec.int("daily_quota", None, min=1)
    sec.done()
    return PolicyConfig(cooldown_seconds=cooldown * 60, daily_quota=quota, rules=rules)


def _rules(root: Section, templates: dict[str, _TemplateDef | None], known: frozenset[str],
           pbx_names: set[str] | None, policies: dict[str, RulePolicy], problems: Problems) -> list[Rule]:
    rules: list[Rule] = []
    names: set[str] = set()
    for sec in problems.attempt(lambda: root.sections("rules"), []):
        rule = problems.attempt(functools.partial(_rule, sec, templates, known, pbx_names, policies, names), None)
        if rule is not None:
            rules.append(rule)
    return rules


def _rule(sec: Section, templates: dict[str, _TemplateDef | None], known: frozenset[str],
          pbx_names: set[str] | None, policies: dict[str, RulePolicy], names: set[str]) -> Rule:
    """One rule, every independent part checked; raises DependsOnFailedPart when any failed."""
    problems = _problems(sec)
    errors_before = len(problems.errors)
    name = problems.attempt(lambda: sec.str("name", nonempty=True), None)
    if name is not None:
        if name in names:  # the index names this one: its name does not say which rule it is
            problems.add(sec.error("name", f'duplicate rule name "{name}" (names identify rules in the outbox)'))
        else:
            names.add(name)
            sec.renamed(rule_path(name))
    enabled = sec.bool("enabled", True)
    sec.skip("replies")  # where replies to this rule's texts go: read by replyconfig
    conditions = problems.attempt(lambda: _conditions(sec.section("when"), pbx_names), None)
    kinds = problems.attempt(lambda: _recipient_kinds(sec), None)
    specs: list[RecipientSpec | None] = []
    if kinds is None:
        sec.skip(*RECIPIENT_CHOICES)  # what they configure cannot be told apart from typos now
    else:
        specs = [problems.attempt(functools.partial(_recipient, sec, kind, templates, known), None)
                 for kind in kinds]
        for extra in ("caller", "agent", "fixed"):
            if sec.has(extra) and RecipientKind(extra) not in kinds:
                problems.add(sec.error(extra, f'configured, but "{extra}" is not in recipients'))
    max_segments = sec.int("max_segments", 2, min=1, max=10)
    policy = problems.attempt(lambda: RulePolicy(
        daily_quota=sec.int("daily_quota", None, min=1),
        quiet_hours=tuple(_window(sec, w, "quiet_hours") for w in sec.str_list("quiet_hours", [])),
        quiet_action=QuietAction(sec.str("quiet_action", "defer", choices=[a.value for a in QuietAction])),
    ), None)
    sec.done()
    if len(problems.errors) > errors_before or name is None or conditions is None or policy is None \
            or kinds is None or None in specs:
        raise DependsOnFailedPart
    policies[name] = policy
    return Rule(name, enabled, conditions, tuple(s for s in specs if s is not None), max_segments)


def _recipient_kinds(sec: Section) -> list[RecipientKind]:
    kinds = sec.str_list("recipients", choices=RECIPIENT_CHOICES)
    if not kinds:
        raise sec.error("recipients", "must name at least one of: " + ", ".join(RECIPIENT_CHOICES))
    expanded: list[RecipientKind] = []
    for kind in kinds:
        for k in ((RecipientKind.CALLER, RecipientKind.AGENT) if kind == "both" else (RecipientKind(kind),)):
            if k not in expanded:
                expanded.append(k)
    return expanded


def _recipient(rule: Section, kind: RecipientKind, templates: dict[str, _TemplateDef | None],
               known: frozenset[str]) -> RecipientSpec:
    sec = rule.section(kind.value)
    if not sec.data:
        raise rule.error(kind.value, f'missing: recipients includes "{kind.value}", '
                                     f'so [{rule.key(kind.value)}] must give a template and sender')
    problems = _problems(rule)
    errors_before = len(problems.errors)
    if sec.has("template") and sec.has("text"):
        raise sec.error("text", "give either template (a name from [templates]) or text, not both")
    definition: _TemplateDef | None
    if sec.has("text"):
        definition = problems.attempt(lambda: _template_def(sec, known), None)
        template_name = f"{rule.key(kind.value)}.text"
    else:
        template_name = sec.str("template")
        if template_name not in templates:
            defined = ", ".join(sorted(templates)) or "none"
            problems.add(sec.error("template", f'unknown template "{template_name}" (defined: {defined})'))
        definition = templates.get(template_name)
    sender = problems.attempt(lambda: sec.str("sender", nonempty=True), "")
    if sender and not (_SENDER_NUMBER.fullmatch(sender) or _SENDER_ALNUM.fullmatch(sender)):
        problems.add(sec.error("sender", f'"{sender}" is neither a phone number nor an alphanumeric sender id '
                                         f'of at most 11 characters'))
    numbers: tuple[str, ...] = ()
    if kind is RecipientKind.FIXED:
        numbers = tuple(problems.attempt(lambda: sec.str_list("numbers"), ["?"]))
        if not numbers:
            problems.add(sec.error("numbers", "must list at least one number"))
    sec.done()
    if len(problems.errors) > errors_before or definition is None:
        raise DependsOnFailedPart  # a broken [templates] entry has its own error already
    return RecipientSpec(kind, definition.template, template_name, sender, numbers, definition.options)


def _conditions(sec: Section, pbx_names: set[str] | None) -> Conditions:
    """Each condition is checked on its own: a wrong status and a wrong hours window are
    both reported."""
    problems = _problems(sec)
    errors_before = len(problems.errors)

    def attempt(parse: Callable[[], T], failed: F) -> T | F:
        return problems.attempt(parse, failed)

    directions = attempt(lambda: frozenset(
        Direction(d) for d in sec.str_list("direction", [], choices=[d.value for d in Direction])), frozenset())
    statuses = attempt(lambda: frozenset(
        CallStatus(s) for s in sec.str_list("status", [], choices=[s.value for s in CallStatus])), frozenset())
    pbxs = frozenset(attempt(lambda: sec.str_list("pbx", []), []))
    unknown_pbx = pbxs - pbx_names if pbx_names else set()
    if unknown_pbx:
        problems.add(sec.error("pbx", f'unknown PBX "{sorted(unknown_pbx)[0]}" '
                                      f'(defined: {", ".join(sorted(pbx_names or ()))})'))
    exact: set[str] = set()
    prefixes: list[str] = []
    for did in attempt(lambda: sec.str_list("did", []), []):
        value = did.strip().lstrip("+")
        if value.endswith("*"):
            value = value[:-1]
            if not value.isdigit():
                problems.add(sec.error("did", f'"{did}": a prefix is digits followed by *'))
            prefixes.append(value)
        elif value.isdigit():
            exact.add(value)
        else:
            problems.add(sec.error("did", f'"{did}" is not a number (exact) or digits followed by * (prefix)'))
    pattern = attempt(lambda: sec.regex("caller", None), None)
    caller_pattern = re.compile(pattern) if pattern is not None else None
    weekdays: set[int] = set()
    for item in attempt(lambda: sec.str_list("weekdays", []), []):
        try:
            weekdays |= parse_weekdays(item)
        except ValueError as exc:
            problems.add(sec.error("weekdays", str(exc)))
    hours = attempt(lambda: tuple(_window(sec, w) for w in sec.str_list("hours", [])), ())
    cond = Conditions(
        directions=directions,
        statuses=statuses,
        departments=frozenset(d.casefold() for d in attempt(lambda: sec.str_list("department", []), [])),
        queues=frozenset(attempt(lambda: sec.str_list("queue", []), [])),
        dids_exact=frozenset(exact),
        did_prefixes=tuple(prefixes),
        agents=frozenset(attempt(lambda: sec.str_list("agent", []), [])),
        caller_pattern=caller_pattern,
        talk_min=sec.float("talk_seconds_min", None, min=0),
        talk_max=sec.float("talk_seconds_max", None, min=0),
        ring_min=sec.float("ring_seconds_min", None, min=0),
        ring_max=sec.float("ring_seconds_max", None, min=0),
        weekdays=frozenset(weekdays),
        hours=hours,
        variables=attempt(lambda: sec.str_map("variables", {}), {}),
        pbxs=pbxs,
        voicemail_reached=sec.bool("voicemail_reached", None),
    )
    for lo, hi, key in ((cond.talk_min, cond.talk_max, "talk_seconds_max"),
                        (cond.ring_min, cond.ring_max, "ring_seconds_max")):
        if lo is not None and hi is not None and hi < lo:
            problems.add(sec.error(key, f"is below the matching _min ({hi:g} < {lo:g})"))
    sec.done()
    if len(problems.errors) > errors_before:
        raise DependsOnFailedPart
    return cond


_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _weekday(name: str) -> int:
    """'mon', 'tues', 'Wednesday': any start of a day's English name of 3 letters or more."""
    key = name.strip().lower()
    for i, full in enumerate(_DAY_NAMES):
        if len(key) >= 3 and full.startswith(key):
            return i
    raise ValueError(f'unknown day "{name}" (expected mon … sun or monday … sunday, '
                     f'ranges such as "mon-fri", lists such as "sat, sun")')


def parse_weekdays(text: str) -> set[int]:
    """One weekdays entry: a day, a range ("mon-fri", "Friday-Monday" wraps over the
    weekend) or a comma-separated list of those. 0 is Monday."""
    days: set[int] = set()
    for part in text.split(","):
        first, sep, last = part.partition("-")
        start = _weekday(first)
        end = _weekday(last) if sep else start
        days.update((start + i) % 7 for i in range((end - start) % 7 + 1))
    return days


def _window(sec: Section, text: str, key: str = "hours") -> TimeWindow:
    m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", text)
    if not m:
        raise sec.error(key, f'"{text}" is not a window such as "09:00-17:30" (or "22:00-06:00" across midnight)')
    h1, m1, h2, m2 = (int(x) for x in m.groups())
    if h1 > 23 or m1 > 59 or h2 > 24 or m2 > 59 or (h2 == 24 and m2):
        raise sec.error(key, f'"{text}": hours 00-23 (24:00 allowed as an end), minutes 00-59')
    if (h1, m1) == (h2 % 24, m2):
        raise sec.error(key, f'"{text}": start and end are the same; leave hours out to match all day')
    end = time(0, 0) if h2 == 24 else time(h2, m2)
    return TimeWindow(time(h1, m1), end)


def log_config_warnings(config: Config, logger: logging.Logger) -> None:
    """What the daemon says at start and on reload: the same lines check-config prints."""
    for warning in config.warnings:
        logger.warning("config: %s", warning)


def config_warnings(config: Config, template_names: set[str]) -> tuple[str, ...]:
    """What loads but is surely not meant: rules that can never fire, texts that can never
    be sent, parts nothing uses. Each is one `file: key.path: reason` line."""
    out: list[str] = []

    def warn(key: str, reason: str) -> None:
        out.append(format_problem(config.file, key, reason))

    if not config.pbxs:
        warn("pbx", "no [[pbx]] table: the daemon receives no calls (replay and test-rule still work)")
    rules = config.rules.rules
    for i, rule in enumerate(rules):
        # A rule without conditions still leaves calls the PBX's shutdown cut off to rules
        # that ask for status "interrupted".
        later = [r.name for r in rules[i + 1:] if r.enabled and CallStatus.INTERRUPTED not in r.conditions.statuses]
        if rule.enabled and rule.conditions == Conditions() and later:
            warn(rule_path(rule.name), f"has no conditions, so it matches every call and the rule(s) after it "
                                       f"never fire: {', '.join(later)} (put it last)")
    for rule in rules:
        for spec in rule.recipients:
            key = f"{rule_path(rule.name)}.{spec.kind.value}"
            if spec.kind is RecipientKind.AGENT and not config.render.agents:
                warn(f"{rule_path(rule.name)}.recipients", '"agent" is texted at the mobile from [agents], '
                                                           'but there is no [agents] table: agents get no text')
            # The template's own words, before any value is filled in: the least any text has.
            fixed_text = "".join(getattr(part, "text", "") for part in spec.template.parts)
            segments = segment(fixed_text, config.render.segmenting).segments
            if segments > rule.max_segments:
                where = f"{key}.text" if spec.template_name.endswith(".text") else f"{key}.template"
                warn(where, f"the text is {segments} segments before any value is filled in, over the rule's "
                            f"max_segments = {rule.max_segments}: every such text is suppressed as too long")
    first = config.transport
    for index, other in enumerate(config.all_transports[1:], start=1):
        if other.segmenting != first.segmenting:
            warn(f"transport[{index}]", f"{other.label} splits texts differently from {first.label}: segments are "
                                        f"counted as {first.label} sends them, so a text within max_segments "
                                        f"may take more parts over {other.label}")
    used = {spec.template_name for rule in rules for spec in rule.recipients}
    for name in sorted(template_names - used):
        warn(f"templates.{name}", "not used by any rule")
    for ext, agent in config.render.agents.items():
        if agent.mobile:
            check = config.phone.check(agent.mobile)
            if check.e164 is None:
                warn(f"agents.{ext}.mobile", f'"{agent.mobile}" cannot be texted ({check.reason})')
    for key, reason in config.api.warnings if config.api else ():
        warn(key, reason)
    return tuple(out)

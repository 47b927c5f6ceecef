"""Load /etc/aftercalld/aftercalld.toml into typed objects, or fail naming file, key and why."""
from __future__ import annotations

import importlib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers

from .cdr.config import parse_backfill_keys
from .configreader import ConfigError, Section
from .model import CallStatus, Direction, RecipientKind
from .pbxconfig import PBX_TYPES, PbxConfig
from .phone import DEFAULT_CACHE_SIZE, PhoneRules
from .policy import PolicyConfig, QuietAction, RulePolicy
from .retention import MIN_KEEP_DAYS
from .rules.encoding import DEFAULT_PROFILE, SegmentingProfile
from .rules.engine import Conditions, RecipientSpec, Rule, RuleSet, TimeWindow
from .rules.render import AgentEntry, RenderContext
from .rules.templates import TemplateError, known_placeholders, parse_template

DEFAULT_PATH = "/etc/aftercalld/aftercalld.toml"
TRANSPORT_TYPES = ("log", "smpp", "modem")
RECIPIENT_CHOICES = ("caller", "agent", "both", "fixed")
_SENDER_ALNUM = re.compile(r"[A-Za-z0-9 ._&-]{1,11}")
_SENDER_NUMBER = re.compile(r"\+?[0-9]{1,15}")


def sender_problem(sender: str) -> str | None:
    """Why a sender id cannot be used, or None when it can."""
    if _SENDER_NUMBER.fullmatch(sender) or _SENDER_ALNUM.fullmatch(sender):
        return None
    return f'"{sender}" is neither a phone number nor an alphanumeric sender id of at most 11 characters'


@dataclass(frozen=True)
class TransportConfig:
    type: str
    settings: Any = None  # the transport package's own settings object

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
    log_level: str = "info"
    sqlite_cache_mib: int = 32  # SQLite page cache of the outbox connection
    extra: Mapping[str, Any] = field(default_factory=dict)

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
    root = Section(data, "", file)
    general = root.section("general")
    tz = _zone(general, "timezone", "UTC")
    region = general.str("default_region", pattern=r"[A-Z]{2}")
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise general.error("default_region",
                            f'"{region}" is not a region libphonenumber knows (ISO 3166 code, e.g. "GB")')
    allowed = general.str_list("allowed_countries", [region])
    for code in allowed:
        if code != "*" and code not in phonenumbers.SUPPORTED_REGIONS:
            raise general.error("allowed_countries", f'"{code}" is not an ISO 3166 region code')
    phone = PhoneRules(
        default_region=region,
        max_extension_digits=general.int("max_extension_digits", 6, min=1, max=8),
        allowed_regions=frozenset(allowed),
        allow_landlines=general.bool("allow_landlines", False),
        cache_size=general.int("phone_cache_size", DEFAULT_CACHE_SIZE, min=0, max=1_000_000),
    )
    outbox_path = general.str("outbox", "/var/lib/aftercalld/outbox.sqlite3", nonempty=True)
    synchronous = general.str("sqlite_synchronous", "normal", choices=("normal", "full"))
    sqlite_cache_mib = general.int("sqlite_cache_mib", 32, min=1, max=4096)
    keep_days = general.int("keep_days", 0, min=0, max=36500)
    if 0 < keep_days < MIN_KEEP_DAYS:
        raise general.error("keep_days", f"{keep_days} is less than {MIN_KEEP_DAYS}: delivery receipts can arrive "
                                         f"days after the text (0 keeps every call)")
    log_level = general.str("log_level", "info", choices=("debug", "info", "warning", "error"))
    max_value_length = general.int("template_value_max_length", 64, min=1, max=1000)
    general.done()

    constants = root.str_map("variables", {})
    agents = _agents(root)
    pbxs = _pbxs(root, tz)
    transport = _transport(root)
    dispatch = _dispatch(root)
    optout = _optout(root)

    channel_vars = sorted({v for p in pbxs for v in p.variables})
    known = known_placeholders(channel_vars, constants)
    templates = _templates(root, known)
    rule_policies: dict[str, RulePolicy] = {}
    rules = _rules(root, templates, known, {p.name for p in pbxs}, rule_policies)
    if pbxs:
        _check_rule_variables(root, rules, set(channel_vars))
    policy = _policy(root, rule_policies)
    metrics = root.section("metrics")
    metrics_listen = metrics.str("listen", None, pattern=r"[0-9A-Za-z.\-\[\]:]+:[0-9]{1,5}")
    if metrics_listen is not None and not 1 <= int(metrics_listen.rsplit(":", 1)[1]) <= 65535:
        raise metrics.error("listen", f'port {metrics_listen.rsplit(":", 1)[1]} is outside 1-65535')
    metrics.done()
    root.done()
    return Config(
        file=file,
        timezone=tz,
        outbox_path=outbox_path,
        sqlite_synchronous=synchronous,
        sqlite_cache_mib=sqlite_cache_mib,
        keep_days=keep_days,
        phone=phone,
        render=RenderContext(phone, constants, agents, max_value_length, transport.segmenting),
        pbxs=pbxs,
        transport=transport,
        dispatch=dispatch,
        optout=optout,
        rules=RuleSet(rules),
        policy=policy,
        metrics_listen=metrics_listen,
        log_level=log_level,
    )


_ZONE_NAME = re.compile(r"[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*")


def _zone(section: Section, key: str, default: str) -> ZoneInfo:
    name = section.str(key, default)
    hint = 'use an IANA name such as "Europe/London"'
    # Checked before ZoneInfo sees it: a directory ("America") or an overlong name is an
    # OSError from the file system there, not a ZoneInfoNotFoundError.
    if len(name) > 64 or not _ZONE_NAME.fullmatch(name):
        raise section.error(key, f'"{name}" is not a time zone name ({hint})')
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise section.error(key, f'unknown time zone "{name}" ({hint})') from None


def _agents(root: Section) -> dict[str, AgentEntry]:
    table = root.section("agents")
    out: dict[str, AgentEntry] = {}
    for ext in list(table.data):
        entry = table.section(ext)
        out[ext] = AgentEntry(name=entry.str("name", ""), mobile=entry.str("mobile", ""))
        entry.done()
    table.done()
    return out


def _pbxs(root: Section, default_tz: ZoneInfo) -> tuple[PbxConfig, ...]:
    out: list[PbxConfig] = []
    names: set[str] = set()
    for sec in root.sections("pbx"):
        name = sec.str("name", pattern=r"[A-Za-z0-9_.@:-]{1,64}")  # no "/": it ends a call key's PBX part
        if name in names:
            raise sec.error("name", f'duplicate PBX name "{name}"')
        names.add(name)
        type_ = sec.str("type", choices=PBX_TYPES)
        tz = _zone(sec, "timezone", default_tz.key)
        dept_default = "DEPARTMENT" if type_ == "asterisk" else "department"
        department_variable = sec.str("department_variable", dept_default, nonempty=True)
        variables = tuple(sec.str_list("variables", []))
        timeout = sec.float("call_timeout_seconds", 4 * 3600.0, min=60)
        cdr, backfill_max_age = parse_backfill_keys(sec, type_)
        module = importlib.import_module(f"aftercalld.{'ami' if type_ == 'asterisk' else 'esl'}.config")
        settings = module.parse_settings(sec)
        out.append(PbxConfig(name, type_, tz, department_variable, variables, timeout, settings,
                             cdr=cdr, backfill_max_age=backfill_max_age))
    return tuple(out)


def _transport(root: Section) -> TransportConfig:
    sec = root.section("transport")
    type_ = sec.str("type", "log", choices=TRANSPORT_TYPES)
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
        raise sec.error("retry_max_seconds", "must not be less than retry_initial_seconds")
    sec.done()
    return cfg


def _optout(root: Section) -> OptOutConfig:
    sec = root.section("optout")
    default = OptOutConfig()
    stop = frozenset(k.strip().upper() for k in sec.str_list("stop_keywords", sorted(default.stop_keywords)))
    start = frozenset(k.strip().upper() for k in sec.str_list("start_keywords", sorted(default.start_keywords)))
    both = stop & start
    if both:
        raise sec.error("start_keywords", f"{sorted(both)[0]} is also a stop keyword")
    sec.done()
    return OptOutConfig(stop, start)


@dataclass(frozen=True)
class _TemplateDef:
    template: Any
    options: Mapping[str, Any]


def _templates(root: Section, known: frozenset[str]) -> dict[str, _TemplateDef]:
    table = root.section("templates")
    out: dict[str, _TemplateDef] = {}
    for name in list(table.data):
        sec = table.section(name)
        out[name] = _template_def(sec, known)
        sec.done()
    table.done()
    return out


def _template_def(sec: Section, known: frozenset[str]) -> _TemplateDef:
    text = sec.str("text", nonempty=True)
    try:
        template = parse_template(text, known)
    except TemplateError as exc:
        raise sec.error("text", str(exc)) from None
    tlvs = sec.str_map("tlvs", {})
    if tlvs:
        from .smpp.parts import parse_tlv_map  # the transport's own reading, so both agree

        for tag, value in tlvs.items():
            try:
                parse_tlv_map({tag: value})
            except ValueError as exc:
                raise sec.error(f"tlvs.{tag}", str(exc)) from None
    return _TemplateDef(template, {"tlvs": tlvs} if tlvs else {})


def _check_rule_variables(root: Section, rules: list[Rule], collected: set[str]) -> None:
    """A condition on a channel variable no PBX collects could never match: say so."""
    for i, rule in enumerate(rules):
        for name in rule.conditions.variables:
            if name not in collected:
                raise ConfigError(root.file, f"rules[{i}].when.variables.{name}",
                                  "no [[pbx]] lists this variable in its variables = [...], so it is never known")


def _policy(root: Section, rules: dict[str, RulePolicy]) -> PolicyConfig:
    sec = root.section("policy")
    cooldown = sec.float("cooldown_minutes", 0.0, min=0)
    quota = sec.int("daily_quota", None, min=1)
    sec.done()
    return PolicyConfig(cooldown_seconds=cooldown * 60, daily_quota=quota, rules=rules)


def _rules(root: Section, templates: dict[str, _TemplateDef], known: frozenset[str],
           pbx_names: set[str], policies: dict[str, RulePolicy]) -> list[Rule]:
    rules: list[Rule] = []
    names: set[str] = set()
    for sec in root.sections("rules"):
        name = sec.str("name", nonempty=True)
        if name in names:
            raise sec.error("name", f'duplicate rule name "{name}" (names identify rules in the outbox)')
        names.add(name)
        enabled = sec.bool("enabled", True)
        conditions = _conditions(sec.section("when"), pbx_names)
        kinds = sec.str_list("recipients", choices=RECIPIENT_CHOICES)
        if not kinds:
            raise sec.error("recipients", "must name at least one of: " + ", ".join(RECIPIENT_CHOICES))
        max_segments = sec.int("max_segments", 2, min=1, max=10)
        expanded: list[RecipientKind] = []
        for kind in kinds:
            for k in ((RecipientKind.CALLER, RecipientKind.AGENT) if kind == "both" else (RecipientKind(kind),)):
                if k not in expanded:
                    expanded.append(k)
        specs = [
            _recipient(sec, kind, templates, known) for kind in expanded
        ]
        for extra in ("caller", "agent", "fixed"):
            if sec.has(extra) and RecipientKind(extra) not in expanded:
                raise sec.error(extra, f'configured, but "{extra}" is not in recipients')
        policies[name] = RulePolicy(
            daily_quota=sec.int("daily_quota", None, min=1),
            quiet_hours=tuple(_window(sec, w, "quiet_hours") for w in sec.str_list("quiet_hours", [])),
            quiet_action=QuietAction(sec.str("quiet_action", "defer", choices=[a.value for a in QuietAction])),
        )
        sec.done()
        rules.append(Rule(name, enabled, conditions, tuple(specs), max_segments))
    return rules


def _recipient(rule: Section, kind: RecipientKind, templates: dict[str, _TemplateDef],
               known: frozenset[str]) -> RecipientSpec:
    sec = rule.section(kind.value)
    if not sec.data:
        raise rule.error(kind.value, f'missing: recipients includes "{kind.value}", '
                                     f'so [{rule.key(kind.value)}] must give a template and sender')
    if sec.has("template") and sec.has("text"):
        raise sec.error("text", "give either template (a name from [templates]) or text, not both")
    if sec.has("text"):
        definition = _template_def(sec, known)
        template_name = f"{rule.key(kind.value)}.text"
    else:
        template_name = sec.str("template")
        if template_name not in templates:
            defined = ", ".join(sorted(templates)) or "none"
            raise sec.error("template", f'unknown template "{template_name}" (defined: {defined})')
        definition = templates[template_name]
    sender = sec.str("sender", nonempty=True)
    if not (_SENDER_NUMBER.fullmatch(sender) or _SENDER_ALNUM.fullmatch(sender)):
        raise sec.error("sender", f'"{sender}" is neither a phone number nor an alphanumeric sender id '
                                  f'of at most 11 characters')
    numbers: tuple[str, ...] = ()
    if kind is RecipientKind.FIXED:
        numbers = tuple(sec.str_list("numbers"))
        if not numbers:
            raise sec.error("numbers", "must list at least one number")
    sec.done()
    return RecipientSpec(kind, definition.template, template_name, sender, numbers, definition.options)


def _conditions(sec: Section, pbx_names: set[str]) -> Conditions:
    directions = frozenset(Direction(d) for d in sec.str_list("direction", [], choices=[d.value for d in Direction]))
    statuses = frozenset(CallStatus(s) for s in sec.str_list("status", [], choices=[s.value for s in CallStatus]))
    pbxs = frozenset(sec.str_list("pbx", []))
    unknown_pbx = pbxs - pbx_names
    if unknown_pbx and pbx_names:
        raise sec.error("pbx", f'unknown PBX "{sorted(unknown_pbx)[0]}" (defined: {", ".join(sorted(pbx_names))})')
    exact: set[str] = set()
    prefixes: list[str] = []
    for did in sec.str_list("did", []):
        value = did.strip().lstrip("+")
        if value.endswith("*"):
            value = value[:-1]
            if not value.isdigit():
                raise sec.error("did", f'"{did}": a prefix is digits followed by *')
            prefixes.append(value)
        elif value.isdigit():
            exact.add(value)
        else:
            raise sec.error("did", f'"{did}" is not a number (exact) or digits followed by * (prefix)')
    pattern = sec.regex("caller", None)
    caller_pattern = re.compile(pattern) if pattern is not None else None
    weekdays: set[int] = set()
    for item in sec.str_list("weekdays", []):
        try:
            weekdays |= parse_weekdays(item)
        except ValueError as exc:
            raise sec.error("weekdays", str(exc)) from None
    hours = tuple(_window(sec, w) for w in sec.str_list("hours", []))
    cond = Conditions(
        directions=directions,
        statuses=statuses,
        departments=frozenset(d.casefold() for d in sec.str_list("department", [])),
        queues=frozenset(sec.str_list("queue", [])),
        dids_exact=frozenset(exact),
        did_prefixes=tuple(prefixes),
        agents=frozenset(sec.str_list("agent", [])),
        caller_pattern=caller_pattern,
        talk_min=sec.float("talk_seconds_min", None, min=0),
        talk_max=sec.float("talk_seconds_max", None, min=0),
        ring_min=sec.float("ring_seconds_min", None, min=0),
        ring_max=sec.float("ring_seconds_max", None, min=0),
        weekdays=frozenset(weekdays),
        hours=hours,
        variables=sec.str_map("variables", {}),
        pbxs=pbxs,
        voicemail_reached=sec.bool("voicemail_reached", None),
    )
    for lo, hi, key in ((cond.talk_min, cond.talk_max, "talk_seconds_max"),
                        (cond.ring_min, cond.ring_max, "ring_seconds_max")):
        if lo is not None and hi is not None and hi < lo:
            raise sec.error(key, f"is below the matching _min ({hi:g} < {lo:g})")
    sec.done()
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

"""Typed reading of one TOML table, with errors that name the file, the key path and why.

Every part of the config (core, AMI, ESL, SMPP, modem) reads its table through a `Section`,
so every error a PBX admin sees has the same shape:
``/etc/aftercalld/aftercalld.toml: rules["Missed - Support"].recipients: unknown value "agnet"``.
"""
from __future__ import annotations

import builtins
import math
import re
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from .textsafety import bounded, escape_controls

_MISSING = object()
# An echoed value is shown whole up to this length: enough to recognise any sane value.
_MAX_ECHOED_REASON = 400


def format_problem(file: str, key: str, reason: str) -> str:
    """``file: key.path: reason`` on one line, whatever the value it echoes holds."""
    key = escape_controls(bounded(key, 200))
    reason = escape_controls(bounded(reason, _MAX_ECHOED_REASON))
    return f"{file}: {key}: {reason}" if key else f"{file}: {reason}"


class ConfigError(Exception):
    """One problem, or (from `combine`) every independent problem of a file: `errors` lists
    them, one line each in str(); file/key/reason are the first one's."""

    def __init__(self, file: str, key: str, reason: str) -> None:
        # The error is one line whatever the value it echoes holds (a newline, an escape).
        super().__init__(format_problem(file, key, reason))
        self.file = file
        self.key = escape_controls(bounded(key, 200))
        self.reason = escape_controls(bounded(reason, _MAX_ECHOED_REASON))
        self.errors: list[ConfigError] = [self]

    @classmethod
    def combine(cls, errors: list[ConfigError]) -> ConfigError:
        first = errors[0]
        combined = cls(first.file, first.key, first.reason)
        combined.args = ("\n".join(str(e) for e in errors),)
        combined.errors = list(errors)
        return combined


class DependsOnFailedPart(Exception):
    """A part of the config that cannot be checked because one it depends on failed (a rule
    naming a template whose text is broken): its error is already reported, say nothing more."""


T = TypeVar("T")
F = TypeVar("F")


class Problems:
    """Every independent error of one file, gathered while loading it, so that an admin
    fixes them all in one pass instead of one per check-config run."""

    def __init__(self) -> None:
        self.errors: list[ConfigError] = []

    def add(self, error: ConfigError) -> None:
        self.errors.extend(error.errors)

    def attempt(self, parse: Callable[[], T], failed: F) -> T | F:
        """`parse()`, or `failed` after recording its error: the caller goes on with the
        independent parts."""
        try:
            return parse()
        except ConfigError as exc:
            self.add(exc)
        except DependsOnFailedPart:
            pass
        return failed

    def raise_if_any(self) -> None:
        if self.errors:
            raise ConfigError.combine(self.errors)


def _reject_non_finite(value: Any, path: str, file: str, found: list[ConfigError]) -> None:
    """TOML has nan and inf, and both pass every min/max check (nan compares false with
    everything): ``connect_timeout = nan`` would make every timeout expire at once. No key
    of ours means either, so the whole document is checked once, here."""
    if isinstance(value, float) and not math.isfinite(value):
        found.append(ConfigError(file, path, f"must be a finite number, not {value}"))
    if isinstance(value, dict):
        for k, v in value.items():
            _reject_non_finite(v, f"{path}.{k}" if path else str(k), file, found)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _reject_non_finite(v, f"{path}[{i}]", file, found)


def _type_name(value: Any) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true/false",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


class Section:
    """One table of the config. Reads keys with types and bounds; `done()` rejects keys
    nobody read, so a typo such as ``secrte`` is an error rather than a silent default.

    With `problems` (the whole file being loaded), a wrong number or flag and unknown keys
    are recorded there and reading goes on (with the key's default), so that one run names
    every such mistake; without, the first error is raised."""

    def __init__(self, data: dict[str, Any], path: str, file: str, problems: Problems | None = None) -> None:
        if not isinstance(data, dict):
            raise ConfigError(file, path, f"must be a table, not {_type_name(data)}")
        if not path:
            found: list[ConfigError] = []
            _reject_non_finite(data, "", file, found)
            if found:
                raise ConfigError.combine(found)
        self.data = data
        self.path = path
        self.file = file
        self.problems = problems
        self._read: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str | None, reason: str) -> ConfigError:
        return ConfigError(self.file, self.key(name) if name else self.path, reason)

    def renamed(self, path: str) -> None:
        """Name this table differently in errors from now on (a rule by its name)."""
        self.path = path

    def skip(self, *names: str) -> None:
        """Keys left unread on purpose (their table failed earlier): not "unknown"."""
        self._read.update(names)

    def report(self, name: str, reason: str) -> None:
        """A problem the reading can go on after (the value is not used to read other keys):
        recorded when loading a whole file, else raised."""
        if self.problems is None:
            raise self.error(name, reason)
        self.problems.add(self.error(name, reason))

    def _invalid(self, name: str, reason: str, default: Any) -> Any:
        """A value of the wrong type or out of bounds: recorded, and the default read
        instead, when loading a whole file and the key has one; else raised."""
        if self.problems is None or default is _MISSING:
            raise self.error(name, reason)
        self.problems.add(self.error(name, reason))
        return default

    def has(self, name: str) -> bool:
        return name in self.data

    def _get(self, name: str, default: Any) -> Any:
        self._read.add(name)
        if name in self.data:
            return self.data[name]
        if default is _MISSING:
            raise self.error(name, "missing (required)")
        return default

    def raw(self, name: str, default: Any = _MISSING) -> Any:
        return self._get(name, default)

    def str(self, name: str, default: Any = _MISSING, *, choices: Iterable[str] | None = None,
            pattern: str | None = None, nonempty: bool = False, decides_keys: bool = False) -> Any:
        """`decides_keys`: the value says which other keys the table has (a transport's
        type), so a wrong one is always raised: its default would make them all unknown."""
        value = self._get(name, default)
        if value is default and name not in self.data:
            return value
        fallback = _MISSING if decides_keys else default
        if not isinstance(value, str):
            return self._invalid(name, f"must be a string, not {_type_name(value)}", fallback)
        if nonempty and not value.strip():
            return self._invalid(name, "must not be empty", fallback)
        if choices is not None:
            allowed = list(choices)
            if value not in allowed:
                return self._invalid(name, f'unknown value "{value}" (expected one of: {", ".join(allowed)})',
                                     fallback)
        if pattern is not None and not re.fullmatch(pattern, value):
            return self._invalid(name, f'"{value}" is not in the expected form ({pattern})', fallback)
        return value

    def secret(self, name: builtins.str, default: Any = _MISSING) -> Any:
        """A string that must never be echoed: errors say what is wrong, not the value."""
        value = self._get(name, default)
        if value is default and name not in self.data:
            return value
        if not isinstance(value, str):
            return self._invalid(name, f"must be a string, not {_type_name(value)}", default)
        return value

    def int(self, name: builtins.str, default: Any = _MISSING, *, min: builtins.int | None = None,
            max: builtins.int | None = None) -> Any:
        value = self._get(name, default)
        if value is default and name not in self.data:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            return self._invalid(name, f"must be an integer, not {_type_name(value)}", default)
        return self._bounds(name, value, min, max, default)

    def float(self, name: builtins.str, default: Any = _MISSING, *, min: builtins.float | None = None,
              max: builtins.float | None = None) -> Any:
        value = self._get(name, default)
        if value is default and name not in self.data:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return self._invalid(name, f"must be a number, not {_type_name(value)}", default)
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            return self._invalid(name, "is too large", default)
        if not math.isfinite(number):
            return self._invalid(name, f"must be a finite number, not {number}", default)
        return self._bounds(name, number, min, max, default)

    def bool(self, name: builtins.str, default: Any = _MISSING) -> Any:
        value = self._get(name, default)
        if value is default and name not in self.data:
            return value
        if not isinstance(value, bool):
            return self._invalid(name, f"must be true or false, not {_type_name(value)}", default)
        return value

    def regex(self, name: builtins.str, default: Any = _MISSING) -> Any:
        """A regular expression, checked here so a typo stops the daemon at start."""
        value = self.str(name, default, nonempty=True)
        if value is default:  # absent, or wrong and already recorded
            return value
        try:
            re.compile(value)
        except re.error as exc:
            return self._invalid(name, f"not a valid regular expression: {exc}", default)
        return value

    def backoff(self, default_min: builtins.float,
                default_max: builtins.float) -> tuple[builtins.float, builtins.float]:
        """reconnect_min / reconnect_max seconds: the capped exponential backoff of every
        connection (AMI, ESL, SMPP)."""
        low = self.float("reconnect_min", default_min, min=0.01, max=3600)
        high = self.float("reconnect_max", default_max, min=0.01, max=3600)
        if high < low:
            self.report("reconnect_max", f"must be at least reconnect_min ({low:g})")
        return low, high

    def str_list(self, name: builtins.str, default: Any = _MISSING, *,
                 choices: Iterable[builtins.str] | None = None, allow_single: builtins.bool = True) -> Any:
        """A list of strings; a single string is accepted as a one-item list."""
        value = self._get(name, default)
        if value is default and name not in self.data:
            return value
        if allow_single and isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            return self._invalid(name, f"must be a list of strings, not {_type_name(value)}", default)
        allowed = list(choices) if choices is not None else None
        for i, item in enumerate(value):
            if not isinstance(item, str):
                return self._invalid(f"{name}[{i}]", f"must be a string, not {_type_name(item)}", default)
            if allowed is not None and item not in allowed:
                return self._invalid(name, f'unknown value "{item}" (expected one of: {", ".join(allowed)})',
                                     default)
        return list(value)

    def str_map(self, name: builtins.str, default: Any = _MISSING) -> Any:
        value = self._get(name, default)
        if value is default and name not in self.data:
            return value
        if not isinstance(value, dict):
            return self._invalid(name, f"must be a table of name = \"value\", not {_type_name(value)}", default)
        for k, v in value.items():
            if isinstance(v, bool) or not isinstance(v, (str, int, float)):
                return self._invalid(f"{name}.{k}", f"must be a string, not {_type_name(v)}", default)
        return {str(k): str(v) for k, v in value.items()}

    def section(self, name: builtins.str, *, required: builtins.bool = False) -> Section:
        value = self._get(name, _MISSING if required else {})
        return Section(value, self.key(name), self.file, self.problems)

    def sections(self, name: builtins.str, *, required: builtins.bool = False) -> list[Section]:
        """An array of tables (``[[rules]]``)."""
        value = self._get(name, _MISSING if required else [])
        if not isinstance(value, list):
            raise self.error(name, f"must be an array of tables ([[{self.key(name)}]]), not {_type_name(value)}")
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise self.error(f"{name}[{i}]", f"must be a table, not {_type_name(item)}")
            out.append(Section(item, f"{self.key(name)}[{i}]", self.file, self.problems))
        return out

    def done(self) -> None:
        unknown = [self.error(k, "unknown key (check the spelling; "
                                 "`aftercalld files aftercalld.example.toml` lists every key)")
                   for k in self.data if k not in self._read]
        if not unknown:
            return
        if self.problems is None:
            raise ConfigError.combine(unknown)
        for error in unknown:  # a typo is independent of everything else: go on
            self.problems.add(error)

    def _bounds(self, name: builtins.str, value: Any, lo: builtins.float | None,
                hi: builtins.float | None, default: Any) -> Any:
        if lo is not None and value < lo:
            return self._invalid(name, f"must be at least {lo}, got {value}", default)
        if hi is not None and value > hi:
            return self._invalid(name, f"must be at most {hi}, got {value}", default)
        return value

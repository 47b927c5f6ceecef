"""Typed reading of one TOML table, with errors that name the file, the key path and why.

Every part of the config (core, AMI, ESL, SMPP, modem) reads its table through a `Section`,
so every error a PBX admin sees has the same shape:
``/etc/aftercalld/aftercalld.toml: rules[2].recipients: unknown value "agnet"``.
"""
from __future__ import annotations

import builtins
import math
import re
from collections.abc import Iterable
from typing import Any

from .textsafety import bounded, escape_controls

_MISSING = object()
# An echoed value is shown whole up to this length: enough to recognise any sane value.
_MAX_ECHOED_REASON = 400


class ConfigError(Exception):
    def __init__(self, file: str, key: str, reason: str) -> None:
        # The error is one line whatever the value it echoes holds (a newline, an escape).
        key = escape_controls(bounded(key, 200))
        reason = escape_controls(bounded(reason, _MAX_ECHOED_REASON))
        super().__init__(f"{file}: {key}: {reason}" if key else f"{file}: {reason}")
        self.file = file
        self.key = key
        self.reason = reason


def _reject_non_finite(value: Any, path: str, file: str) -> None:
    """TOML has nan and inf, and both pass every min/max check (nan compares false with
    everything): ``connect_timeout = nan`` would make every timeout expire at once. No key
    of ours means either, so the whole document is checked once, here."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(file, path, f"must be a finite number, not {value}")
    if isinstance(value, dict):
        for k, v in value.items():
            _reject_non_finite(v, f"{path}.{k}" if path else str(k), file)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _reject_non_finite(v, f"{path}[{i}]", file)


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
    nobody read, so a typo such as ``secrte`` is an error rather than a silent default."""

    def __init__(self, data: dict[str, Any], path: str, file: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(file, path, f"must be a table, not {_type_name(data)}")
        if not path:
            _reject_non_finite(data, "", file)
        self.data = data
        self.path = path
        self.file = file
        self._read: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str | None, reason: str) -> ConfigError:
        return ConfigError(self.file, self.key(name) if name else self.path, reason)

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
            pattern: str | None = None, nonempty: bool = False) -> Any:
        value = self._get(name, default)
        if value is default and name not in self.data:
            return value
        if not isinstance(value, str):
            raise self.error(name, f"must be a string, not {_type_name(value)}")
        if nonempty and not value.strip():
            raise self.error(name, "must not be empty")
        if choices is not None:
            allowed = list(choices)
            if value not in allowed:
                raise self.error(name, f'unknown value "{value}" (expected one of: {", ".join(allowed)})')
        if pattern is not None and not re.fullmatch(pattern, value):
            raise self.error(name, f'"{value}" is not in the expected form ({pattern})')
        return value

    def secret(self, name: builtins.str, default: Any = _MISSING) -> Any:
        """A string that must never be echoed: errors say what is wrong, not the value."""
        value = self._get(name, default)
        if value is default and name not in self.data:
            return value
        if not isinstance(value, str):
            raise self.error(name, f"must be a string, not {_type_name(value)}")
        return value

    def int(self, name: builtins.str, default: Any = _MISSING, *, min: builtins.int | None = None,
            max: builtins.int | None = None) -> Any:
        value = self._get(name, default)
        if value is default and name not in self.data:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"must be an integer, not {_type_name(value)}")
        self._bounds(name, value, min, max)
        return value

    def float(self, name: builtins.str, default: Any = _MISSING, *, min: builtins.float | None = None,
              max: builtins.float | None = None) -> Any:
        value = self._get(name, default)
        if value is default and name not in self.data:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(name, f"must be a number, not {_type_name(value)}")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            raise self.error(name, "is too large") from None
        if not math.isfinite(number):
            raise self.error(name, f"must be a finite number, not {number}")
        self._bounds(name, number, min, max)
        return number

    def bool(self, name: builtins.str, default: Any = _MISSING) -> Any:
        value = self._get(name, default)
        if value is default and name not in self.data:
            return value
        if not isinstance(value, bool):
            raise self.error(name, f"must be true or false, not {_type_name(value)}")
        return value

    def regex(self, name: builtins.str, default: Any = _MISSING) -> Any:
        """A regular expression, checked here so a typo stops the daemon at start."""
        value = self.str(name, default, nonempty=True)
        if value is default and name not in self.data:
            return value
        try:
            re.compile(value)
        except re.error as exc:
            raise self.error(name, f"not a valid regular expression: {exc}") from None
        return value

    def backoff(self, default_min: builtins.float,
                default_max: builtins.float) -> tuple[builtins.float, builtins.float]:
        """reconnect_min / reconnect_max seconds: the capped exponential backoff of every
        connection (AMI, ESL, SMPP)."""
        low = self.float("reconnect_min", default_min, min=0.01, max=3600)
        high = self.float("reconnect_max", default_max, min=0.01, max=3600)
        if high < low:
            raise self.error("reconnect_max", f"must be at least reconnect_min ({low:g})")
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
            raise self.error(name, f"must be a list of strings, not {_type_name(value)}")
        allowed = list(choices) if choices is not None else None
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(f"{name}[{i}]", f"must be a string, not {_type_name(item)}")
            if allowed is not None and item not in allowed:
                raise self.error(name, f'unknown value "{item}" (expected one of: {", ".join(allowed)})')
        return list(value)

    def str_map(self, name: builtins.str, default: Any = _MISSING) -> Any:
        value = self._get(name, default)
        if value is default and name not in self.data:
            return value
        if not isinstance(value, dict):
            raise self.error(name, f"must be a table of name = \"value\", not {_type_name(value)}")
        for k, v in value.items():
            if isinstance(v, bool) or not isinstance(v, (str, int, float)):
                raise self.error(f"{name}.{k}", f"must be a string, not {_type_name(v)}")
        return {str(k): str(v) for k, v in value.items()}

    def section(self, name: builtins.str, *, required: builtins.bool = False) -> Section:
        value = self._get(name, _MISSING if required else {})
        return Section(value, self.key(name), self.file)

    def sections(self, name: builtins.str, *, required: builtins.bool = False) -> list[Section]:
        """An array of tables (``[[rules]]``)."""
        value = self._get(name, _MISSING if required else [])
        if not isinstance(value, list):
            raise self.error(name, f"must be an array of tables ([[{self.key(name)}]]), not {_type_name(value)}")
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise self.error(f"{name}[{i}]", f"must be a table, not {_type_name(item)}")
            out.append(Section(item, f"{self.key(name)}[{i}]", self.file))
        return out

    def done(self) -> None:
        unknown = [k for k in self.data if k not in self._read]
        if unknown:
            name = unknown[0]
            raise self.error(name, "unknown key (check the spelling; "
                                   "`aftercalld files aftercalld.example.toml` lists every key)")

    def _bounds(self, name: builtins.str, value: builtins.float, lo: builtins.float | None,
                hi: builtins.float | None) -> None:
        if lo is not None and value < lo:
            raise self.error(name, f"must be at least {lo}, got {value}")
        if hi is not None and value > hi:
            raise self.error(name, f"must be at most {hi}, got {value}")

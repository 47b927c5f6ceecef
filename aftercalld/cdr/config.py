"""The backfill keys of a ``[[pbx]]`` table: ``cdr`` and ``backfill_max_age``."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..configreader import Section

DEFAULT_MAX_AGE_SECONDS = 600.0
_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(s|m|min|h|d)?\s*")
_UNITS = {None: 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True)
class CdrConfig:
    """``[[pbx]] cdr = …``: a CSV file path, or a ``mysql://`` URL (FreePBX's asteriskcdrdb)."""

    kind: str  # "asterisk-csv" | "freeswitch-csv" | "mysql"
    path: str = ""
    host: str = "127.0.0.1"
    port: int = 3306
    user: str = ""
    password: str = field(default="", repr=False)  # never printed
    database: str = "asteriskcdrdb"
    table: str = "cdr"

    def describe(self) -> str:
        """For logs: no password."""
        if self.kind == "mysql":
            return f"mysql://{self.user}@{self.host}:{self.port}/{self.database}"
        return self.path


def parse_cdr_setting(value: str, pbx_type: str) -> CdrConfig:
    """Raises ValueError with a reason that never echoes a password."""
    if value.startswith(("mysql://", "mariadb://")):
        if pbx_type != "asterisk":
            raise ValueError("a MySQL/MariaDB CDR database is read for Asterisk (FreePBX's asteriskcdrdb) only")
        url = urlsplit(value)
        try:
            port = url.port or 3306
        except ValueError:
            raise ValueError("the port in the mysql:// URL is not a number") from None
        database, _, table = url.path.lstrip("/").partition("/")
        for what, name in (("database", database), ("table", table)):
            if name and not re.fullmatch(r"[A-Za-z0-9_]{1,64}", name):
                raise ValueError(f'the {what} name "{name}" is not letters, digits and _')
        if not url.username:
            raise ValueError('mysql:// URL needs a user: "mysql://user:password@host/asteriskcdrdb"')
        return CdrConfig("mysql", host=url.hostname or "127.0.0.1", port=port, user=unquote(url.username),
                         password=unquote(url.password or ""), database=database or "asteriskcdrdb",
                         table=table or "cdr")
    if "://" in value:
        raise ValueError("expected a CSV file path or a mysql:// URL")
    path = Path(value)
    if not path.is_absolute():
        raise ValueError(f'"{value}" is not an absolute path')
    if path.is_dir():
        raise ValueError(f'"{value}" is a directory: name the CSV file in it (e.g. {path / "Master.csv"})')
    if not path.is_file():
        raise ValueError(f'"{value}": no such file (enable cdr_csv, or point to its Master.csv)')
    if not os.access(path, os.R_OK):
        raise ValueError(f'"{value}": not readable by this user (add it to the PBX\'s group)')
    return CdrConfig("asterisk-csv" if pbx_type == "asterisk" else "freeswitch-csv", path=str(path))



def parse_backfill_keys(section: Section, pbx_type: str) -> tuple[CdrConfig | None, float]:
    """(where the CDRs are or None, backfill_max_age in seconds); errors name the key."""
    raw = section.str("cdr", "")
    cdr = None
    if raw.strip():
        try:
            cdr = parse_cdr_setting(raw.strip(), pbx_type)
        except ValueError as exc:
            raise section.error("cdr", str(exc)) from None
    value = section.raw("backfill_max_age", DEFAULT_MAX_AGE_SECONDS)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise section.error("backfill_max_age", 'must be seconds or a duration such as "10m" or "2h"')
    if isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if not match:
            raise section.error("backfill_max_age", f'"{value}" is not a duration such as "10m", "90s" or "2h"')
        value = float(match.group(1)) * _UNITS[match.group(2)]
    if value < 0:
        raise section.error("backfill_max_age", "must not be negative (0: never text a backfilled call)")
    return cdr, float(value)

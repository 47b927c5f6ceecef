"""Where the outbox lives, as `[general] outbox` says: an SQLite file (the default), or a
PostgreSQL database given as a URL (``postgresql://`` or ``postgres://``) or a libpq
connection string (``host=… dbname=…``). Nothing here connects."""
from __future__ import annotations

import re
from pathlib import Path

# A libpq keyword/value string starts with a keyword and '='; a file name almost never does.
_CONNINFO = re.compile(r"\s*(host|hostaddr|port|dbname|user|password|passfile|service|sslmode)\s*=")


def is_postgres(outbox: str) -> bool:
    return outbox.startswith(("postgresql://", "postgres://")) or bool(_CONNINFO.match(outbox))


def dsn_problem(dsn: str) -> str | None:
    """Why `dsn` cannot be a PostgreSQL connection string, in words that never repeat it
    (it may hold a password); None when it can."""
    try:
        from psycopg import conninfo, errors
    except ImportError:
        return "a PostgreSQL outbox needs psycopg: pip install 'aftercalld[postgresql]'"
    try:
        info = conninfo.conninfo_to_dict(dsn)
    except errors.ProgrammingError:
        return "is not a PostgreSQL connection URL or libpq connection string"
    if not info.get("dbname") and not info.get("service"):
        return "names no database (postgresql://user@host/DATABASE)"
    return None


def has_password(dsn: str) -> bool:
    from psycopg import conninfo
    return "password" in conninfo.conninfo_to_dict(dsn)


def with_password_file(dsn: str, password_file: str) -> str:
    """The connection string with the password read from `password_file` (its first line),
    for the connection only: neither logged nor kept anywhere else. Without a file, libpq
    reads PGPASSWORD or the password file PGPASSFILE (~/.pgpass) names."""
    if not password_file:
        return dsn
    from psycopg import conninfo
    password = Path(password_file).read_text(encoding="utf-8").splitlines()
    return conninfo.make_conninfo(dsn, password=password[0] if password else "")


def shown(dsn: str) -> str:
    """`dsn` as logs and errors may show it: without a password."""
    if not is_postgres(dsn):
        return dsn
    try:
        from .postgres import shown_dsn
    except Exception:  # no psycopg: say only which kind of outbox it is
        return "postgresql://(connection string)"
    return shown_dsn(dsn)

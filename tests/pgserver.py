"""A real PostgreSQL server for the tests: initdb into a temporary folder, listening on a
Unix socket only (nothing on the network), stopped and removed when the session ends.

The server programs come from Debian's `postgresql` package (.ci/run installs it when
missing). initdb and postgres refuse to run as root, so as root they run as the
`postgres` user the package creates.
"""
from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

USER = "aftercalld"  # the superuser initdb creates; trust authentication on the socket only


def server_programs() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres, newest version first."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True):
        if Path(folder, "pg_ctl").exists():
            return Path(folder)
    return None


class PgServer:
    def __init__(self, tcp_port: int | None = None, durable: bool = False) -> None:
        """`tcp_port`: also listen on 127.0.0.1 at that port; `durable`: fsync and synchronous
        commits as in production (bench/ha.py measures both)."""
        self.tcp_port = tcp_port
        self.durable = durable
        programs = server_programs()
        if programs is None:
            raise FileNotFoundError("PostgreSQL server programs not found (Debian package postgresql)")
        self.programs = programs
        # Short: a Unix socket path may not exceed 107 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="acd-pg-", dir="/tmp"))
        self.data = self.root / "data"
        self._as = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self._names = itertools.count(1)

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> PgServer:
        if not self.data.exists():
            self._run(str(self.programs / "initdb"), "-D", str(self.data), "-A", "trust", "-U", USER,
                      "--no-sync", "-E", "UTF8", "--locale=C")
        # fsync off: the tests check the outbox's logic, not the server's durability, and
        # the suite must stay quick on CI's two cores.
        listen = f"-c listen_addresses=127.0.0.1 -p {self.tcp_port}" if self.tcp_port else "-c listen_addresses=''"
        unsafe = "" if self.durable else "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
        options = f"{listen} -k {self.root} {unsafe}-c max_connections=100"
        self._run(str(self.programs / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"),
                  "-w", "-t", "60", "-o", options, "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.programs / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass  # not running
        shutil.rmtree(self.root, ignore_errors=True)

    def dsn(self, dbname: str = "postgres") -> str:
        port = f" port={self.tcp_port}" if self.tcp_port else ""
        return f"host={self.root}{port} user={USER} dbname={dbname}"

    def tcp_dsn(self, dbname: str) -> str:
        assert self.tcp_port, "started without a TCP port"
        return f"host=127.0.0.1 port={self.tcp_port} user={USER} dbname={dbname}"

    def warm_wal(self, megabytes: int = 128) -> None:
        """Leaves WAL segments ready for reuse, as on a server that has been running: a fresh
        cluster creates (and zero-fills, then fsyncs) a 16 MB segment each time its WAL
        grows into one, which stalls every commit behind it for tens of milliseconds.
        A server in service recycles old segments instead (`wal_recycle`, `min_wal_size`)."""
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute("CREATE TABLE wal_warm_up AS SELECT g, repeat('x', 1000) AS filler "
                         "FROM generate_series(1, %s) AS g" % (megabytes * 1000))
            conn.execute("DROP TABLE wal_warm_up")
            conn.execute("CHECKPOINT")

    def new_database(self) -> str:
        """A fresh, empty database; returns its connection string."""
        import psycopg

        name = f"t{next(self._names)}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

"""FreePBX's asteriskcdrdb read over a real MariaDB server, when one is installed.

The test starts its own `mariadbd` on 127.0.0.1 (a throwaway data directory, a free port,
grant tables off) and creates FreePBX's `cdr` table with its columns; it is skipped when
Debian's mariadb-server or PyMySQL (the `mysql` extra) is not installed. It checks the
query itself (the calldate/duration window) and the rows as the driver really returns them.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from datetime import datetime
from pathlib import Path

import pytest
from test_cdr_backfill import RECORDED, Setup
from test_cdr_rows import db_rows

pymysql = pytest.importorskip("pymysql", reason="PyMySQL not installed (pip install 'aftercalld[mysql]')")

SERVER = shutil.which("mariadbd") or ("/usr/sbin/mariadbd" if Path("/usr/sbin/mariadbd").exists() else None)
INSTALL_DB = shutil.which("mariadb-install-db")

# The columns of FreePBX's asteriskcdrdb.cdr (FreePBX 16/17), in its order.
CDR_TABLE = """
CREATE TABLE cdr (
  calldate datetime NOT NULL DEFAULT '1970-01-01 00:00:00',
  clid varchar(80) NOT NULL DEFAULT '', src varchar(80) NOT NULL DEFAULT '',
  dst varchar(80) NOT NULL DEFAULT '', dcontext varchar(80) NOT NULL DEFAULT '',
  channel varchar(80) NOT NULL DEFAULT '', dstchannel varchar(80) NOT NULL DEFAULT '',
  lastapp varchar(80) NOT NULL DEFAULT '', lastdata varchar(80) NOT NULL DEFAULT '',
  duration int(11) NOT NULL DEFAULT 0, billsec int(11) NOT NULL DEFAULT 0,
  disposition varchar(45) NOT NULL DEFAULT '', amaflags int(11) NOT NULL DEFAULT 0,
  accountcode varchar(20) NOT NULL DEFAULT '', uniqueid varchar(32) NOT NULL DEFAULT '',
  userfield varchar(255) NOT NULL DEFAULT '', did varchar(50) NOT NULL DEFAULT '',
  recordingfile varchar(255) NOT NULL DEFAULT '', cnum varchar(80) NOT NULL DEFAULT '',
  cnam varchar(80) NOT NULL DEFAULT '', outbound_cnum varchar(80) NOT NULL DEFAULT '',
  outbound_cnam varchar(80) NOT NULL DEFAULT '', dst_cnam varchar(80) NOT NULL DEFAULT '',
  linkedid varchar(32) NOT NULL DEFAULT '', peeraccount varchar(80) NOT NULL DEFAULT '',
  sequence int(11) NOT NULL DEFAULT 0,
  KEY calldate (calldate), KEY dst (dst), KEY accountcode (accountcode), KEY uniqueid (uniqueid)
) DEFAULT CHARSET=utf8mb4
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mariadb(tmp_path_factory):
    if not SERVER or not INSTALL_DB:
        pytest.skip("no MariaDB server installed (Debian: apt-get install mariadb-server)")
    base = tmp_path_factory.mktemp("mariadb")
    datadir = base / "data"
    res = subprocess.run([INSTALL_DB, "--no-defaults", f"--datadir={datadir}", "--user=root",
                          "--skip-test-db", "--auth-root-authentication-method=normal"],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"mariadb-install-db failed: {res.stderr[-300:]}")
    port = free_port()
    server = subprocess.Popen([SERVER, "--no-defaults", f"--datadir={datadir}", f"--socket={base / 'sock'}",
                               f"--port={port}", "--bind-address=127.0.0.1", "--user=root", "--skip-grant-tables",
                               "--skip-log-bin", f"--pid-file={base / 'pid'}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # The server says when it accepts connections; no polling (and no timed waits: the
        # suite also runs under faketime, where those misbehave).
        seen = []
        for line in server.stderr:
            seen.append(line)
            if "ready for connections" in line:
                break
        else:
            pytest.skip(f"mariadbd did not start: {''.join(seen)[-300:]}")
        threading.Thread(target=server.stderr.read, daemon=True).start()  # keep its pipe drained
        conn = pymysql.connect(host="127.0.0.1", port=port, user="root")
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE asteriskcdrdb")
            cur.execute("USE asteriskcdrdb")
            cur.execute(CDR_TABLE)
        conn.commit()
        conn.close()
        yield port
    finally:
        server.terminate()
        server.wait()


def insert(port: int, rows: list[dict]) -> None:
    conn = pymysql.connect(host="127.0.0.1", port=port, user="root", database="asteriskcdrdb")
    with conn.cursor() as cur:
        columns = list(rows[0])
        cur.executemany(f"INSERT INTO cdr ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})",
                        [[r[c] for c in columns] for r in rows])
    conn.commit()
    conn.close()


def test_freepbx_cdr_table_over_a_real_server(tmp_path, mariadb, traces):
    master = tmp_path / "unused.csv"
    master.write_text("")
    s = Setup(tmp_path, master, now=RECORDED - 60)  # installed a minute before the calls ended
    from aftercalld.cdr.config import parse_cdr_setting
    from aftercalld.cdr.sources import make_store

    s.backfill.stores["pbx"] = make_store(
        parse_cdr_setting(f"mysql://aftercalld:pw@127.0.0.1:{mariadb}/asteriskcdrdb", "asterisk"), s.config.timezone)
    assert s.run().recovered == 0  # the first run only notes where to start

    rows = db_rows(traces)
    old = dict(rows[0], calldate=datetime(2026, 12, 5, 9, 0), uniqueid="1796460000.1", linkedid="1796460000.1")
    insert(mariadb, [old, *rows])  # a call that ended two hours before install, and the four calls
    s.clock.now = RECORDED + 60
    result = s.run()
    assert (result.recovered, result.too_old) == (4, 0)
    assert {c["call_id"] for c in s.outbox.calls()} == {
        "1796469765.32", "1796469765.36", "1796469765.40", "1796469765.42"}
    assert s.run().recovered == 0  # nothing new

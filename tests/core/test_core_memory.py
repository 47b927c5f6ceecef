"""Every cache the daemon keeps has a bound set by configuration (issue 13 item 17)."""
from __future__ import annotations

import pytest
from core_helpers import write_config

from aftercalld.config import ConfigError, load
from aftercalld.store import Outbox


def with_general(tmp_path, line: str):
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace('default_region = "GB"\n', f'default_region = "GB"\n{line}\n'))
    return path


def test_the_outbox_page_cache_is_bounded_by_sqlite_cache_mib(tmp_path):
    config = load(with_general(tmp_path, "sqlite_cache_mib = 8"))
    assert config.sqlite_cache_mib == 8
    outbox = Outbox.open(config.outbox_path, cache_mib=config.sqlite_cache_mib)
    try:
        assert outbox.conn.execute("PRAGMA cache_size").fetchone()[0] == -8 * 1024  # KiB
    finally:
        outbox.close()


def test_the_default_outbox_page_cache_is_32_mib(tmp_path):
    config = load(write_config(tmp_path))
    outbox = Outbox.open(config.outbox_path, cache_mib=config.sqlite_cache_mib)
    try:
        assert outbox.conn.execute("PRAGMA cache_size").fetchone()[0] == -32 * 1024
    finally:
        outbox.close()


def test_sqlite_cache_mib_is_validated(tmp_path):
    with pytest.raises(ConfigError, match="general.sqlite_cache_mib: must be at least 1"):
        load(with_general(tmp_path, "sqlite_cache_mib = 0"))


def test_a_daemon_without_api_webhooks_or_postgresql_never_imports_their_libraries(tmp_path):
    """aiohttp alone is about 25 MiB of RSS: a daemon that does not use it must not pay it."""
    import subprocess
    import sys

    program = ("import sys; import aftercalld.cli, aftercalld.daemon, aftercalld.config; "
               "print(sorted({m.split('.')[0] for m in sys.modules} & {'aiohttp', 'psycopg'}))")
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

"""An in-process daemon with the HTTP API on, between an aiohttp client and the SMSC
simulator, and a check of answers against the OpenAPI document."""
from __future__ import annotations

import socket
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
from smsc_sim import SmscSim

from aftercalld.api.openapi import DOCUMENT
from aftercalld.config import load
from aftercalld.daemon import Daemon

TOKEN = "s3cret-token-for-the-crm-0001"
OTHER_TOKEN = "another-token-for-billing-02"
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)

CONFIG = '''
[general]
timezone = "Europe/London"
default_region = "GB"
outbox = "{outbox}"

[transport]
type = "smpp"
hosts = ["127.0.0.1:{smpp_port}"]
system_id = "esme"
password = "secret"
sessions = 1
reconnect_min = 0.05
reconnect_max = 0.2

[templates.missed]
text = "Sorry we missed your call."

[[rules]]
name = "Missed"
recipients = ["caller"]
when = {{ status = "missed" }}
caller = {{ template = "missed", sender = "Acme" }}

[api]
enabled = true
listen = "127.0.0.1:{api_port}"
tokens_file = "{tokens}"
sender = "Acme"
max_body_bytes = 2048
{api_extra}
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_tokens(path: Path, text: str = f"crm:{TOKEN}\nbilling:{OTHER_TOKEN}\n", mode: int = 0o640) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def write_config(tmp_path: Path, smsc: SmscSim, api_extra: str = "", port: int | None = None) -> Path:
    tokens = tmp_path / "api-tokens"
    if not tokens.exists():
        write_tokens(tokens)
    path = tmp_path / "aftercalld.toml"
    path.write_text(CONFIG.format(outbox=tmp_path / "outbox.sqlite3", smpp_port=smsc.port,
                                  api_port=port or free_port(), tokens=tokens, api_extra=api_extra))
    return path


class Api:
    """An aiohttp client on the daemon's API, which checks every answer against the
    OpenAPI document: its status is documented for the route, its body matches the schema."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def call(self, method: str, path: str, *, token: str | None = TOKEN, json: Any = None,
                   data: bytes | None = None, headers: dict[str, str] | None = None,
                   route: str | None = None) -> tuple[int, Any, Any]:
        headers = dict(headers or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        async with self.session.request(method, self.base + path, json=json, data=data, headers=headers) as resp:
            assert resp.content_type == "application/json", (resp.status, await resp.text())
            body = await resp.json()
            check_against_document(method, route or path, resp.status, body)
            return resp.status, body, resp.headers


def check_against_document(method: str, route: str, status: int, body: Any) -> None:
    operation = DOCUMENT["paths"][route][method.lower()]
    responses = operation["responses"]
    assert str(status) in responses, f"{method} {route} answered {status}, which the document does not list"
    schema = responses[str(status)]["content"]["application/json"]["schema"]
    jsonschema.validate(body, {**schema, "components": DOCUMENT["components"]},
                        cls=jsonschema.Draft202012Validator, format_checker=jsonschema.FormatChecker())


@asynccontextmanager
async def running_daemon(config_path: Path, clock=lambda: NOW.timestamp()):
    daemon = Daemon(load(config_path), str(config_path), clock=clock)
    await daemon.start()
    api = daemon.config.api
    assert api is not None
    try:
        async with aiohttp.ClientSession() as session:
            yield daemon, Api(session, f"http://{api.host}:{api.port}")
    finally:
        await daemon.stop()

"""`aftercalld why NUMBER`: found however the PBX wrote the caller id."""
from __future__ import annotations

import pytest
from core_helpers import call, write_config

from aftercalld import cli
from aftercalld.config import load
from aftercalld.pipeline import CallHandler
from aftercalld.store import Outbox


@pytest.fixture
def config_path(tmp_path):
    path = write_config(tmp_path)
    config = load(path)
    outbox = Outbox.open(config.outbox_path)
    handler = CallHandler(config, outbox)
    # The PBX presents the caller in national format; the journal shows the text's E.164.
    handler.handle(call(call_id="missed.1", caller_number="07400123456"))
    handler.handle(call(call_id="answered.1", caller_number="07400123456", status="connected"))  # no rule
    handler.handle(call(call_id="other.1", caller_number="07400999999"))
    outbox.close()
    return path


@pytest.mark.parametrize("number", ["+447400123456", "07400 123456", "447400123456", "00447400123456"])
def test_why_finds_a_callers_calls_in_any_written_form(config_path, capsys, number):
    assert cli.main(["why", "-c", str(config_path), number]) == 0
    out = capsys.readouterr().out
    assert "call main/missed.1 " in out and "caller +447400123456: queued" in out
    assert "call main/answered.1 " in out and "no rule matched" in out.split("call main/answered.1")[1]
    assert "other.1" not in out


def test_why_for_a_number_never_seen(config_path, capsys):
    assert cli.main(["why", "-c", str(config_path), "+447400555555"]) == 1
    assert "no call with id or caller '+447400555555'" in capsys.readouterr().out

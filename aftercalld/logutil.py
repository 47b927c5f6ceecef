"""Logging helpers shared by every module: structured fields and secret hygiene."""
from __future__ import annotations

import logging
from typing import Any


def fields(**kwargs: Any) -> dict[str, Any]:
    """`extra=` for a log call: structured fields (CALL_ID, PBX, RULE, MSG_ID, RECIPIENT,
    STATE …) that the journal handler sends as native journald fields and the text
    formatter ignores. Keys are upper-cased.

    Messages carry their call as the outbox's call key, "pbx/call id"; it is logged as PBX
    and CALL_ID, so `journalctl CALL_ID=1796012880.0` finds the call's decision and every
    message of it alike."""
    out = {k.upper(): v for k, v in kwargs.items() if v not in (None, "")}
    call_id = out.get("CALL_ID")
    if isinstance(call_id, str) and "/" in call_id:
        out.setdefault("PBX", call_id.split("/", 1)[0])
        out["CALL_ID"] = call_id.split("/", 1)[1]
    return {"journal_fields": out}


def redact(value: str | None) -> str:
    """For secrets in log lines: say whether one is set, never what it is."""
    return "<set>" if value else "<empty>"


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)

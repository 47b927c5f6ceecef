"""Logging helpers shared by every module: structured fields and secret hygiene."""
from __future__ import annotations

import logging
from typing import Any


def fields(**kwargs: Any) -> dict[str, Any]:
    """`extra=` for a log call: structured fields (CALL_ID, PBX, RULE, MSG_ID, RECIPIENT,
    STATE …) that the journal handler sends as native journald fields and the text
    formatter ignores. Keys are upper-cased."""
    return {"journal_fields": {k.upper(): v for k, v in kwargs.items() if v not in (None, "")}}


def redact(value: str | None) -> str:
    """For secrets in log lines: say whether one is set, never what it is."""
    return "<set>" if value else "<empty>"


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)

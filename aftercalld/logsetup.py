"""Where log lines go: readable text on stderr (the journal captures it under systemd)."""
from __future__ import annotations

import logging
import sys


class _TextFormatter(logging.Formatter):
    """Text for people; the structured fields ride along for the journal handler only."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")


def setup_logging(level: int = logging.INFO) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_TextFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    # Third-party chatter (panoramisk logs every reconnect attempt) stays below our lines.
    for noisy in ("panoramisk", "asyncio"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))

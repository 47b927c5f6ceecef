"""FreeSWITCH: event-socket client, call tracker, live source and trace replay."""
from __future__ import annotations

from ..pbxconfig import PbxConfig
from ..source import CallSource
from .config import EslSettings, parse_settings
from .source import EslSource
from .trace import iter_trace_calls, iter_trace_events
from .tracker import EslTracker


def make_source(pbx: PbxConfig) -> CallSource:
    """The live source for a ``type = "freeswitch"`` PBX (settings from parse_settings)."""
    return EslSource(pbx)


__all__ = ["EslSettings", "EslSource", "EslTracker", "iter_trace_calls", "iter_trace_events",
           "make_source", "parse_settings"]

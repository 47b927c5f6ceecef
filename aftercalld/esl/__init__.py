"""FreeSWITCH: event-socket client, call tracker, live source and trace replay."""
from __future__ import annotations

from ..clock import Clock, system_clock
from ..pbxconfig import PbxConfig
from ..source import CallSource
from .config import EslSettings, parse_settings
from .source import EslSource
from .trace import iter_trace_calls, iter_trace_events
from .tracker import EslTracker


def make_source(pbx: PbxConfig, clock: Clock = system_clock) -> CallSource:
    """The live source for a ``type = "freeswitch"`` PBX (settings from parse_settings)."""
    return EslSource(pbx, clock=clock)


__all__ = ["EslSettings", "EslSource", "EslTracker", "iter_trace_calls", "iter_trace_events",
           "make_source", "parse_settings"]

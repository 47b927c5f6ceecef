"""Asterisk Manager Interface: live source, call tracker and trace replay.

Public entry points for the core:

* `make_source(pbx)` -- a `CallSource` for one ``[[pbx]]`` with ``type = "asterisk"``;
* `iter_trace_calls(path, pbx)` -- replay a recorded ``.ami`` file through the tracker;
* `parse_settings(section)` (in `aftercalld.ami.config`) -- the AMI keys of a ``[[pbx]]``.
"""
from __future__ import annotations

from ..clock import Clock, system_clock
from ..pbxconfig import PbxConfig
from ..source import CallSource
from .config import AmiSettings, parse_settings
from .trace import iter_trace_calls
from .tracker import CallTracker

__all__ = ["AmiSettings", "CallTracker", "iter_trace_calls", "make_source", "parse_settings"]


def make_source(pbx: PbxConfig, clock: Clock = system_clock) -> CallSource:
    from .source import AmiSource

    return AmiSource(pbx, clock=clock)

"""Issue 13 on the AMI tracker: a bounded number of open calls with a summarised log (13.3),
absurd Timestamp headers (13.9), and calls freed without the cycle collector (13.17)."""
from __future__ import annotations

import gc
import logging
from zoneinfo import ZoneInfo

import pytest
from ami_expected import INBOUND_CONNECTED, TRACES, check_record

from aftercalld.ami.trace import read_trace
from aftercalld.ami.tracker import CallTracker
from aftercalld.pbxconfig import PbxConfig

PBX = PbxConfig(name="pbx", type="asterisk", timezone=ZoneInfo("UTC"), variables=("DEPARTMENT",))


def newchannel(n: int) -> dict[str, str]:
    uid = f"1800000000.{n}"
    return {"Event": "Newchannel", "Channel": f"PJSIP/carrier-{n:08x}", "ChannelStateDesc": "Ring",
            "CallerIDNum": "0612345678", "Context": "from-pstn", "Exten": "0201234567",
            "Uniqueid": uid, "Linkedid": uid}


def test_endless_newchannel_without_hangup_is_capped_and_logged_as_a_summary(caplog):
    tracker = CallTracker(PBX, max_calls=1000)
    with caplog.at_level(logging.WARNING, logger="aftercalld.ami"):
        for n in range(20_000):
            tracker.feed(newchannel(n), 5000.0 + n * 1e-4)  # 20,000 calls in 2 s
        assert tracker.active_calls == 1000 and len(tracker.book.chans) == 1000
        assert tracker.stats["overflow"] == 19_000
        during = [r for r in caplog.records if r.levelno >= logging.WARNING]
        tracker.expire(5000.0 + 11)  # after the summary interval: the rest is summed up
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(during) == 1 and len(lines) == 2, lines
    assert lines[0].startswith("1 call(s) in progress dropped") and "more than 1000 calls open" in lines[0]
    assert lines[1].startswith("18999 call(s) in progress dropped")
    # The newest calls are the ones kept, and still work.
    assert tracker.feed({**newchannel(19_999), "Event": "Hangup", "Cause": "16"}, 5012.0) != []


@pytest.mark.parametrize("stamp", ["inf", "-inf", "nan", "1e308", "-1e308", "1e19", "-5", "soon", ""])
def test_absurd_timestamps_fall_back_to_the_arrival_time(stamp, caplog):
    tracker = CallTracker(PBX)
    records = []
    with caplog.at_level(logging.DEBUG, logger="aftercalld.ami"):
        for ts, ev in read_trace(TRACES / "inbound_connected.ami"):
            records += tracker.feed({**ev, "Timestamp": stamp}, ts)
    (r,) = records  # not lost
    check_record(r, INBOUND_CONNECTED)
    assert r.start_time.timestamp() == pytest.approx(1796012880.40, abs=0.01)  # the arrival time
    assert tracker.stats["errors"] == 0
    assert (tracker.stats["bad_timestamps"] > 0) == (stamp != "")


def _live_objects(kind: str) -> int:
    return sum(1 for o in gc.get_objects()
               if type(o).__name__.lstrip("_") == kind and type(o).__module__.startswith("aftercalld.ami"))


def test_finished_calls_are_freed_without_the_cycle_collector():
    events = list(read_trace(TRACES / "inbound_connected.ami"))
    id_keys = ("Uniqueid", "Linkedid", "DestUniqueid", "DestLinkedid", "UniqueID", "LinkedID")
    tracker = CallTracker(PBX)
    gc.collect()
    gc.disable()
    try:
        emitted = 0
        for k in range(300):
            for ts, ev in events:
                ev = {key: (f"{k}-{v}" if key in id_keys else v) for key, v in ev.items()}
                emitted += len(tracker.feed(ev, ts + k))
        assert emitted == 300
        # Reference counting alone has freed every finished call and channel.
        assert _live_objects("Chan") == 0
        assert _live_objects("Call") == 0
    finally:
        gc.enable()

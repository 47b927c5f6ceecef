"""CI's second run: every Python process of the suite (pytest and each daemon it starts)
lives AFTERCALLD_CI_DAYS_AHEAD days in the future.

time-machine moves the date (time.time, datetime.now, date.today, gmtime/localtime) and
leaves the monotonic clock alone: durations are not dates. libfaketime was tried first and
dropped: with the monotonic clock faked, every timed wait on a condition variable
(threading.Event.wait) sleeps for ever; with it not faked, every time.sleep fails with
EINVAL (libfaketime 0.9.10, Debian 12).
"""
import os

_days = os.environ.get("AFTERCALLD_CI_DAYS_AHEAD")
if _days:
    from datetime import UTC, datetime, timedelta

    import time_machine

    time_machine.travel(datetime.now(UTC) + timedelta(days=float(_days)), tick=True).start()

"""Where the suite's data lives: inside the checkout, so a bare clone tests itself.

``tests/data/traces/`` holds copies of the AMI and ESL streams recorded from real Asterisk
and FreeSWITCH (each folder's README says what each call was). Test modules that need a
path at import time import it from here; tests take the ``traces`` fixture.
"""
from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
TRACES = DATA / "traces"
ASTERISK_TRACES = TRACES / "asterisk"
FREESWITCH_TRACES = TRACES / "freeswitch"
ASTERISK_ACTIONS = TRACES / "asterisk-actions"

# What the package ships for installs (example config, systemd units): aftercalld/data/.
SHIPPED = Path(__file__).resolve().parents[1] / "aftercalld" / "data"

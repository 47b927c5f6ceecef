"""Extensions out of channel names, dial strings and queue interfaces (issue 15.1)."""
from __future__ import annotations

import pytest

from aftercalld.ami.dialstring import extension, extension_from_channel, extension_from_dialstring


@pytest.mark.parametrize("name, ext", [
    ("PJSIP/201-0000002a", "201"), ("SIP/201-00000002", "201"), ("IAX2/201-12345", "201"),
    ("Local/201@from-queue-00000001;1", "201"), ("Local/201@agents-00000011;2", "201"),
    ("pjsip/alice-00000003", "alice"), ("DAHDI/1-1", ""), ("junk", ""), ("", ""),
])
def test_channel_names(name, ext):
    assert extension_from_channel(name) == ext


@pytest.mark.parametrize("dialstring, tech, ext", [
    ("Local/201@from-queue/n", "", "201"),  # every FreePBX queue member
    ("Local/201@agents/n", "", "201"), ("Local/201@agents/nj", "", "201"),
    ("201@agents", "local", "201"),  # DialBegin leaves the technology out for Dial()
    ("PJSIP/201", "", "201"), ("201", "pjsip", "201"),
    ("PJSIP/trunk/sip:0123@host", "", "0123"), ("trunk/sip:0123@host:5060", "pjsip", "0123"),
    ("SIP/trunk/0123", "", "0123"), ("SIP/0123@trunk", "", "0123"),
    ("IAX2/user:secret@peer/1234@ctx", "", "1234"), ("IAX2/peer/1234", "", "1234"), ("IAX2/201", "", "201"),
    ("DAHDI/g1/0123", "", "0123"), ("DAHDI/1", "", ""),
    ("PJSIP/201&PJSIP/202", "", "201"), ("PJSIP/201,20,tT", "", "201"),
])
def test_dial_strings_and_interfaces(dialstring, tech, ext):
    assert extension_from_dialstring(dialstring, tech) == ext


def test_own_extension_first_dial_string_for_trunks():
    is_ext = lambda n: n.isdigit() and 2 <= len(n) <= 6  # noqa: E731
    assert extension("Local/201@from-queue-00000001;1", "Local/201@from-queue/n", is_ext) == "201"
    assert extension("PJSIP/201-0000002a", "201", is_ext) == "201"
    # A follow-me over the carrier trunk: the channel names the trunk, the dial string the number.
    assert extension("PJSIP/carrier-00000009", "carrier/sip:0612345678@carrier", is_ext) == "0612345678"
    assert extension("DAHDI/1-1", "g1/201", is_ext) == "201"

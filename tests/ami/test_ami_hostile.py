"""AMI framing fed what Asterisk never sends: surrogate bytes, endless messages."""
from __future__ import annotations

from aftercalld.ami.protocol import MAX_MESSAGE_BYTES, AmiParser


def test_surrogate_bytes_in_a_caller_name_never_become_surrogates():
    parser = AmiParser()
    (msg,) = parser.feed(b"Event: Newchannel\r\nCallerIDName: Zo\xed\xa0\x80\r\nLinkedid: 1.1\r\n\r\n")
    assert msg["CallerIDName"].startswith("Zo") and "\ud800" not in msg["CallerIDName"]
    msg["CallerIDName"].encode("utf-8")


def test_a_message_without_an_end_is_dropped_and_counted_and_the_next_one_parsed():
    parser = AmiParser()
    for _ in range(5):
        assert parser.feed(b"X" * 100_000) == []
        assert parser.pending <= MAX_MESSAGE_BYTES
    assert parser.dropped_bytes > 0
    (msg,) = parser.feed(b"\r\n\r\nEvent: Hangup\r\nLinkedid: 1.1\r\n\r\n")
    assert msg["Event"] == "Hangup"

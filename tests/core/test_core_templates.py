"""Templates: fallbacks, literal braces, hostile values; encoding and segment counts."""
from __future__ import annotations

import re
from zoneinfo import ZoneInfo

import pytest
from core_helpers import call

from aftercalld.model import Encoding
from aftercalld.rules.encoding import analyse, split_segments
from aftercalld.rules.templates import (
    TemplateError,
    clean_value,
    known_placeholders,
    parse_template,
    template_values,
)

KNOWN = known_placeholders(["ACCOUNTCODE"], {"company": "Acme"})


def render(source: str, **record) -> str:
    values = template_values(call(**record), ZoneInfo("Europe/London"), {"company": "Acme"}, 64)
    return parse_template(source, KNOWN).render(values)


def test_placeholders_fallbacks_and_literal_braces():
    assert render("Hi {caller_name|there}, {company}") == "Hi there, Acme"
    assert render("Hi {caller_name|there}", caller_name="Ann") == "Hi Ann"
    assert render("{{literal}} {agent_name|our team|really}") == "{literal} our team|really"
    assert render("{var.ACCOUNTCODE|none}", variables={"ACCOUNTCODE": "ACME"}) == "ACME"
    assert render("at {start_time} on {start_date} ({weekday})") == "at 10:00 on 2026-11-30 (Monday)"


@pytest.mark.parametrize("source,error", [
    ("{nope}", "unknown placeholder {nope}"),
    ("{caller_name.upper}", "is not a placeholder name"),
    ("{caller_name[0]}", "is not a placeholder name"),
    ("{caller_name:>10}", "is not a placeholder name"),
    ("{0}", "is not a placeholder name"),
    ("oops }", "unmatched '}'"),
    ("{caller_name", "unclosed '{'"),
    ("{var.OTHER}", "unknown placeholder {var.OTHER}"),
])
def test_template_errors(source, error):
    with pytest.raises(TemplateError, match=re.escape(error)):
        parse_template(source, KNOWN)


@pytest.mark.parametrize("hostile", ["{", "}", "{caller_number}", "%s%s%n", "{0.__class__}", "$(reboot)"])
def test_hostile_values_are_inserted_literally(hostile):
    assert render("Hi {caller_name}!", caller_name=hostile) == f"Hi {hostile}!"


def test_emoji_and_rtl_values_survive_and_switch_to_ucs2():
    text = render("Hi {caller_name}", caller_name="שלום 😀")
    assert text == "Hi שלום 😀"
    assert analyse(text).encoding is Encoding.UCS2


def test_control_characters_stripped_and_length_capped():
    assert render("[{caller_name}]", caller_name="Ann\r\nSTOP\x00\x1b") == "[AnnSTOP]"
    long = "é" * 2048
    assert render("{caller_name}", caller_name=long) == "é" * 64
    # cap never leaves a dangling combining mark
    assert clean_value("e\u0301" * 40, 5) == "e\u0301e\u0301e"


@pytest.mark.parametrize("hidden", ["\u202e", "\u2066", "\u200b", "\u2028", "\u2029", "\ufeff", "\u00ad"])
def test_format_and_separator_characters_never_reach_the_sms(hidden):
    """Issue 13 item 12: a bidi override reorders what the recipient reads, a zero-width or
    line separator hides in it."""
    text = render("Hi {caller_name}, call {var.ACCOUNTCODE}", caller_name=f"Ann{hidden}e",
                  variables={"ACCOUNTCODE": f"{hidden}42"})
    assert text == "Hi Anne, call 42"
    assert analyse(text).encoding is Encoding.GSM7


def test_a_lone_surrogate_never_reaches_the_encoder():
    # The CallRecord already replaces it with U+FFFD; a value that bypassed that is stripped.
    assert render("Hi {caller_name}", caller_name="Zo\ud800e") == "Hi Zo\ufffde"
    assert clean_value("Zo\ud800e", 64) == "Zoe"
    assert analyse(render("Hi {caller_name}", caller_name="Zo\ud800e")).encoding is Encoding.UCS2


GSM_EXT = "€"  # an escape pair: two septets


@pytest.mark.parametrize("text,encoding,units,segments", [
    ("a" * 160, Encoding.GSM7, 160, 1),
    ("a" * 161, Encoding.GSM7, 161, 2),
    ("a" * 306, Encoding.GSM7, 306, 2),
    ("a" * 307, Encoding.GSM7, 307, 3),
    ("a" * 158 + GSM_EXT, Encoding.GSM7, 160, 1),
    ("a" * 159 + GSM_EXT, Encoding.GSM7, 161, 2),
    ("é" * 70 + "", Encoding.GSM7, 70, 1),  # é is in the GSM basic table
    ("ą" * 70, Encoding.UCS2, 70, 1),
    ("ą" * 71, Encoding.UCS2, 71, 2),
    ("ą" * 134, Encoding.UCS2, 134, 2),
    ("ą" * 135, Encoding.UCS2, 135, 3),
    ("😀" * 35, Encoding.UCS2, 70, 1),
    ("a" + "😀" * 35, Encoding.UCS2, 71, 2),
    ("`", Encoding.UCS2, 1, 1),  # backtick is not GSM (smpplib would send §)
])
def test_encoding_choice_and_segment_boundaries(text, encoding, units, segments):
    result = analyse(text)
    assert (result.encoding, result.units, result.segments) == (encoding, units, segments)


def test_split_never_cuts_an_escape_pair_or_surrogate_pair():
    # 152 plain + € would straddle the 153-septet boundary: € must move whole to part 2.
    text = "a" * 152 + GSM_EXT + "b" * 10
    parts = split_segments(text, Encoding.GSM7)
    assert parts == ["a" * 152, GSM_EXT + "b" * 10]
    emoji = "x" + "😀" * 40
    parts = split_segments(emoji, Encoding.UCS2)
    assert "".join(parts) == emoji
    assert all(len(p.encode("utf-16-be")) // 2 <= 67 for p in parts)
    assert parts[0] == "x" + "😀" * 33  # 67 units; the 34th emoji would need 68
    # 16-bit reference: 152 septets per part
    assert [len(p) for p in split_segments("a" * 400, Encoding.GSM7, udh_16bit_ref=True)] == [152, 152, 96]

"""Phone numbers: is this something we may text, and in which E.164 form?

Every number a rule would text passes through `PhoneRules.check`. What cannot or must not
be texted comes back with a reason that ends up as ``suppressed(reason)`` in the outbox.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import phonenumbers
from phonenumbers import PhoneNumberType
from phonenumbers.phonemetadata import PhoneMetadata
from phonenumbers.phonenumberutil import _number_type_helper  # pinned <10; see _check

from .textsafety import bounded

# What PBXs and carriers put in caller id when the number is withheld.
_ANONYMOUS = {
    "", "anonymous", "unknown", "<unknown>", "restricted", "private", "withheld",
    "unavailable", "blocked", "0000000000", "asterisk", "s",
}

_NOT_TEXTABLE_TYPES = {
    PhoneNumberType.FIXED_LINE: "landline: cannot receive SMS",
    PhoneNumberType.PREMIUM_RATE: "premium-rate number",
    PhoneNumberType.TOLL_FREE: "toll-free number",
    PhoneNumberType.SHARED_COST: "shared-cost number",
    PhoneNumberType.PAGER: "pager number",
    PhoneNumberType.UAN: "universal access number",
}

_DIAL_CHARS = re.compile(r"[\s().\-/]")


@dataclass(frozen=True, slots=True)
class PhoneCheck:
    e164: str | None  # set when the number may be texted
    reason: str = ""  # why not, when e164 is None
    region: str = ""


# Longer than any dialable number written with spaces, dashes and a prefix (E.164 has at
# most 15 digits): anything longer is refused before it reaches the cache or the parser.
MAX_NUMBER_LENGTH = 64
# Checks remembered per PhoneRules ([general] phone_cache_size): repeat callers and the
# agents' mobiles hit it; a flood of distinct caller ids cannot grow it past this.
DEFAULT_CACHE_SIZE = 4096


@dataclass(frozen=True)
class PhoneRules:
    default_region: str  # ISO 3166 alpha-2, e.g. "GB"
    # Extensions are short; anything this short or shorter is internal and never texted.
    max_extension_digits: int = 6
    # Destination countries we text; default: the home region only (SMS-pumping defence).
    allowed_regions: frozenset[str] = frozenset()
    allow_landlines: bool = False
    cache_size: int = field(default=DEFAULT_CACHE_SIZE, compare=False)
    _cached: Callable[[str], PhoneCheck] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # One bounded cache per rule set, keyed on the raw number alone (a reload builds
        # new rules and so starts a new cache).
        object.__setattr__(self, "_cached", lru_cache(maxsize=self.cache_size)(self._check_uncached))

    def check(self, raw: str) -> PhoneCheck:
        if len(raw) > MAX_NUMBER_LENGTH:
            return PhoneCheck(None, f"not a phone number: {_shown(raw)}")
        return self._cached(raw)

    def cache_entries(self) -> int:
        return self._cached.cache_info().currsize  # type: ignore[attr-defined]

    def _check_uncached(self, raw: str) -> PhoneCheck:
        return _check(self, raw)


def _shown(raw: str) -> str:
    """A refused number for the reason: the start of it, not all of it."""
    if len(raw) <= 32:
        return repr(bounded(raw))
    return f"{bounded(raw, 24)!r}… ({len(raw)} characters)"


def _check(rules: PhoneRules, raw: str) -> PhoneCheck:
    value = _DIAL_CHARS.sub("", (raw or "").strip())
    if value.lower() in _ANONYMOUS:
        return PhoneCheck(None, "anonymous or withheld caller id")
    if value.startswith("00"):
        value = "+" + value[2:]
    digits = value.lstrip("+")
    if not digits.isdigit():
        return PhoneCheck(None, f"not a phone number: {_shown(raw)}")
    if not value.startswith("+") and len(digits) <= rules.max_extension_digits:
        return PhoneCheck(None, "internal extension")
    try:
        parsed = phonenumbers.parse(value, rules.default_region)
    except phonenumbers.NumberParseException as exc:
        return PhoneCheck(None, f"invalid number: {exc._msg}")
    # One region lookup and one type match instead of the two of each that
    # is_valid_number() + number_type() cost: with +1 that lookup walks 25 NANPA regions.
    region = phonenumbers.region_code_for_number(parsed) or ""
    metadata = (PhoneMetadata.metadata_for_region_or_calling_code(parsed.country_code, region)
                if region and parsed.country_code is not None else None)
    number_type = (
        _number_type_helper(phonenumbers.national_significant_number(parsed), metadata)
        if metadata is not None else PhoneNumberType.UNKNOWN
    )
    if number_type == PhoneNumberType.UNKNOWN:
        return PhoneCheck(None, "invalid number")
    allowed = rules.allowed_regions or frozenset({rules.default_region})
    if "*" not in allowed and region not in allowed:
        return PhoneCheck(None, f"destination country {region or '?'} not allowed", region)
    if number_type in _NOT_TEXTABLE_TYPES and not (
        rules.allow_landlines and number_type == PhoneNumberType.FIXED_LINE
    ):
        return PhoneCheck(None, _NOT_TEXTABLE_TYPES[number_type], region)
    return PhoneCheck(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164), "", region)


def normalise_for_list(raw: str, default_region: str) -> str | None:
    """E.164 for opt-out/DND list entries (validity not required: a list entry for an
    odd number must still match that number)."""
    value = _DIAL_CHARS.sub("", (raw or "").strip())
    if value.startswith("00"):
        value = "+" + value[2:]
    try:
        parsed = phonenumbers.parse(value, default_region)
    except phonenumbers.NumberParseException:
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def caller_id_forms(e164: str) -> list[str]:
    """The ways a PBX may have written this number as a caller id: as E.164, without the
    +, after 00, as the national number alone, and after the national (trunk) prefix.
    Calls are stored with the caller id as the PBX gave it, and support staff search by
    the E.164 number the journal shows for the text."""
    try:
        parsed = phonenumbers.parse(e164)
    except phonenumbers.NumberParseException:
        return [e164]
    national = phonenumbers.national_significant_number(parsed)
    forms = [e164, e164.lstrip("+"), "00" + e164.lstrip("+"), national]
    region = phonenumbers.region_code_for_number(parsed)
    metadata = PhoneMetadata.metadata_for_region(region) if region else None
    if metadata is not None and metadata.national_prefix:
        forms.append(metadata.national_prefix + national)
    return list(dict.fromkeys(forms))

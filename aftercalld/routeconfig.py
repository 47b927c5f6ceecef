"""The `[[route]]` tables: which transports a text may leave by, in failover order.

A route matches a text by its destination (E.164 prefixes, countries) and the rule that
made it; every condition it gives must hold, any value of a list may. The first route that
matches wins; a text no route matches may use every transport, in config order.
"""
from __future__ import annotations

import functools
import json
from collections.abc import Collection
from dataclasses import dataclass

import phonenumbers

from .configreader import DependsOnFailedPart, Problems, Section

# How often a route names a country whose numbers it has seen: the cache keeps the region
# lookup (a phonenumbers parse, ~20 µs) off the hot path for repeat destinations.
_REGION_CACHE_SIZE = 4096


@dataclass(frozen=True)
class Route:
    name: str
    transports: tuple[str, ...]  # failover order
    prefixes: tuple[str, ...] = ()  # "+44", "+3538": E.164 with the +
    countries: frozenset[str] = frozenset()  # ISO 3166 alpha-2, as libphonenumber names regions
    rules: frozenset[str] = frozenset()

    def matches(self, destination: str, rule: str) -> bool:
        if self.rules and rule not in self.rules:
            return False
        if self.prefixes and not destination.startswith(self.prefixes):
            return False
        return not self.countries or region_of(destination) in self.countries


@functools.lru_cache(maxsize=_REGION_CACHE_SIZE)
def region_of(destination: str) -> str:
    """The ISO 3166 region of an E.164 number ("GB"), or "" when it has none."""
    try:
        number = phonenumbers.parse(destination, None)
    except phonenumbers.NumberParseException:
        return ""
    return phonenumbers.region_code_for_number(number) or ""


def route_path(name: str) -> str:
    """How errors name a route: by its name, as they name rules."""
    return f"route[{json.dumps(name, ensure_ascii=False)}]"


def parse_routes(root: Section, transport_names: Collection[str] | None,
                 rule_names: Collection[str] | None) -> tuple[Route, ...]:
    """Every `[[route]]`; a name that is unknown is an error naming the defined ones.
    `transport_names`/`rule_names` None: those parts failed, so names are not checked."""
    problems = root.problems
    assert problems is not None  # parse() gives every section the file's Problems
    routes: list[Route] = []
    seen: set[str] = set()
    for index, sec in enumerate(root.sections("route")):
        route = problems.attempt(
            functools.partial(_route, sec, index, transport_names, rule_names, seen, problems), None)
        if route is not None:
            routes.append(route)
    return tuple(routes)


def _route(sec: Section, index: int, transport_names: Collection[str] | None, rule_names: Collection[str] | None,
           seen: set[str], problems: Problems) -> Route:
    errors_before = len(problems.errors)
    name = problems.attempt(lambda: sec.str("name", f"route {index + 1}", nonempty=True), None)
    if name is not None:
        if name in seen:
            problems.add(sec.error("name", f'duplicate route name "{name}"'))
        else:
            seen.add(name)
            if sec.has("name"):  # an unnamed one is named by its place: route[2]
                sec.renamed(route_path(name))
    transports = problems.attempt(lambda: sec.str_list("transports"), None) or []
    if sec.has("transports") and not sec.data["transports"]:
        problems.add(sec.error("transports", "must list at least one transport, in failover order"))
    for i, transport in enumerate(transports):
        if transport in transports[:i]:
            problems.add(sec.error("transports", f'"{transport}" is listed twice'))
        elif transport_names is not None and transport not in transport_names:
            problems.add(sec.error("transports", f'unknown transport "{transport}" '
                                                 f'(defined: {", ".join(transport_names)})'))
    prefixes: list[str] = []
    for prefix in problems.attempt(lambda: sec.str_list("prefixes", []), []):
        digits = prefix.strip().removeprefix("+")
        if not digits.isdigit() or len(digits) > 15:
            problems.add(sec.error("prefixes", f'"{prefix}" is not the start of an international number '
                                               f'(digits after +, such as "+44" or "+447700")'))
        else:
            prefixes.append("+" + digits)
    countries: list[str] = []
    for code in problems.attempt(lambda: sec.str_list("countries", []), []):
        if code.upper() not in phonenumbers.SUPPORTED_REGIONS:
            problems.add(sec.error("countries", f'"{code}" is not an ISO 3166 region code (such as "GB")'))
        else:
            countries.append(code.upper())
    rules: list[str] = problems.attempt(lambda: sec.str_list("rules", []), [])
    if rule_names is not None:
        for rule in rules:
            if rule not in rule_names:
                problems.add(sec.error("rules", f'unknown rule "{rule}" '
                                                f'(defined: {", ".join(rule_names) or "none"})'))
    sec.done()
    if len(problems.errors) > errors_before or name is None:
        raise DependsOnFailedPart
    return Route(name, tuple(transports), tuple(prefixes), frozenset(countries), frozenset(rules))

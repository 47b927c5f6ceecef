"""[replies], each rule's `replies = [...]` and [keywords.<language>]: where customers'
replies go and which words act on their own (STOP, START, HELP) in which language."""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .configreader import DependsOnFailedPart, Section
from .rules.templates import Template, TemplateError, parse_template

AGENT = "agent"
WEBHOOK_PREFIX = "webhook:"
FORWARD_PLACEHOLDERS = frozenset({"number", "text", "call_id", "rule", "caller_name", "agent_name"})
DEFAULT_FORWARD_TEXT = "Reply from {number}: {text}"
_NUMBER = re.compile(r"\+?[0-9][0-9 ()./-]{2,24}")
_LANGUAGE = re.compile(r"[a-z]{2,3}([-_][A-Za-z0-9]{2,8})?")


@dataclass(frozen=True)
class KeywordSet:
    language: str  # "" for the words of [optout]
    stop: frozenset[str]
    start: frozenset[str]
    help: frozenset[str]
    help_text: str  # the auto-answer to a HELP word of this set; "" answers nothing


@dataclass(frozen=True)
class KeywordMatch:
    action: str  # "stop", "start" or "help"
    word: str
    keywords: KeywordSet


@dataclass(frozen=True)
class RepliesConfig:
    default: tuple[str, ...] = ()  # for replies to no text, or to a rule without `replies`
    by_rule: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    forward_text: Template = field(default_factory=lambda: parse_template(DEFAULT_FORWARD_TEXT,
                                                                          FORWARD_PLACEHOLDERS))
    sender: str = ""  # "" : the sender of the text the reply answers
    max_segments: int = 3
    help_cooldown_seconds: float = 86400.0
    languages: tuple[KeywordSet, ...] = ()  # [keywords.<language>], after [optout]'s words

    def routes_for(self, rule: str | None) -> tuple[str, ...]:
        if rule is not None and rule in self.by_rule:
            return self.by_rule[rule]
        return self.default


def keyword_sets(optout: Any, replies: RepliesConfig) -> tuple[KeywordSet, ...]:
    base = KeywordSet("", optout.stop_keywords, optout.start_keywords, optout.help_keywords, optout.help_text)
    return (base, *replies.languages)


def match_keyword(word: str, sets: tuple[KeywordSet, ...]) -> KeywordMatch | None:
    for keywords in sets:
        for action, words in (("stop", keywords.stop), ("start", keywords.start), ("help", keywords.help)):
            if word in words:
                return KeywordMatch(action, word, keywords)
    return None


def parse_replies(root: Section, optout: Any, webhook_names: set[str] | None) -> RepliesConfig:
    """`webhook_names` None: the [[webhook]] tables failed, so "webhook:NAME" is not checked."""
    problems = root.problems
    assert problems is not None
    errors_before = len(problems.errors)
    sec = root.section("replies")
    default = _targets(sec, "default", webhook_names)
    text = sec.str("forward_text", DEFAULT_FORWARD_TEXT, nonempty=True)
    try:
        forward = parse_template(text, FORWARD_PLACEHOLDERS)
    except TemplateError as exc:
        sec.report("forward_text", f"{exc} (placeholders: {', '.join(sorted(FORWARD_PLACEHOLDERS))})")
        forward = parse_template(DEFAULT_FORWARD_TEXT, FORWARD_PLACEHOLDERS)
    sender = sec.str("sender", "")
    if sender:
        from .config import sender_problem  # config imports this module: only here, at parse time

        problem = sender_problem(sender)
        if problem:
            sec.report("sender", problem)
    max_segments = sec.int("max_segments", 3, min=1, max=10)
    cooldown = sec.float("help_cooldown_minutes", 1440.0, min=0)
    sec.done()
    by_rule: dict[str, tuple[str, ...]] = {}
    rules = root.data.get("rules")
    for i, data in enumerate(rules if isinstance(rules, list) else []):
        if not isinstance(data, dict) or "replies" not in data:
            continue
        name = data.get("name")
        path = f'rules[{name!r}]'.replace("'", '"') if isinstance(name, str) else f"rules[{i}]"
        rule_sec = Section(data, path, root.file, problems)
        targets = _targets(rule_sec, "replies", webhook_names)
        if isinstance(name, str):
            by_rule[name] = targets
    languages = _languages(root, optout)
    if len(problems.errors) > errors_before:
        raise DependsOnFailedPart
    return RepliesConfig(default, by_rule, forward, sender, max_segments, cooldown * 60, languages)


def _targets(sec: Section, key: str, webhook_names: set[str] | None) -> tuple[str, ...]:
    targets = sec.str_list(key, [])
    for target in targets:
        if target == AGENT:
            continue
        if target.startswith(WEBHOOK_PREFIX):
            name = target[len(WEBHOOK_PREFIX):]
            if webhook_names is not None and name not in webhook_names:
                defined = ", ".join(sorted(webhook_names)) or "none"
                sec.report(key, f'"{target}": no [[webhook]] is named "{name}" (defined: {defined})')
        elif not _NUMBER.fullmatch(target):
            sec.report(key, f'"{target}" is neither "agent", "webhook:NAME" nor a phone number')
    return tuple(dict.fromkeys(targets))


def _words(sec: Section, key: str) -> frozenset[str]:
    return frozenset(w.strip().upper() for w in sec.str_list(key, []) if w.strip())


def _languages(root: Section, optout: Any) -> tuple[KeywordSet, ...]:
    table = root.section("keywords")
    seen: dict[str, str] = {}  # word -> where it is already a keyword
    for action, words in (("stop", optout.stop_keywords), ("start", optout.start_keywords),
                          ("help", optout.help_keywords)):
        for word in words:
            seen.setdefault(word, f"[optout] {action}")
    out = []
    for language in list(table.data):
        sec = table.section(language)
        if not _LANGUAGE.fullmatch(language):
            table.report(language, f'"{language}" is not a language code such as "de" or "pt-BR"')
        stop, start, help_ = _words(sec, "stop"), _words(sec, "start"), _words(sec, "help")
        for action, words in (("stop", stop), ("start", start), ("help", help_)):
            for word in sorted(words):
                where = seen.get(word)
                if where is not None and not where.endswith(f" {action}"):
                    sec.report(action, f'"{word}" is already {where}: one word, one action')
                seen.setdefault(word, f"[keywords.{language}] {action}")
        help_text = sec.str("help_text", "")
        if help_ and not help_text.strip():
            sec.report("help_text", "help words are given but no help_text to answer them with")
        sec.done()
        out.append(KeywordSet(language, stop, start, help_, help_text))
    table.done()
    return tuple(out)

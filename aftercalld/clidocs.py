"""The man page and the shell completion, generated from the argparse definitions so that
they can never disagree with the program: `aftercalld man`, `aftercalld completion bash|zsh`.
"""
from __future__ import annotations

import argparse
import shlex
from datetime import date

from . import __version__

EXIT_STATUS = (
    ("0", "success"),
    ("1", "a runtime failure: the PBX, the SMSC or the outbox could not be used, or the daemon is not running"),
    ("2", "a bad config file or bad command-line usage; the message names the file, the key and the reason"),
)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


def _positionals(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not a.option_strings and not isinstance(a, argparse._SubParsersAction)]


# -- man page ---------------------------------------------------------------------------

def _roff(text: str) -> str:
    """Plain text as roff: backslashes and hyphens escaped, no line starting with . or '."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line[:1] in (".", "'") else line for line in text.splitlines())


def _option_line(action: argparse.Action) -> str:
    names = ", ".join(f"\\fB{_roff(s)}\\fR" for s in action.option_strings)
    if action.nargs == 0:
        return names
    metavar = action.metavar or (action.dest.upper() if not action.choices else "{" + ",".join(action.choices) + "}")
    return f"{names} \\fI{_roff(str(metavar))}\\fR"


def _name(action: argparse.Action) -> str:
    return action.metavar if isinstance(action.metavar, str) else action.dest


def _help(action: argparse.Action) -> str:
    text = action.help if action.help and action.help != argparse.SUPPRESS else ""
    if action.choices and not action.option_strings:
        text = (text + " " if text else "") + "One of: " + ", ".join(map(str, action.choices)) + "."
    return _roff(text)


def man_page(parser: argparse.ArgumentParser, today: date) -> str:
    out = [
        f'.TH AFTERCALLD 1 "{today.isoformat()}" "aftercalld {__version__}" "User Commands"',
        ".SH NAME",
        "aftercalld \\- after\\-call SMS for Asterisk and FreeSWITCH",
        ".SH SYNOPSIS",
        "\\fBaftercalld\\fR [\\fB\\-c\\fR \\fIFILE\\fR] [\\fB\\-v\\fR] \\fICOMMAND\\fR [\\fIOPTIONS\\fR]",
        ".SH DESCRIPTION",
        _roff(parser.description or ""),
        ".PP",
        _roff("aftercalld listens to hangup events from the Asterisk Manager Interface or the FreeSWITCH "
              "event socket, classifies every finished call as connected, missed or voicemail, picks the "
              "first matching rule, and sends the rendered text over SMPP or a GSM modem, recording "
              "delivery reports in its outbox. The README is the full manual."),
        ".SH OPTIONS",
        _roff("These go before or after the command."),
    ]
    for action in _options(parser):
        out += [".TP", _option_line(action), _help(action)]
    out.append(".SH COMMANDS")
    for name, sub in _subcommands(parser).items():
        usage = " ".join(f"\\fI{_roff(_name(a))}\\fR" + ("..." if a.nargs in ("*", "+") else "")
                         for a in _positionals(sub))
        out += [".SS " + f"\\fB{_roff(name)}\\fR {usage}".rstrip(), _roff(sub.description or "")]
        for action in _positionals(sub):
            out += [".TP", f"\\fI{_roff(_name(action))}\\fR", _help(action)]
        for action in _options(sub):
            if action.dest in ("config", "verbose"):
                continue  # the global options, described once above
            out += [".TP", _option_line(action), _help(action)]
    out.append(".SH EXIT STATUS")
    for code, meaning in EXIT_STATUS:
        out += [".TP", f"\\fB{code}\\fR", _roff(meaning)]
    out += [
        ".SH ENVIRONMENT",
        ".TP", "\\fBAFTERCALLD_CONFIG\\fR", _roff("The config file when -c is not given."),
        ".SH FILES",
        ".TP", "\\fI/etc/aftercalld/aftercalld.toml\\fR",
        _roff("The config file; `aftercalld files aftercalld.example.toml` prints a commented example."),
        ".TP", "\\fI/var/lib/aftercalld/outbox.sqlite3\\fR",
        _roff("The outbox: every call, every message and its delivery reports, the opt-out and DND lists."),
        ".SH SEE ALSO",
        "\\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1), \\fBsystemd.service\\fR(5)",
    ]
    return "\n".join(out) + "\n"


# -- completion ------------------------------------------------------------------------

def _words(items) -> str:
    return shlex.quote(" ".join(items))


def bash_completion(parser: argparse.ArgumentParser) -> str:
    """A completion function that needs no bash-completion package: commands, each
    command's options and fixed choices, and file names where a file is wanted."""
    subs = _subcommands(parser)
    global_opts = [s for a in _options(parser) for s in a.option_strings]
    file_options = {s for sub in subs.values() for a in _options(sub) for s in a.option_strings
                    if a.dest in ("config", "call", "outbox", "root")}
    value_options = {s for sub in [parser, *subs.values()] for a in _options(sub) for s in a.option_strings
                     if a.nargs != 0}
    cases = []
    for name, sub in subs.items():
        opts = [s for a in _options(sub) for s in a.option_strings] + ["--help"]
        choices = [c for a in _positionals(sub) if a.choices for c in a.choices]
        files = any(not a.choices for a in _positionals(sub))
        choice_opts = {s: list(a.choices) for a in _options(sub) if a.choices for s in a.option_strings}
        lines = [f"        {shlex.quote(name)})"]
        for opt, values in choice_opts.items():
            lines.append(f'            if [[ $prev == {shlex.quote(opt)} ]]; then '
                         f'COMPREPLY=($(compgen -W {_words(values)} -- "$cur")); return; fi')
        lines.append(f'            if [[ $cur == -* ]]; then COMPREPLY=($(compgen -W {_words(opts)} -- "$cur")); '
                     f'return; fi')
        if choices:
            lines.append(f'            if (( npos == 0 )); then COMPREPLY=($(compgen -W {_words(choices)} -- "$cur")); '
                         f'return; fi')
        if files:
            lines.append('            COMPREPLY=($(compgen -f -- "$cur"))')
        lines.append("            ;;")
        cases.append("\n".join(lines))
    return f"""# bash completion for aftercalld {__version__}; generated by `aftercalld completion bash`
_aftercalld() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}}
    local cmd="" npos=0 i word
    for (( i = 1; i < COMP_CWORD; i++ )); do
        word=${{COMP_WORDS[i]}}
        case " {' '.join(sorted(value_options))} " in
            *" $word "*) (( i++ )); continue ;;
        esac
        [[ $word == -* ]] && continue
        if [[ -z $cmd ]]; then cmd=$word; else (( npos++ )); fi
    done
    case " {' '.join(sorted(file_options))} " in
        *" $prev "*) COMPREPLY=($(compgen -f -- "$cur")); return ;;
    esac
    if [[ -z $cmd ]]; then
        if [[ $cur == -* ]]; then
            COMPREPLY=($(compgen -W {_words(global_opts + ['--help', '--version'])} -- "$cur"))
        else
            COMPREPLY=($(compgen -W {_words(subs)} -- "$cur"))
        fi
        return
    fi
    case $cmd in
{chr(10).join(cases)}
    esac
}}
complete -o filenames -F _aftercalld aftercalld
"""


def zsh_completion(parser: argparse.ArgumentParser) -> str:
    return ("# zsh completion for aftercalld; generated by `aftercalld completion zsh`\n"
            "autoload -U +X bashcompinit && bashcompinit\n" + bash_completion(parser))

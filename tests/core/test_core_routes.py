"""[[transport]] and [[route]]: how they load, what they refuse, which route a text takes."""
from __future__ import annotations

import subprocess
import sys

import pytest
from core_helpers import DEFAULT_RULES, write_config

from aftercalld.config import load
from aftercalld.configreader import ConfigError
from aftercalld.daemon import make_transport
from aftercalld.logtransport import LogTransport
from aftercalld.model import OutcomeKind
from aftercalld.routing import RoutedTransport

TWO = '''
[[transport]]
name = "primary"
type = "log"
failover_after = 5

[[transport]]
name = "backup"
type = "log"
'''


def routed_config(tmp_path, transports: str = TWO, routes: str = "", rules: str = DEFAULT_RULES):
    path = write_config(tmp_path, rules=rules + routes)
    path.write_text(path.read_text().replace('[transport]\ntype = "log"\n', transports))
    return path


def test_single_transport_table_keeps_working_named_after_its_type(tmp_path):
    config = load(write_config(tmp_path))
    assert [(t.label, t.type) for t in config.all_transports] == [("log", "log")]
    assert config.routes == ()
    transport = make_transport(config)
    assert isinstance(transport, LogTransport) and transport.name == "log"  # the hot path: no routing layer


def test_named_transports_and_routes_load(tmp_path):
    routes = '''
[[route]]
name = "uk"
prefixes = ["+44", "4420"]
transports = ["backup", "primary"]

[[route]]
name = "ireland missed"
countries = ["ie"]
rules = ["Missed"]
transports = ["primary"]
'''
    config = load(routed_config(tmp_path, routes=routes))
    assert [(t.label, t.failover_after) for t in config.all_transports] == [("primary", 5.0), ("backup", 30.0)]
    assert config.transport.label == "primary"
    uk, ireland = config.routes
    assert uk.prefixes == ("+44", "+4420") and uk.transports == ("backup", "primary")
    assert ireland.countries == frozenset({"IE"}) and ireland.rules == frozenset({"Missed"})
    transport = make_transport(config)
    assert isinstance(transport, RoutedTransport)
    assert [m.name for m in transport.members] == ["primary", "backup"]


@pytest.mark.parametrize("transports,routes,key,reason", [
    (TWO, '[[route]]\nname = "uk"\nprefixes = ["+44"]\ntransports = ["primary", "secondary"]\n',
     'route["uk"].transports', 'unknown transport "secondary" (defined: primary, backup)'),
    (TWO, '[[route]]\ntransports = ["primary", "primary"]\n', "route[0].transports", '"primary" is listed twice'),
    (TWO, '[[route]]\nname = "x"\ntransports = []\n', 'route["x"].transports', "must list at least one"),
    (TWO, '[[route]]\nname = "x"\nprefixes = []\n', 'route["x"].transports', "missing (required)"),
    (TWO, '[[route]]\nname = "x"\nprefixes = ["+44x"]\ntransports = ["backup"]\n', 'route["x"].prefixes',
     '"+44x" is not the start of an international number'),
    (TWO, '[[route]]\nname = "x"\ncountries = ["UK"]\ntransports = ["backup"]\n', 'route["x"].countries',
     '"UK" is not an ISO 3166 region code'),
    (TWO, '[[route]]\nname = "x"\nrules = ["Mised"]\ntransports = ["backup"]\n', 'route["x"].rules',
     'unknown rule "Mised" (defined: Missed)'),
    (TWO, '[[route]]\nname = "x"\ntransport = ["backup"]\n', 'route["x"].transport', "unknown key"),
    (TWO + '[[transport]]\nname = "primary"\ntype = "log"\n', "", "transport[2].name",
     'duplicate transport name "primary"'),
    (TWO.replace('failover_after = 5', 'failover_after = 0'), "", "transport[0].failover_after",
     "must be at least 0.1"),
    (TWO.replace('failover_after = 5', 'failover_after = "30s"'), "", "transport[0].failover_after",
     "must be a number"),
    (TWO.replace('name = "backup"\n', ''), "", "transport[1].name", "missing (required)"),
    (TWO.replace('type = "log"\nfailover_after', 'type = "kannel"\nfailover_after'), "", "transport[0].type",
     'unknown value "kannel"'),
    (TWO + '[[transport]]\nname = "smsc"\ntype = "smpp"\nhosts = ["h"]\nsystem_id = "x"\nwindoww = 3\n', "",
     "transport[2].windoww", "unknown key"),
    ('[transport]\ntype = "log"\nfailover_after = 5\n', "", "transport.failover_after", "unknown key"),
    ('[transport]\ntype = "log"\n', '[[route]]\nname = "x"\ntransports = ["primary"]\n', 'route["x"].transports',
     'unknown transport "primary" (defined: log)'),
])
def test_bad_transports_and_routes_name_file_key_and_reason(tmp_path, transports, routes, key, reason):
    path = routed_config(tmp_path, transports=transports, routes=routes)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert any(e.key == key and reason in e.reason for e in info.value.errors), str(info.value)
    assert str(info.value).startswith(f"{path}: ")


def test_check_config_names_every_transport_and_route(tmp_path):
    path = routed_config(tmp_path, routes='[[route]]\nname = "uk"\nprefixes = ["+44"]\ntransports = ["backup"]\n')
    res = subprocess.run([sys.executable, "-m", "aftercalld.cli", "check-config", str(path)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "transports primary (log), backup (log), 1 route(s)" in res.stdout


async def test_first_matching_route_wins_and_others_use_every_transport_in_order(tmp_path):
    routes = '''
[[route]]
name = "uk mobiles to backup"
prefixes = ["+447"]
transports = ["backup"]

[[route]]
name = "ireland"
countries = ["IE"]
transports = ["backup", "primary"]

[[route]]
name = "all of the UK"
prefixes = ["+44"]
transports = ["primary"]

[[route]]
name = "other rules"
rules = ["Missed"]
transports = ["primary", "backup"]
'''
    rules = DEFAULT_RULES + DEFAULT_RULES.replace('"Missed"', '"Other"')
    config = load(routed_config(tmp_path, routes=routes.replace('"Missed"]', '"Other"]'), rules=rules))
    transport = make_transport(config)
    assert isinstance(transport, RoutedTransport)

    def names(destination: str, rule: str = "Missed") -> list[str]:
        from smpp_util import message

        m = message(destination=destination)
        m.rule = rule
        return [member.name for member in transport.route_for(m)]

    assert names("+447700900123") == ["backup"]
    assert names("+442071234567") == ["primary"]  # the first route's prefix does not hold
    assert names("+353861234567") == ["backup", "primary"]  # Ireland, by country
    assert names("+12025550123", rule="Other") == ["primary", "backup"]
    assert names("+12025550123") == ["primary", "backup"]  # no route: every transport, config order


async def test_log_transports_behind_routes_send_and_say_which(tmp_path):
    from smpp_util import Events, message

    config = load(routed_config(tmp_path, routes='[[route]]\nprefixes = ["+44"]\ntransports = ["backup"]\n'))
    transport = make_transport(config)
    assert isinstance(transport, RoutedTransport)
    await transport.start(Events())
    try:
        uk = await transport.send(message(destination="+447700900123"))
        us = await transport.send(message(destination="+12025550123"))
        assert (uk.kind, uk.via, us.kind, us.via) == (OutcomeKind.SUBMITTED, "backup", OutcomeKind.SUBMITTED,
                                                      "primary")
        status = transport.status()
        assert [(t["name"], t["submitted"], t["up"]) for t in status["transports"]] == [
            ("primary", 1, True), ("backup", 1, True)]
    finally:
        await transport.close()


def test_shipped_routes_example_loads_into_the_example_config():
    import tomllib

    from testdata import SHIPPED

    from aftercalld.config import parse

    data = tomllib.loads((SHIPPED / "aftercalld.example.toml").read_text())
    fragment = tomllib.loads((SHIPPED / "examples" / "routes.toml").read_text())
    data["transport"], data["route"] = fragment["transport"], fragment["route"]
    config = parse(data, "example+routes")
    assert [(t.label, t.type) for t in config.all_transports] == [
        ("primary", "smpp"), ("secondary", "smpp"), ("modem", "modem")]
    assert [r.name for r in config.routes] == ["Ireland by provider B", "UK mobiles", "Agents by modem"]
    transport = make_transport(config)
    assert isinstance(transport, RoutedTransport) and transport.max_in_flight == 10 + 10 + 1


async def test_status_and_metrics_show_each_transport(tmp_path, capsys):
    from prometheus_client import generate_latest
    from smpp_util import Events, message

    from aftercalld import cli
    from aftercalld.daemon import Daemon, _register_transport_metrics

    started = 1_782_892_800.0  # 2026-07-01 08:00 UTC
    config = load(routed_config(tmp_path, routes='[[route]]\nprefixes = ["+44"]\ntransports = ["backup"]\n'))
    from aftercalld.store import Outbox

    Outbox.open(config.outbox_path).close()  # status reads the outbox's counts
    daemon = Daemon(config, config.file, clock=lambda: started)
    daemon.transport = transport = make_transport(config)
    assert isinstance(transport, RoutedTransport)
    _register_transport_metrics(daemon.metrics, transport)
    await transport.start(Events())
    try:
        await transport.send(message(destination="+447700900123"))
        await transport.send(message(destination="+447700900124"))
        daemon._write_status(daemon.status())
    finally:
        await transport.close()
    assert cli.main(["status", "-c", config.file], clock=lambda: started + 2) == 0
    out = capsys.readouterr().out
    blocks = out.split("\ntransport ")[1:]
    assert [b.splitlines()[0] for b in blocks] == ["primary (log): dry run", "backup (log): dry run"]
    assert "  up: yes\n  in flight: 0\n  submitted: 2\n  failed over: 0\n  failover after: 30\n" in blocks[1]
    scraped = generate_latest(daemon.metrics.registry).decode()
    assert 'aftercalld_transport_submitted_total{transport="backup"} 2.0' in scraped
    assert 'aftercalld_transport_submitted_total{transport="primary"} 0.0' in scraped
    assert 'aftercalld_transport_up{transport="backup"} 1.0' in scraped
    assert 'aftercalld_transport_failovers_total{transport="primary"} 0.0' in scraped


def test_a_transport_that_splits_texts_differently_is_warned_about(tmp_path):
    smpp = ('[[transport]]\nname = "latin"\ntype = "smpp"\nhosts = ["h"]\nsystem_id = "x"\ngsm_data_coding = 3\n'
            '[[transport]]\nname = "plain"\ntype = "log"\n')
    def about_transports(config) -> list[list[str]]:
        return [w.split(": ", 2)[1:] for w in config.warnings if ": transport" in w]

    assert about_transports(load(routed_config(tmp_path, transports=smpp))) == [
        ["transport[1]", "plain splits texts differently from latin: segments are counted as latin sends them, "
                         "so a text within max_segments may take more parts over plain"]]
    assert about_transports(load(routed_config(tmp_path))) == []


def test_send_test_goes_through_the_numbers_route_or_the_transport_asked_for(tmp_path):
    path = routed_config(tmp_path, routes='[[route]]\nprefixes = ["+44"]\ntransports = ["backup", "primary"]\n')

    def send_test(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "aftercalld", "send-test", "07400123456", "-c", str(path), *args],
                              capture_output=True, text=True)

    routed = send_test()
    assert routed.returncode == 0, routed.stderr
    assert "to +447400123456 from aftercalld via backup (log): gsm7" in routed.stdout
    asked = send_test("--transport", "primary")
    assert asked.returncode == 0 and "via primary (log)" in asked.stdout
    unknown = send_test("--transport", "secondary")
    assert unknown.returncode == 2
    assert "--transport: no transport named 'secondary' (defined: primary, backup)" in unknown.stderr


def test_a_reload_says_transports_and_routes_need_a_restart(tmp_path):
    from aftercalld.daemon import _needs_restart

    route = '[[route]]\nprefixes = ["+44"]\ntransports = ["backup"]\n'
    old = load(routed_config(tmp_path, routes=route))
    assert _needs_restart(old, load(routed_config(tmp_path, routes=route))) == []
    assert _needs_restart(old, load(routed_config(tmp_path, routes=route.replace("+44", "+353")))) == [
        "[[route]] was changed"]
    assert _needs_restart(old, load(routed_config(tmp_path, transports=TWO.replace("= 5", "= 6"), routes=route))) \
        == ["[transport] was changed"]

"""Prometheus view of the SMPP transport, read from its status at scrape time so the
transport keeps no metric objects of its own and any registry can carry it."""
from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .transport import SmppTransport

_COUNTERS = (
    ("parts_submitted", "aftercalld_smpp_parts_submitted", "submit_sm accepted by the SMSC"),
    ("throttled", "aftercalld_smpp_throttled", "submit_sm answered ESME_RTHROTTLED or ESME_RMSGQFUL"),
    ("transient_errors", "aftercalld_smpp_transient_errors", "submit_sm answered with a transient error"),
    ("permanent_errors", "aftercalld_smpp_permanent_errors", "submit_sm rejected for good"),
    ("link_retries", "aftercalld_smpp_link_retries",
     "Parts sent again after their link was lost before the SMSC answered"),
    ("response_timeouts", "aftercalld_smpp_response_timeouts",
     "submit_sm not answered within response_timeout (still awaited, not sent again)"),
    ("late_responses", "aftercalld_smpp_late_responses", "submit_sm answered after response_timeout"),
    ("unanswered_given_up", "aftercalld_smpp_unanswered_given_up",
     "Messages failed because a part was sent twice without an answer"),
    ("receipts", "aftercalld_smpp_receipts", "Delivery receipts received"),
    ("replies", "aftercalld_smpp_replies", "Mobile-originated replies received"),
)


class SmppCollector:
    """Every SMPP transport of the daemon (routes can have several): one family per
    metric, a sample per transport, as Prometheus wants each name only once."""

    def __init__(self, *transports: SmppTransport) -> None:
        self.transports = transports

    def collect(self) -> Iterator[Metric]:
        bound = GaugeMetricFamily("aftercalld_smpp_sessions_bound", "SMPP binds currently up",
                                  labels=["transport"])
        configured = GaugeMetricFamily("aftercalld_smpp_sessions_configured", "SMPP binds configured",
                                       labels=["transport"])
        outstanding = GaugeMetricFamily("aftercalld_smpp_outstanding_requests",
                                        "Requests awaiting the SMSC's response, all sessions",
                                        labels=["transport"])
        binds = CounterMetricFamily("aftercalld_smpp_binds", "Successful binds since start (re-binds included)",
                                    labels=["transport"])
        counters = [(key, CounterMetricFamily(metric, help_, labels=["transport"])) for key, metric, help_ in _COUNTERS]
        errors = CounterMetricFamily("aftercalld_smpp_submit_errors", "submit_sm answered with an error, by "
                                     "command_status", labels=["transport", "command_status"])
        for t in self.transports:
            status = t.status()
            name = [t.name]
            bound.add_metric(name, status["bound"])
            configured.add_metric(name, status["configured"])
            outstanding.add_metric(name, sum(s["outstanding"] for s in status["sessions"]))
            binds.add_metric(name, sum(s["binds"] for s in status["sessions"]))
            for key, family in counters:
                family.add_metric(name, t.counters.get(key, 0))
            for status_name, count in sorted(t.error_statuses.items()):
                errors.add_metric([t.name, status_name], count)
        yield bound
        yield configured
        yield outstanding
        yield binds
        for _, family in counters:
            yield family
        yield errors


def register_metrics(registry: CollectorRegistry, *transports: SmppTransport) -> None:
    registry.register(SmppCollector(*transports))

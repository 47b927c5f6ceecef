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
    def __init__(self, transport: SmppTransport) -> None:
        self.transport = transport

    def collect(self) -> Iterator[Metric]:
        t = self.transport
        status = t.status()
        name = [t.name]
        bound = GaugeMetricFamily("aftercalld_smpp_sessions_bound", "SMPP binds currently up",
                                  labels=["transport"])
        bound.add_metric(name, status["bound"])
        yield bound
        configured = GaugeMetricFamily("aftercalld_smpp_sessions_configured", "SMPP binds configured",
                                       labels=["transport"])
        configured.add_metric(name, status["configured"])
        yield configured
        outstanding = GaugeMetricFamily("aftercalld_smpp_outstanding_requests",
                                        "Requests awaiting the SMSC's response, all sessions",
                                        labels=["transport"])
        outstanding.add_metric(name, sum(s["outstanding"] for s in status["sessions"]))
        yield outstanding
        binds = CounterMetricFamily("aftercalld_smpp_binds", "Successful binds since start (re-binds included)",
                                    labels=["transport"])
        binds.add_metric(name, sum(s["binds"] for s in status["sessions"]))
        yield binds
        for key, metric, help_ in _COUNTERS:
            family = CounterMetricFamily(metric, help_, labels=["transport"])
            family.add_metric(name, t.counters.get(key, 0))
            yield family
        errors = CounterMetricFamily("aftercalld_smpp_submit_errors", "submit_sm answered with an error, by "
                                     "command_status", labels=["transport", "command_status"])
        for status_name, count in sorted(t.error_statuses.items()):
            errors.add_metric([t.name, status_name], count)
        yield errors


def register_metrics(registry: CollectorRegistry, transport: SmppTransport) -> None:
    registry.register(SmppCollector(transport))

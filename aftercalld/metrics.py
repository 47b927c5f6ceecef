"""Optional Prometheus endpoint (prometheus-client), on a loopback address from the config.

Names follow Prometheus conventions: prefix ``aftercalld_``, base units, counters ending in
``_total``. No phone numbers as labels: only PBX, status, rule-independent states.
"""
from __future__ import annotations

import logging
import platform
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from . import __version__

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_DLR_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 21600, 86400)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, *, instance: str = "") -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # process_* (CPU, memory, open files) and python_info, as every exporter has them.
        r.register(PROCESS_COLLECTOR)
        r.register(PLATFORM_COLLECTOR)
        Info("aftercalld_build", "The running aftercalld", registry=r).info(
            # The instance name tells apart instances sharing a PostgreSQL outbox.
            {"version": __version__, "python": platform.python_version(), "instance": instance})
        self.calls = Counter("aftercalld_calls_total", "Finished calls", ["pbx", "status", "direction"], registry=r)
        self.messages = Counter("aftercalld_messages_total", "Message state changes (queued and suppressed "
                                "counted when the call is handled)", ["state"], registry=r)
        self.outcomes = Counter("aftercalld_rule_messages_total", "Message state changes per rule",
                                ["rule", "state"], registry=r)
        self.submit_latency = Histogram("aftercalld_submit_latency_seconds",
                                        "From handing a message to the transport to its submit result",
                                        buckets=_LATENCY_BUCKETS, registry=r)
        self.delivery_latency = Histogram("aftercalld_delivery_report_latency_seconds",
                                          "From submit to the final delivery report",
                                          buckets=_DLR_BUCKETS, registry=r)
        self.in_flight = Gauge("aftercalld_window_in_use", "Submits awaiting a response", registry=r)
        self.queue_depth = Gauge("aftercalld_queue_depth", "Messages queued, retrying or being sent", registry=r)
        self.transport_up = Gauge("aftercalld_transport_up", "1 when the transport can send", ["transport"], registry=r)
        self.task_restarts = Gauge("aftercalld_task_restarts", "Times a supervised task was restarted after "
                                   "an unexpected exit", ["task"], registry=r)
        self.webhook_deliveries = Counter("aftercalld_webhook_deliveries_total", "Webhook posts by endpoint and "
                                          "result (delivered, retry, failed)", ["endpoint", "result"], registry=r)
        self.server_thread: threading.Thread | None = None

    def track_queue_depth(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(depth)

    def track_sources(self, sources: Callable[[], Iterable[Any]]) -> None:
        """Events received and link state, read from each source when scraped: exact at
        that moment (no 5 s lag after a connect) and nothing counted on the hot path."""
        self.registry.register(_SourceCollector(sources))

    def serve(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        try:
            _, self.server_thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=self.registry)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot serve metrics on {address} ([metrics] listen): {exc.strerror}") from None
        log.info("metrics on http://%s/metrics", address)


# A source is up in these states (AMI "connected", ESL "connected").
_UP_STATES = frozenset({"connected"})


class _SourceCollector:
    def __init__(self, sources: Callable[[], Iterable[Any]]) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        events = CounterMetricFamily("aftercalld_events", "PBX events received", labels=["pbx"])
        up = GaugeMetricFamily("aftercalld_source_up", "1 when the PBX connection is up", labels=["pbx"])
        for source in self.sources():
            status = source.status()
            name = str(status.get("name", source.name))
            events.add_metric([name], float(status.get("events") or 0))
            up.add_metric([name], 1.0 if str(status.get("state", "")).lower() in _UP_STATES else 0.0)
        yield events
        yield up

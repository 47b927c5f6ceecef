"""Optional Prometheus endpoint (prometheus-client), on a loopback address from the config.

Names follow Prometheus conventions: prefix ``aftercalld_``, base units, counters ending in
``_total``. No phone numbers as labels: only PBX, status, rule-independent states.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_DLR_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 21600, 86400)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter("aftercalld_events_total", "PBX events received", ["pbx"], registry=r)
        self.calls = Counter("aftercalld_calls_total", "Finished calls", ["pbx", "status", "direction"], registry=r)
        self.messages = Counter("aftercalld_messages_total", "Message state changes", ["state"], registry=r)
        self.submit_latency = Histogram("aftercalld_submit_latency_seconds",
                                        "From handing a message to the transport to its submit result",
                                        buckets=_LATENCY_BUCKETS, registry=r)
        self.delivery_latency = Histogram("aftercalld_delivery_report_latency_seconds",
                                          "From submit to the final delivery report",
                                          buckets=_DLR_BUCKETS, registry=r)
        self.in_flight = Gauge("aftercalld_window_in_use", "Submits awaiting a response", registry=r)
        self.queue_depth = Gauge("aftercalld_queue_depth", "Messages queued, retrying or being sent", registry=r)
        self.transport_up = Gauge("aftercalld_transport_up", "1 when the transport can send", ["transport"], registry=r)
        self.source_up = Gauge("aftercalld_source_up", "1 when the PBX connection is up", ["pbx"], registry=r)
        self.task_restarts = Gauge("aftercalld_task_restarts", "Times a supervised task was restarted after "
                                   "an unexpected exit", ["task"], registry=r)
        self.server_thread: threading.Thread | None = None

    def track_queue_depth(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(depth)

    def serve(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        _, self.server_thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=self.registry)
        log.info("metrics on http://%s/metrics", address)

"""Prometheus view of a modem: read from the transport's status at scrape time, so the
transport keeps no metric objects of its own and any registry can carry it."""
from __future__ import annotations

import math
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .link import REGISTERED_STATES
from .transport import ModemTransport


class ModemCollector:
    """Every modem of the daemon (routes can have several): one family per metric."""

    def __init__(self, *transports: ModemTransport) -> None:
        self.transports = transports

    def collect(self) -> Iterator[Metric]:
        signal = GaugeMetricFamily("aftercalld_modem_signal_dbm",
                                   "Signal strength the modem reports (AT+CSQ), dBm; NaN when unknown",
                                   labels=["transport"])
        registered = GaugeMetricFamily("aftercalld_modem_registered",
                                       "1 when registered on the home or a roaming network",
                                       labels=["transport"])
        ready = GaugeMetricFamily("aftercalld_modem_ready", "1 when the modem can take texts",
                                  labels=["transport"])
        resets = CounterMetricFamily("aftercalld_modem_resets",
                                     "Times the serial port was reopened after a hang or a disappearance",
                                     labels=["transport"])
        parts = CounterMetricFamily("aftercalld_modem_parts_sent", "SMS parts the modem accepted (+CMGS)",
                                    labels=["transport"])
        for t in self.transports:
            name = [t.name]
            signal.add_metric(name, math.nan if t.rssi is None else -113 + 2 * t.rssi)
            registered.add_metric(name, 1.0 if t.registration in REGISTERED_STATES else 0.0)
            ready.add_metric(name, 1.0 if t.status()["ready"] else 0.0)
            resets.add_metric(name, t.resets)
            parts.add_metric(name, t.parts_sent)
        yield signal
        yield registered
        yield ready
        yield resets
        yield parts


def register_metrics(registry: CollectorRegistry, *transports: ModemTransport) -> None:
    registry.register(ModemCollector(*transports))

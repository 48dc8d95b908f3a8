"""``ServerMetrics``: what an operator watches, as a Prometheus endpoint (prometheus_client).

Counted where it happens: uploads and samples (the servicer), refusals by gRPC status code,
fit passes, their latency and the devices each fitted, prompts published and their
staleness (the worker). Read when scraped: the worker's queue (batches and devices
waiting), the inbox's bytes, enrolled devices, devices holding a prompt stream open, each
device's last-prompt age, and the devices each fit worker holds (one in-process worker, or
the Ray actors). ``cdca cloud status`` reads the same endpoint.

Staleness is counted by the server, not from the device's own batch ids (a device could
claim any): the device's uploads that arrived after the one a prompt learned from, when
the prompt is published. 0 means the prompt learned from the device's newest upload.

Every server has its own ``CollectorRegistry``, so that many servers (tests, benchmarks)
can live in one process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

METRICS_URL_FILE = "metrics-url"  # in the state folder while a server runs: where to scrape
STALENESS_BUCKETS = (0, 1, 2, 3, 5, 8, 13, 21, 34, 55)
FIT_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
FIT_DEVICES_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class Readings:
    """What is read at scrape time, from whoever owns it (set by ``serve``)."""

    queued_batches: Callable[[], int] = lambda: 0
    waiting_devices: Callable[[], int] = lambda: 0
    inbox_bytes: Callable[[], int] = lambda: 0
    enrolled_devices: Callable[[], int] = lambda: 0
    last_prompt_unix: Callable[[], dict[str, float]] = dict
    worker_devices: Callable[[], dict[str, int]] = dict  # devices each fit worker holds


class ServerMetrics:
    """The server's counters and histograms, and its scrape-time readings."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.readings = Readings()
        self.connected = 0  # prompt streams open now (devices connected)
        r = self.registry
        self.upload_batches = Counter("cdca_upload_batches", "batches stored", registry=r)
        self.uploaded_samples = Counter("cdca_uploaded_samples", "samples stored", registry=r)
        self.over_budget = Counter(
            "cdca_samples_over_budget", "samples refused over a device's budget", registry=r
        )
        self.refusals = Counter(
            "cdca_refusals", "calls refused, by gRPC status code", ["code"], registry=r
        )
        self.fits = Counter(
            "cdca_fit_passes", "fit passes (each fits one or more devices)", registry=r
        )
        self.fitted_devices = Counter("cdca_fitted_devices", "device fits", registry=r)
        self.fit_seconds = Histogram(
            "cdca_fit_pass_seconds", "seconds per fit pass", buckets=FIT_SECONDS_BUCKETS, registry=r
        )
        self.fit_width = Histogram(
            "cdca_fit_pass_devices", "devices per fit pass", buckets=FIT_DEVICES_BUCKETS, registry=r
        )
        self.prompts = Counter("cdca_prompts_published", "prompts published", registry=r)
        self.staleness = Histogram(
            "cdca_prompt_staleness_batches",
            "uploads of a device that arrived after the one its new prompt learned from",
            buckets=STALENESS_BUCKETS,
            registry=r,
        )
        r.register(_ReadingsCollector(self))

    def serve(self, host: str, port: int) -> int:
        """Expose ``/metrics`` on ``host:port`` (0: a free port); returns the port."""
        server, _ = start_http_server(port, host, registry=self.registry)
        self._http = server
        return int(server.server_port)

    def close(self) -> None:
        """Stop the endpoint, if one was started."""
        http = getattr(self, "_http", None)
        if http is not None:
            http.shutdown()
            http.server_close()


class _ReadingsCollector(Collector):
    """Gauges read when Prometheus scrapes, so they are never out of date."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        read, now = self.metrics.readings, time.time()
        for name, doc, value in (
            ("cdca_queue_batches", "batches waiting for the worker", read.queued_batches()),
            ("cdca_queue_devices", "devices with batches waiting", read.waiting_devices()),
            ("cdca_inbox_bytes", "bytes of uploads waiting in the inbox", read.inbox_bytes()),
            ("cdca_devices_enrolled", "devices enrolled", read.enrolled_devices()),
            ("cdca_devices_connected", "prompt streams open now", self.metrics.connected),
        ):
            yield GaugeMetricFamily(name, doc, value=value)
        age = GaugeMetricFamily(
            "cdca_device_last_prompt_age_seconds",
            "seconds since each device's newest prompt was published",
            labels=["device"],
        )
        for device, published in sorted(read.last_prompt_unix().items()):
            age.add_metric([device], max(0.0, now - published))
        yield age
        workers = GaugeMetricFamily(
            "cdca_worker_devices", "devices whose fits each worker holds", labels=["worker"]
        )
        for worker, devices in sorted(read.worker_devices().items()):
            workers.add_metric([worker], devices)
        yield workers

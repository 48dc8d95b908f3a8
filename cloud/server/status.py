"""``cdca cloud status``: a running server's metrics, for a person.

It scrapes the same Prometheus endpoint an operator's Prometheus does
(``cloud.server.metrics``; the server leaves its URL in the state folder) and parses it with
prometheus_client's own parser, so the two can never disagree. Quantiles come from the
histograms' buckets: "at most N" is the upper bound of the bucket the quantile falls in.
"""

from __future__ import annotations

import math
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from cloud.server.metrics import METRICS_URL_FILE, STALENESS_BUCKETS
from protocol.errors import ConfigError


@dataclass
class Scrape:
    """One scrape: plain values by metric name, ones with one label by name and label value."""

    values: dict[str, float] = field(default_factory=dict)
    labelled: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    buckets: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))

    def get(self, name: str) -> float:
        """A plain value, 0 when the server did not report it."""
        return self.values.get(name, 0.0)


def metrics_url(state_dir: Path) -> str:
    """The URL a server running on ``state_dir`` left there."""
    path = state_dir / METRICS_URL_FILE
    if not path.is_file():
        raise ConfigError(
            f"no server is running on {state_dir} with metrics on (no {METRICS_URL_FILE} there): "
            "start one with `cdca cloud serve`, or pass --url http://HOST:PORT/metrics"
        )
    return path.read_text().strip()


def scrape(url: str, timeout: float = 5.0) -> Scrape:
    """Fetch and parse ``url``."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (an operator's URL)
            text = response.read().decode()
    except (urllib.error.URLError, OSError) as err:
        raise ConfigError(f"cannot read {url}: {err} (is the server running?)") from err
    out = Scrape()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                out.buckets[family.name].append((float(sample.labels["le"]), sample.value))
            elif len(sample.labels) == 1:  # by device, worker or status code
                (label,) = sample.labels.values()
                out.labelled[sample.name][label] = sample.value
            else:
                out.values[sample.name] = sample.value
    return out


def bucket_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The upper bound of the bucket holding quantile ``q`` (None: no observations)."""
    ordered = sorted(buckets)
    total = ordered[-1][1] if ordered else 0.0
    if not total:
        return None
    for bound, cumulative in ordered:
        if cumulative >= q * total:
            return bound
    return math.inf


def report(url: str, data: Scrape) -> str:
    """The status as lines of text."""
    refusals = data.labelled.get("cdca_refusals_total", {})
    ages = data.labelled.get("cdca_device_last_prompt_age_seconds", {})
    stale = data.buckets.get("cdca_prompt_staleness_batches", [])
    passes = data.get("cdca_fit_passes_total")
    pass_seconds = data.get("cdca_fit_pass_seconds_sum") / passes if passes else 0.0
    enrolled = int(data.get("cdca_devices_enrolled"))
    workers = data.labelled.get("cdca_worker_devices", {})
    lines = [
        f"cdca cloud at {url}",
        f"devices   {enrolled} enrolled, {int(data.get('cdca_devices_connected'))} with a prompt "
        f"stream open, {len(ages)} holding a prompt",
        f"uploads   {int(data.get('cdca_upload_batches_total')):,} batches, "
        f"{int(data.get('cdca_uploaded_samples_total')):,} samples stored; "
        f"{int(data.get('cdca_samples_over_budget_total')):,} samples over budget",
        "refusals  "
        + (", ".join(f"{code} {int(n):,}" for code, n in sorted(refusals.items())) or "none"),
        f"queue     {int(data.get('cdca_queue_batches')):,} batches from "
        f"{int(data.get('cdca_queue_devices'))} devices waiting; inbox "
        f"{data.get('cdca_inbox_bytes') / 2**20:.1f} MiB",
        "workers   "
        + (", ".join(f"{w} {int(n)} devices" for w, n in sorted(workers.items())) or "none"),
        f"fits      {int(passes):,} passes, {int(data.get('cdca_fitted_devices_total')):,} device "
        f"fits, {pass_seconds:.2f} s per pass on average",
        f"prompts   {int(data.get('cdca_prompts_published_total')):,} published; staleness "
        f"(uploads since the one learned from) median {_at_most(bucket_quantile(stale, 0.5))}, "
        f"p99 {_at_most(bucket_quantile(stale, 0.99))}",
    ]
    if ages:
        oldest = max(ages, key=lambda d: ages[d])
        middle = sorted(ages.values())[len(ages) // 2]
        lines.append(
            f"last prompt  median {middle:.0f} s ago, oldest {ages[oldest]:.0f} s ago ({oldest})"
        )
    return "\n".join(lines)


def _at_most(value: float | None) -> str:
    if value is None:
        return "n/a"
    if math.isinf(value):
        return f"> {STALENESS_BUCKETS[-1]}"
    return "0" if value == 0 else f"<= {value:g}"

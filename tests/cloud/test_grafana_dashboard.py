"""The sample Grafana dashboard queries only metrics the server exports."""

import json
import re
from pathlib import Path

from prometheus_client import generate_latest

from cloud.server.metrics import ServerMetrics

DASHBOARD = Path(__file__).parents[2] / "docs" / "grafana" / "cdca-cloud.json"


def test_every_metric_the_dashboard_queries_is_exported():
    metrics = ServerMetrics()
    metrics.readings.last_prompt_unix = lambda: {"cam-a": 0.0}  # labelled gauges need a row
    metrics.readings.worker_devices = lambda: {"server": 1}
    metrics.refusals.labels("UNAUTHENTICATED").inc()
    exported = set(re.findall(r"^(cdca_\w+)", generate_latest(metrics.registry).decode(), re.M))
    panels = json.loads(DASHBOARD.read_text())["panels"]
    queried = {
        name
        for panel in panels
        for target in panel["targets"]
        for name in re.findall(r"cdca_\w+", target["expr"])
    }
    assert len(queried) >= 10
    assert queried <= exported, sorted(queried - exported)

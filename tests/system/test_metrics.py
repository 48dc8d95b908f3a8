"""The server's Prometheus endpoint and ``cdca cloud status`` against a real server."""

import grpc
import pytest

from cloud.server.metrics import METRICS_URL_FILE
from cloud.server.status import bucket_quantile, metrics_url, scrape
from protocol.errors import ConfigError
from protocol.messages import call_metadata
from protocol.v1 import cdca_pb2
from simulations.cli import main
from tests.system.test_prompt_flow import upload_three_batches, wait_for_prompt, wait_until_ingested


def test_metrics_count_uploads_fits_prompts_and_refusals_and_status_prints_them(
    live_server, capsys
):
    upload_three_batches(live_server)
    wait_for_prompt(live_server)
    wait_until_ingested(live_server.state_dir)
    with pytest.raises(grpc.RpcError):  # a wrong token: refused, and counted
        live_server.stub().GetPrompt(
            cdca_pb2.PromptRequest(device_id="cam-a"),
            metadata=call_metadata("cam-a", "wrong"),
            timeout=5,
        )
    data = scrape(metrics_url(live_server.state_dir))
    assert data.get("cdca_upload_batches_total") == 3
    assert data.get("cdca_uploaded_samples_total") == 24
    assert data.get("cdca_devices_enrolled") == 2
    assert data.get("cdca_fit_passes_total") >= 1
    assert data.get("cdca_fitted_devices_total") >= data.get("cdca_fit_passes_total")
    published = data.get("cdca_prompts_published_total")
    assert published >= 1
    assert data.get("cdca_prompt_staleness_batches_count") == published
    assert bucket_quantile(data.buckets["cdca_prompt_staleness_batches"], 0.5) is not None
    assert data.labelled["cdca_refusals_total"]["UNAUTHENTICATED"] == 1
    assert "cam-a" in data.labelled["cdca_device_last_prompt_age_seconds"]
    assert data.get("cdca_queue_batches") == 0
    assert data.labelled["cdca_worker_devices"] == {"server": 1}  # cam-a's session
    assert main(["cloud", "status", "--state-dir", str(live_server.state_dir)]) == 0
    out = capsys.readouterr().out
    assert "3 batches, 24 samples stored" in out
    assert "UNAUTHENTICATED 1" in out
    live_server.stop()
    assert not (live_server.state_dir / METRICS_URL_FILE).exists()  # a stopped server leaves none
    with pytest.raises(ConfigError, match="no server is running"):
        metrics_url(live_server.state_dir)


def test_bucket_quantiles_are_the_upper_bound_of_the_bucket_they_fall_in():
    buckets = [(0.0, 2.0), (1.0, 5.0), (2.0, 9.0), (float("inf"), 10.0)]
    assert bucket_quantile(buckets, 0.5) == 1.0
    assert bucket_quantile(buckets, 0.9) == 2.0
    assert bucket_quantile(buckets, 0.99) == float("inf")
    assert bucket_quantile([(float("inf"), 0.0)], 0.5) is None

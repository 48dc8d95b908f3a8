import pytest

from simulations.bench.system_command import markdown
from tests.conftest import prepare_fashion_mnist_c


def test_report_shows_every_accuracy_and_latency():
    device = {
        "source": 0.5,
        "device_alone": 0.8,
        "uvpa_simulated": 0.81,
        "uvpa_grpc": 0.79,
        "prompts_applied": 3,
        "samples_acked": 40,
        "upload_ms_p50": 5.0,
        "upload_ms_p99": 9.0,
        "prompt_delivery_ms_p50": 2.0,
        "prompt_delivery_ms_p99": 3.0,
    }
    results = {
        "config": {"devices": 2, "handler": None, "out": "runs/x"},
        "machine": {"cpu": "AMD EPYC", "cores": 2},
        "seconds": 1.0,
        "date": "2026-12-06",
        "devices": [device, {**device, "uvpa_grpc": 0.83}],
        "device_latency": {"no_prompt_ms_per_frame_batch1": 0.4},
    }
    text = markdown(results)
    assert "| mean | 50.0 | 80.0 | 81.0 | 81.0 |" in text
    assert "device no prompt ms per frame batch1 | 0.4 ms" in text
    assert "upload ms p99 (median over devices) | 9.00 ms" in text
    assert "`cdca bench system --out runs/x` on 2026-12-06, AMD EPYC with 2 cores" in text


@pytest.mark.slow
@pytest.mark.usefixtures("fashion_mnist_installed")
def test_bench_system_runs_end_to_end(tmp_path):
    import json

    from simulations.cli import main

    data = prepare_fashion_mnist_c(tmp_path / "bench", 256)
    out = tmp_path / "out"
    code = main(
        [
            "bench",
            "system",
            "--data",
            str(data),
            "--devices",
            "2",
            "--corruptions",
            "fog,contrast",
            "--per-domain",
            "128",
            "--fps",
            "200",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results["devices"]) == 2
    assert all(d["uvpa_grpc"] > d["source"] for d in results["devices"])

"""``cdca bench perf`` and ``cdca bench reliability`` end to end (slow: real models, a real server)."""

import json

import pytest

from simulations.cli import main


@pytest.mark.slow
@pytest.mark.usefixtures("fashion_mnist_installed")
def test_bench_perf_writes_ratios_json_markdown_and_plot(tmp_path):
    data = tmp_path / "bench"
    prepare = [
        "data",
        "prepare",
        "--out",
        str(data),
        "--corruptions",
        "fog,contrast",
        "--num-images",
        "600",
    ]
    assert main(prepare) == 0
    out = tmp_path / "perf"
    code = main(["bench", "perf", "--data", str(data), "--devices", "1,2", "--buffers", "24,48",
                 "--repeats", "1", "--out", str(out)])  # fmt: skip
    assert code == 0
    results = json.loads((out / "perf.json").read_text())
    ratios = results["ratios"]
    assert ratios["ort_speedup_over_torch_b1"] > 0
    assert 0 < ratios["uplink_ratio"] < 1
    assert set(results["cloud"]["fleet_round_by_devices"]) == {"1", "2"}
    assert results["device"]["peak_memory_mb"] > 10
    assert "| uplink_ratio |" in (out / "perf.md").read_text()
    assert (out / "perf.png").stat().st_size > 5000


@pytest.mark.slow
def test_bench_reliability_drives_a_real_server_without_failures(tmp_path):
    out = tmp_path / "load"
    code = main(
        [
            "bench",
            "reliability",
            "--clients",
            "4",
            "--seconds",
            "5",
            "--period",
            "0.5",
            "--out",
            str(out),
        ]
    )
    results = json.loads((out / "reliability.json").read_text())
    assert code == 0, results
    assert results["failed_rpcs"] == 0
    assert results["uploads"] >= 20
    assert results["server_exit_code"] == 0
    assert "| upload_ms_p99 |" in (out / "reliability.md").read_text()

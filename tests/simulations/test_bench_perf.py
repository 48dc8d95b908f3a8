"""``cdca bench perf`` end to end on the shipped models (slow: exports and times real models)."""

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

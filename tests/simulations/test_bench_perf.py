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
    code = main(
        [
            "bench",
            "perf",
            "--data",
            str(data),
            "--devices",
            "1,2",
            "--buffers",
            "24,48",
            "--repeats",
            "1",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    results = json.loads((out / "perf.json").read_text())
    ratios = results["ratios"]
    assert ratios["ort_speedup_over_torch_b1"] > 0
    assert ratios["prompt_overhead_over_batch_stats_b64"] > -1
    assert 0 < ratios["uplink_ratio"] < 1
    traffic = results["communication"]
    assert traffic["uvpa_bytes_up_per_1000_webp75"] < traffic["uvpa_bytes_up_per_1000_raw"]
    assert 0 < traffic["uplink_ratio_png"] < 1
    assert ratios["prompt_gate_overhead_b64"] > 0  # a second model pass is never free
    assert ratios["device_step_over_plain_b64"] > 1  # the step runs the plain work and more
    assert ratios["held_statistics_speedup_b64"] > 1  # held statistics skip the reductions
    assert ratios["int8_speedup_over_fp32_b64"] > 0
    assert "| int8_speedup_over_fp32_b1 |" in (out / "perf.md").read_text()
    assert set(results["cloud"]["fit_pass_us_per_sample_by_size"]) == {"64", "256", "1024", "4096"}
    curve = results["cloud"]["fleet_cost_by_devices"]
    assert set(curve) == {"1", "2"}
    assert all(
        v["one_at_a_time_ms_per_device"] > 0 < v["batched_ms_per_device"] for v in curve.values()
    )
    assert results["device"]["peak_memory_mb"] > 10
    assert "| uplink_ratio |" in (out / "perf.md").read_text()
    assert (out / "perf.png").stat().st_size > 5000


@pytest.mark.slow
@pytest.mark.usefixtures("fashion_mnist_installed")
def test_bench_reliability_drives_a_real_server_and_runs_a_fault_scenario(tmp_path):
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
            "--faults",
            "full_queue",
            "--out",
            str(out),
        ]
    )
    results = json.loads((out / "reliability.json").read_text())
    assert code == 0, results
    load = results["load"]
    assert load["failed_rpcs"] == 0
    assert load["uploads"] + load["batches_held_back"] >= 20  # a batch every ~0.5 s each
    assert load["uploads"] >= 4
    assert load["devices_with_a_prompt"] == 0 or load["staleness_batches_p50"] is not None
    assert load["server_exit_code"] == 0
    queue = results["faults"]["full_queue"]
    assert queue["passed"], queue
    assert queue["queue_dropped_batches"] >= 1
    assert "| full_queue | yes |" in (out / "reliability.md").read_text()


def test_bench_reliability_names_an_unknown_fault_scenario(tmp_path, capsys):
    assert main(["bench", "reliability", "--faults", "disk_on_fire", "--out", str(tmp_path)]) != 0
    assert "disk_on_fire" in capsys.readouterr().err

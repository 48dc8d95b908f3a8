"""``cdca simulate`` end to end on tiny data: in-process, Flower Simulation Engine, Deployment Engine."""

import json
import subprocess
from types import SimpleNamespace

import pytest

from cloud.adaptation.fleet import FleetConfig
from protocol.errors import ConfigError
from simulations.cli import main
from simulations.fleet.scenario import Scenario, load_scenario


def scenario_file(tmp_path, tiny_benchmark, tiny_distilled, teacher, **extra):
    values = {"devices": 2, "per_domain": 12, "batch_size": 4, "budget": 0.5, "min_uploads": 4,
              "corruptions": ["gaussian_noise", "contrast"], "data": str(tiny_benchmark),
              "student": str(tiny_distilled), "teacher_checkpoint": str(teacher), "peers": [],
              "compare_bank": False, "synthetic": 0, **extra}  # fmt: skip
    path = tmp_path / "scenario.toml"
    path.write_text("[scenario]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    return path


def run(tmp_path, name, scenario, *flags):
    out = tmp_path / name
    assert (
        main(["simulate", "--scenario", str(scenario), "--out", str(out), "--threads", "1", *flags])
        == 0
    )
    return json.loads((out / "results.json").read_text()), out


@pytest.fixture
def tiny_scenario(tmp_path, tiny_benchmark, tiny_distilled, shipped_random_teacher):
    return scenario_file(tmp_path, tiny_benchmark, tiny_distilled, shipped_random_teacher)


def test_simulate_writes_the_run_folder_with_peers_and_the_bank_comparison(tmp_path, tiny_scenario):
    results, out = run(tmp_path, "run", tiny_scenario, "--peers", "source,bn_adapt",
                       "--bank-comparison")  # fmt: skip
    assert set(results["table"]) == {"source", "bn_adapt", "uvpa", "uvpa_no_bank"}
    assert results["cloud"]["uvpa_no_bank"]["bank_lookups"] == 0  # that run really had no bank
    uvpa = results["devices"]["uvpa"]
    assert len(uvpa) == 2
    for device in uvpa:
        assert device["frames"] == 24
        assert 0 < device["upload_fraction"] <= 0.5
        assert device["prompts_applied"] >= 1  # the cloud taught every device something
        assert device["bytes_down_per_1000"] > 0
    report = (out / "report.md").read_text()
    assert "| uvpa |" in report
    assert "best on-device peer (bn_adapt)" in report
    assert "Environment bank, first batches after a shift" in report
    for plot in ("accuracy_over_time.png", "uploads.png", "comparison.png"):
        assert (out / plot).stat().st_size > 5000
    assert json.loads((out / "config.json").read_text())["devices"] == 2


@pytest.mark.slow  # 25-45 s on a slow 2-core machine; `.ci/run` runs it (make test-slow)
def test_flower_simulation_engine_gives_the_in_process_results(tmp_path, tiny_scenario):
    inprocess, _ = run(tmp_path, "inprocess", tiny_scenario)
    flower, _ = run(tmp_path, "flower-sim", tiny_scenario, "--engine", "flower-sim")
    assert flower["devices"]["uvpa"] == inprocess["devices"]["uvpa"]  # transport only
    assert flower["cloud"]["uvpa"]["rounds"] == 6
    assert flower["cloud"]["uvpa"]["partial_rounds"] == 0


@pytest.mark.slow  # 50-140 s on 2 cores; `.ci/run` runs it (make test-slow)
def test_deployment_engine_on_loopback_superlink_and_supernodes(
    tmp_path, tiny_benchmark, tiny_distilled, shipped_random_teacher
):
    # 2 batches per domain: 4 rounds, each a fresh ClientApp process per message
    scenario = scenario_file(tmp_path, tiny_benchmark, tiny_distilled, shipped_random_teacher,
                             per_domain=8)  # fmt: skip
    inprocess, _ = run(tmp_path, "inprocess", scenario)
    deployed, out = run(tmp_path, "deployed", scenario, "--engine", "flower")
    assert sum(d["prompts_applied"] for d in deployed["devices"]["uvpa"]) >= 1
    assert deployed["devices"]["uvpa"] == inprocess["devices"]["uvpa"]
    assert "flower-progress" in {p.name for p in out.iterdir()}
    assert "Activated node_id" in (out / "flower" / "superlink.log").read_text()
    left = subprocess.run(["pgrep", "-f", str(out / "flower")], capture_output=True, text=True)
    assert left.stdout.strip() == "", "a Flower process outlived the run"


def test_scenario_layers_file_then_flags_and_names_unknown_keys(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('devices = 3\ncorruptions = ["fog"]\n')
    scenario = load_scenario(path, devices=5, budget=None)
    assert (scenario.devices, scenario.corruptions, scenario.budget) == (
        5,
        ("fog",),
        Scenario().budget,
    )
    assert load_scenario(None, corruptions="fog, contrast").corruptions == ("fog", "contrast")
    path.write_text("devises = 3\n")
    with pytest.raises(ConfigError, match="unknown scenario keys \\['devises'\\]"):
        load_scenario(path)
    with pytest.raises(ConfigError, match="engine"):
        load_scenario(None, engine="warp")
    with pytest.raises(ConfigError, match="prompt gate"):
        load_scenario(None, prompt_gate="vote")


def test_a_missing_benchmark_says_how_to_make_it(tmp_path, capsys):
    assert main(["simulate", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "cdca data prepare" in capsys.readouterr().err


def test_a_missing_companion_says_how_to_make_it(tmp_path, tiny_scenario, capsys):
    missing = str(tmp_path / "nope.safetensors")
    flags = ["--scenario", str(tiny_scenario), "--companion", missing, "--out", str(tmp_path / "o")]
    assert main(["simulate", *flags]) == 2
    assert "cdca train companion" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before any work


@pytest.mark.slow  # 25-45 s on a slow 2-core machine; `.ci/run` runs it (make test-slow)
def test_grpc_engine_runs_a_real_server_and_device_processes(tmp_path, tiny_scenario):
    results, out = run(tmp_path, "grpc", tiny_scenario, "--engine", "grpc")
    for i, device in enumerate(results["devices"]["uvpa"]):
        assert device["frames"] == 24
        assert 0 < device["upload_fraction"] <= 0.5
        assert device["bytes_up_per_1000"] > 0
        lines = (out / "grpc" / f"device-{i}.jsonl").read_text().splitlines()
        assert len(lines) == 24
        assert sum('"uploaded": true' in line for line in lines) == round(
            24 * device["upload_fraction"]
        )
    assert "registered device-1" in (out / "grpc" / "server.log").read_text()
    assert results["peak_memory_mb"] > 100  # the server process with torch alone is bigger


@pytest.mark.slow  # 50-140 s on 2 cores; `.ci/run` runs it (make test-slow)
def test_sigterm_stops_a_grpc_run_and_every_process_it_started(tmp_path, tiny_scenario):
    import signal

    from simulations.bench.rig import processes_mentioning, wait_until
    from simulations.bench.system import CDCA

    out = tmp_path / "stopped"
    run = subprocess.Popen([*CDCA, "simulate", "--scenario", str(tiny_scenario), "--engine", "grpc",
                            "--fps", "1", "--out", str(out), "--threads", "1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        # this command, its server and two devices (24 s each)
        assert wait_until(lambda: len(processes_mentioning(str(out))) >= 4, 120), (
            "the server and devices never ran"
        )
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=90) == 128 + signal.SIGTERM
    finally:
        if run.poll() is None:
            run.kill()
    assert wait_until(lambda: not processes_mentioning(str(out)), 10)


def test_peak_memory_counts_child_processes():
    import os
    import sys

    from simulations.fleet.memory import tree_rss_bytes

    before = tree_rss_bytes(os.getpid())
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; x = bytearray(80 << 20); time.sleep(3)"]
    )
    try:
        import time

        time.sleep(1.5)
        assert tree_rss_bytes(os.getpid()) > before + (60 << 20)
    finally:
        child.kill()
        child.wait()


def test_built_in_scenarios_load_by_name():
    from simulations.fleet.scenario import built_in_scenarios

    assert {"fleet-100", "gradual", "quick"} <= set(built_in_scenarios())
    assert load_scenario("fleet-100").devices == 100
    assert load_scenario("gradual").stream == "gradual"
    with pytest.raises(ConfigError, match="one of: fleet-100"):
        load_scenario("no-such-scenario")


def test_pooled_uploads_reach_the_cloud_of_every_engine(tmp_path):
    import tomllib

    from cloud.server.config import load_config
    from simulations.fleet.cloud_side import fleet_config
    from simulations.fleet.deployment import _run_config
    from simulations.fleet.grpc_engine import _server_config

    scenario = load_scenario("short-stays")
    assert scenario.pool_uploads
    assert fleet_config(scenario).pool_uploads  # inprocess and flower-sim
    assert not fleet_config(Scenario()).pool_uploads  # off by default
    run_config = tomllib.loads(_run_config(scenario, tmp_path, {}))  # flower: the ServerApp's
    assert run_config["pool-uploads"] is True
    world = SimpleNamespace(served=SimpleNamespace(folder=tmp_path))
    server = tmp_path / "server.toml"  # grpc: the server's settings
    server.write_text(_server_config(scenario, world, fleet_config(scenario), tmp_path))
    assert load_config(server).pool_uploads


def test_synthetic_samples_reach_the_cloud_of_every_engine(tmp_path):
    import tomllib

    from cloud.server.config import load_config
    from simulations.fleet.deployment import _run_config
    from simulations.fleet.grpc_engine import _server_config

    assert Scenario().synthetic == 64  # on by default: the main job renders 64 per fit
    scenario = load_scenario(None, synthetic=16)
    run_config = tomllib.loads(_run_config(scenario, tmp_path, {}))  # flower: the ServerApp's
    assert run_config["synthetic"] == 16
    world = SimpleNamespace(served=SimpleNamespace(folder=tmp_path))
    server = tmp_path / "server.toml"  # grpc: the server's settings
    server.write_text(_server_config(scenario, world, FleetConfig(), tmp_path))
    assert load_config(server).synthetic == 16
    with pytest.raises(ConfigError, match="synthetic must be >= 0"):
        load_scenario(None, synthetic=-1)
    with pytest.raises(ConfigError, match="synthetic must be >= 0"):
        load_config(None, synthetic=-1)


def test_the_flower_app_config_names_every_key_the_deployment_engine_sends():
    import tomllib

    from simulations.fleet.deployment import RUN_KEYS, project_root

    pyproject = tomllib.loads((project_root() / "pyproject.toml").read_text())
    defaults = pyproject["tool"]["flwr"]["app"]["config"]
    assert {key.replace("_", "-") for key in RUN_KEYS} <= set(defaults)
    # `flwr run` without a run config: the ServerApp reads these defaults as a scenario
    files = {"run-dir", "student", "teacher-checkpoint"}
    scenario = load_scenario(None, **{k.replace("-", "_"): v for k, v in defaults.items()
                                      if k not in files})  # fmt: skip
    assert (scenario.devices, scenario.synthetic) == (defaults["devices"], Scenario().synthetic)


def test_synthetic_samples_for_a_student_without_a_clean_set_are_refused(
    tmp_path, tiny_scenario, capsys
):
    out = tmp_path / "o"
    assert main(["simulate", "--scenario", str(tiny_scenario), "--synthetic", "8",
                 "--out", str(out)]) == 2  # fmt: skip
    assert "only Fashion-MNIST's are known here" in capsys.readouterr().err
    assert not (out / "results.json").exists()


@pytest.mark.slow  # about 60 s on 2 cores; `.ci/run` runs it (make test-slow)
@pytest.mark.usefixtures("fashion_mnist_installed")
def test_synthetic_samples_run_in_process_and_on_a_real_cloud_server(tmp_path):
    from tests.conftest import prepare_fashion_mnist_c

    data = prepare_fashion_mnist_c(tmp_path / "bench", 128)
    values = {"devices": 1, "per_domain": 64, "batch_size": 16, "budget": 0.5, "min_uploads": 8,
              "corruptions": ["fog", "contrast"], "data": str(data), "peers": [],
              "synthetic": 8}  # fmt: skip
    scenario = tmp_path / "scenario.toml"
    scenario.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    results, out = run(tmp_path, "inprocess", scenario)
    cloud = results["cloud"]["uvpa"]
    assert cloud["updates"] > 0
    assert cloud["synthetic_samples"] == 8 * cloud["updates"]
    assert "adds 8 clean training images" in (out / "report.md").read_text()
    _, out = run(tmp_path, "grpc", scenario, "--engine", "grpc")
    server_log = (out / "grpc" / "server.log").read_text()
    assert "synthetic samples: 8 clean images" in server_log
    assert "fitted with Adam lr 0.01" in server_log  # the fit settings synthetic samples bear


def test_gradual_stream_files_batch_like_the_peers(tmp_path, tiny_benchmark):
    from device.sources import batch_starts
    from simulations.fleet.streams import write_streams

    scenario = Scenario(devices=2, per_domain=9, batch_size=4, stream="gradual", data=str(tiny_benchmark),
                        corruptions=("gaussian_noise", "contrast"))  # fmt: skip
    paths, specs = write_streams(scenario, tmp_path)
    import numpy as np

    with np.load(paths[1]) as data:
        starts = batch_starts(data["domain"], 4)
        assert len(data["domain_names"]) == len(specs[1].segments) == 18  # 2 corruptions x 9 steps
    assert len(starts) - 1 == 18  # one 1-frame batch per severity step, none spanning two


@pytest.mark.slow  # 25-45 s on a slow 2-core machine; `.ci/run` runs it (make test-slow)
def test_a_straggler_does_not_stall_the_flower_rounds(tmp_path, tiny_scenario):
    slow = tmp_path / "slow.toml"
    slow.write_text(tiny_scenario.read_text() + "round_timeout_s = 2.0\nslow_device = 1\n"
                    "slow_rounds = 1\nslow_delay_s = 5.0\n")  # fmt: skip
    results, _ = run(tmp_path, "slow", slow, "--engine", "flower-sim")
    cloud = results["cloud"]["uvpa"]
    # The first round goes on without device 1, which catches up a round later. On a loaded
    # machine a later round may also miss a reply (the straggler still holds one of the two
    # Ray workers), costing one more round each, never a batch.
    assert cloud["partial_rounds"] >= 1
    assert 7 <= cloud["rounds"] <= 6 + cloud["partial_rounds"]
    for device in results["devices"]["uvpa"]:
        assert device["frames"] == 24  # no batch lost


@pytest.mark.slow  # 50-140 s on 2 cores; `.ci/run` runs it (make test-slow)
def test_the_companion_reaches_the_cloud_of_every_engine(
    tmp_path, tiny_benchmark, tiny_distilled, shipped_random_teacher
):
    import torch

    from cloud.students.architectures import CompactCNN
    from cloud.teacher.companion import Companion, save_companion
    from simulations.fleet.grpc_engine import _server_config
    from tests.conftest import CLASS_NAMES

    torch.manual_seed(0)
    companion = tmp_path / "companion.safetensors"
    save_companion(companion, Companion(CompactCNN(len(CLASS_NAMES), 8), CLASS_NAMES), {})
    scenario = scenario_file(tmp_path, tiny_benchmark, tiny_distilled, shipped_random_teacher,
                             budget=1.0, min_uploads=8)  # fmt: skip
    inprocess, out = run(tmp_path, "inprocess", scenario, "--companion", str(companion))
    assert inprocess["config"]["companion"] == str(companion)
    cloud = inprocess["cloud"]["uvpa"]
    assert cloud["companion_updates"] == cloud["updates"] > 0  # 8+ uploads per environment
    assert "companion teacher (`companion.safetensors`)" in (out / "report.md").read_text()
    flower, _ = run(tmp_path, "flower-sim", scenario, "--engine", "flower-sim",
                    "--companion", str(companion))  # fmt: skip
    assert flower["devices"]["uvpa"] == inprocess["devices"]["uvpa"]
    assert flower["cloud"]["uvpa"]["companion_updates"] == cloud["companion_updates"]
    without, out = run(tmp_path, "without", scenario)
    assert without["config"]["companion"] == ""
    assert without["cloud"]["uvpa"]["companion_updates"] == 0
    assert "cloud target: teacher and device." in (out / "report.md").read_text()
    world = SimpleNamespace(served=SimpleNamespace(folder=tmp_path))  # only its folder is read
    server_toml = _server_config(load_scenario(scenario, companion=str(companion)), world,
                                 FleetConfig(), tmp_path)  # fmt: skip
    assert f'companion = "{companion.resolve()}"' in server_toml
    assert "\ncompanion = " not in _server_config(
        load_scenario(scenario), world, FleetConfig(), tmp_path
    )

"""``cdca simulate`` end to end on tiny data: in-process, Flower Simulation Engine, Deployment Engine."""

import json
import re
import subprocess
import tomllib

import pytest

from protocol.config.loader import toml_value
from protocol.config.project import load_project
from protocol.errors import ConfigError
from simulations.cli import main


def write_project(path, tables):
    """A project file from {"section.sub": {key: value}} tables."""
    lines = []
    for table, values in tables.items():
        lines += [f"[{table}]", *(f"{k} = {toml_value(v)}" for k, v in values.items()), ""]
    path.write_text("\n".join(lines))
    return path


def project_file(tmp_path, tiny_benchmark, tiny_distilled, teacher, fleet=(), **tables):
    """The tiny fleet: 2 devices, 2 corruptions of 12 frames, half the frames uploaded."""
    base = {
        "data": {"shifted": str(tiny_benchmark)},
        "teacher": {"checkpoint": str(teacher)},
        "student": {"checkpoint": str(tiny_distilled)},
        "adaptation.device": {"budget": 0.5},
        "adaptation.session": {"min_uploads": 4},
        "adaptation.synthetic": {"count": 0},
        "fleet": {
            "devices": 2,
            "per_domain": 12,
            "batch_size": 4,
            "peers": [],
            "corruptions": ["gaussian_noise", "contrast"],
            "compare_bank": False,
            **dict(fleet),
        },
    }
    for name, values in tables.items():
        base.setdefault(name.replace("__", "."), {}).update(values)
    return write_project(tmp_path / "cdca.toml", base)


def run(tmp_path, name, project, *flags):
    out = tmp_path / name
    assert (
        main(["simulate", "--project", str(project), "--out", str(out), "--threads", "1", *flags])
        == 0
    )
    return json.loads((out / "results.json").read_text()), out


@pytest.fixture
def tiny_scenario(tmp_path, tiny_benchmark, tiny_distilled, shipped_random_teacher):
    return project_file(tmp_path, tiny_benchmark, tiny_distilled, shipped_random_teacher)


def test_simulate_writes_the_run_folder_with_peers_and_the_bank_comparison(tmp_path, tiny_scenario):
    results, out = run(
        tmp_path,
        "run",
        tiny_scenario,
        "--peers",
        "source,bn_adapt,forward_only",
        "--bank-comparison",
    )
    assert set(results["table"]) == {"source", "bn_adapt", "forward_only", "uvpa", "uvpa_no_bank"}
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
    assert re.search(r"best on-device peer \((source|bn_adapt|forward_only)\)", report)
    assert "Environment bank, first batches after a shift" in report
    for plot in ("accuracy_over_time.png", "uploads.png", "comparison.png"):
        assert (out / plot).stat().st_size > 5000
    resolved = load_project(out / "config.toml")  # the settings the run used, reusable
    assert resolved.fleet.devices == 2
    assert resolved.fleet.peers == ("source", "bn_adapt", "forward_only")  # the flag, not the file


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
    scenario = project_file(
        tmp_path, tiny_benchmark, tiny_distilled, shipped_random_teacher, fleet={"per_domain": 8}
    )
    inprocess, _ = run(tmp_path, "inprocess", scenario)
    deployed, out = run(tmp_path, "deployed", scenario, "--engine", "flower")
    assert sum(d["prompts_applied"] for d in deployed["devices"]["uvpa"]) >= 1
    assert deployed["devices"]["uvpa"] == inprocess["devices"]["uvpa"]
    assert "flower-progress" in {p.name for p in out.iterdir()}
    assert "Activated node_id" in (out / "flower" / "superlink.log").read_text()
    left = subprocess.run(["pgrep", "-f", str(out / "flower")], capture_output=True, text=True)
    assert left.stdout.strip() == "", "a Flower process outlived the run"


def test_flags_override_the_scenario_which_overrides_the_project(tmp_path, tiny_scenario):
    from simulations.fleet.command import build_parser
    from simulations.fleet.scenario import find_scenario

    overlay = tmp_path / "s.toml"
    overlay.write_text('[fleet]\ndevices = 3\ncorruptions = ["fog"]\n')
    args = build_parser("cdca simulate").parse_args(
        [
            "--project",
            str(tiny_scenario),
            "--scenario",
            str(overlay),
            "--devices",
            "5",
            "--set",
            "adaptation.vplu.steps=3",
        ]
    )
    from cloud.project_cli import project_from_args

    project = project_from_args(args, {"fleet.devices": args.devices}, [find_scenario(overlay)])
    assert (project.fleet.devices, project.fleet.corruptions) == (5, ("fog",))
    assert project.adaptation.vplu.steps == 3
    assert project.adaptation.device.budget == 0.5  # from the project file
    overlay.write_text("[fleet]\ndevises = 3\n")
    with pytest.raises(ConfigError, match="did you mean 'fleet.devices'"):
        project_from_args(args, {}, [overlay])


def test_a_missing_benchmark_says_how_to_make_it(tmp_path, capsys):
    assert main(["simulate", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "cdca data prepare" in capsys.readouterr().err


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
    served = load_project(out / "grpc" / "config.toml")  # what the server process read
    assert served.adaptation == load_project(tiny_scenario).adaptation
    assert results["peak_memory_mb"] > 100  # the server process with torch alone is bigger


@pytest.mark.slow  # 50-140 s on 2 cores; `.ci/run` runs it (make test-slow)
def test_sigterm_stops_a_grpc_run_and_every_process_it_started(tmp_path, tiny_scenario):
    import signal

    from simulations.bench.rig import processes_mentioning, wait_until
    from simulations.harness.processes import CDCA

    out = tmp_path / "stopped"
    run = subprocess.Popen(
        [
            *CDCA,
            "simulate",
            "--project",
            str(tiny_scenario),
            "--engine",
            "grpc",
            "--fps",
            "1",
            "--out",
            str(out),
            "--threads",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
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

    from simulations.harness.memory import tree_rss_bytes

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
    from simulations.fleet.scenario import built_in_scenarios, find_scenario

    assert {"fleet-100", "gradual", "quick", "short-stays"} <= set(built_in_scenarios())
    for name in built_in_scenarios():  # every one fits the schema
        load_project(None, overlays=[find_scenario(name)])
    assert load_project(None, overlays=[find_scenario("fleet-100")]).fleet.devices == 100
    short = load_project(None, overlays=[find_scenario("short-stays")])
    assert short.adaptation.sharing.pool_uploads
    assert not load_project(None).adaptation.sharing.pool_uploads  # off by default
    with pytest.raises(ConfigError, match="one of: .*fleet-100"):
        find_scenario("no-such-scenario")


def test_the_deployment_engine_hands_the_flower_app_the_whole_project(tmp_path, tiny_scenario):
    from simulations.fleet.deployment import run_config

    project = load_project(
        tiny_scenario,
        assignments=["adaptation.sharing.pool_uploads=true", "adaptation.synthetic.count=16"],
    )
    values = tomllib.loads(run_config(project, tmp_path, tmp_path))
    assert (values["scenario"], values["set"]) == ("", "")
    received = load_project(values["project"])  # what the ServerApp loads
    assert received.adaptation == project.adaptation
    assert received.fleet == project.fleet
    assert received.adaptation.synthetic.count == 16


def test_the_flower_app_config_is_a_project_with_a_scenario():
    from simulations.fleet.deployment import project_root
    from simulations.fleet.flower_server import RUN_KEYS
    from simulations.fleet.scenario import find_scenario

    pyproject = tomllib.loads((project_root() / "pyproject.toml").read_text())
    defaults = pyproject["tool"]["flwr"]["app"]["config"]
    assert set(defaults) == set(RUN_KEYS)  # `flwr run --run-config` may set each
    # `flwr run` without a run config: the built-in project under the app's scenario
    project = load_project(
        defaults["project"] or None, overlays=[find_scenario(defaults["scenario"])]
    )
    assert (project.fleet.devices, project.fleet.per_domain) == (2, 64)
    assert project.adaptation.synthetic.count == 64


def test_synthetic_samples_for_a_student_without_a_clean_set_are_refused(
    tmp_path, tiny_scenario, capsys
):
    out = tmp_path / "o"
    assert (
        main(["simulate", "--project", str(tiny_scenario), "--synthetic", "8", "--out", str(out)])
        == 2
    )
    assert "training images of the student's classes" in capsys.readouterr().err
    assert not (out / "results.json").exists()


@pytest.mark.slow  # about 60 s on 2 cores; `.ci/run` runs it (make test-slow)
@pytest.mark.usefixtures("fashion_mnist_installed")
def test_synthetic_samples_run_in_process_and_on_a_real_cloud_server(tmp_path):
    from tests.conftest import prepare_fashion_mnist_c

    data = prepare_fashion_mnist_c(tmp_path / "bench", 128)
    scenario = write_project(
        tmp_path / "cdca.toml",
        {
            "data": {"shifted": str(data)},
            "adaptation.device": {"budget": 0.5},
            "adaptation.session": {"min_uploads": 8},
            "adaptation.synthetic": {"count": 8},
            "fleet": {
                "devices": 1,
                "per_domain": 64,
                "batch_size": 16,
                "peers": [],
                "corruptions": ["fog", "contrast"],
            },
        },
    )
    results, out = run(tmp_path, "inprocess", scenario)
    cloud = results["cloud"]["uvpa"]
    assert cloud["updates"] > 0
    assert cloud["synthetic_samples"] == 8 * cloud["updates"]
    assert "adds 8 clean training images" in (out / "report.md").read_text()
    _, out = run(tmp_path, "grpc", scenario, "--engine", "grpc")
    server_log = (out / "grpc" / "server.log").read_text()
    assert "synthetic samples: 8 training images" in server_log
    assert "fitted with Adam lr 0.01" in server_log  # the fit settings synthetic samples bear


def test_gradual_stream_files_batch_like_the_peers(tmp_path, tiny_benchmark):
    from device.sources import batch_starts
    from protocol.config.data import DataConfig
    from protocol.config.fleet import FleetConfig
    from protocol.config.project import ProjectConfig
    from simulations.fleet.stream_files import write_streams

    project = ProjectConfig(
        data=DataConfig(shifted=str(tiny_benchmark)),
        fleet=FleetConfig(
            devices=2,
            per_domain=9,
            batch_size=4,
            stream="gradual",
            corruptions=("gaussian_noise", "contrast"),
        ),
    )
    paths, specs = write_streams(project, tmp_path)
    import numpy as np

    with np.load(paths[1]) as data:
        starts = batch_starts(data["domain"], 4)
        assert len(data["domain_names"]) == len(specs[1].segments) == 18  # 2 corruptions x 9 steps
    assert len(starts) - 1 == 18  # one 1-frame batch per severity step, none spanning two


@pytest.mark.slow  # 25-45 s on a slow 2-core machine; `.ci/run` runs it (make test-slow)
def test_a_straggler_does_not_stall_the_flower_rounds(tmp_path, tiny_scenario):
    slow = tmp_path / "slow.toml"
    slow.write_text(
        "[fleet]\nround_timeout_s = 2.0\nslow_device = 1\nslow_rounds = 1\nslow_delay_s = 5.0\n"
    )
    results, _ = run(
        tmp_path, "slow", tiny_scenario, "--engine", "flower-sim", "--scenario", str(slow)
    )
    cloud = results["cloud"]["uvpa"]
    # The first round goes on without device 1, which catches up a round later. On a loaded
    # machine a later round may also miss a reply (the straggler still holds one of the two
    # Ray workers), costing one more round each, never a batch.
    assert cloud["partial_rounds"] >= 1
    assert 7 <= cloud["rounds"] <= 6 + cloud["partial_rounds"]
    for device in results["devices"]["uvpa"]:
        assert device["frames"] == 24  # no batch lost


def test_a_flower_run_gets_the_report_cdca_simulate_writes(tmp_path, tiny_scenario):
    """What the ServerApp does after its rounds, on an in-process run of the same fleet."""
    import time

    from cloud.server.models import load_cloud_models
    from simulations.fleet.command import report_flower_run
    from simulations.fleet.inprocess import run_inprocess
    from simulations.fleet.stream_files import write_streams
    from simulations.harness.memory import PeakMemory

    project = load_project(
        tiny_scenario, assignments=["fleet.peers=['bn_adapt']", "fleet.batches_per_round=1"]
    )
    out = tmp_path / "flower"
    models = load_cloud_models(project, out)
    streams, specs = write_streams(project, out / "streams")
    with PeakMemory() as memory:
        run = run_inprocess(project, streams, models, project.adaptation)
        paths = report_flower_run(project, specs, run, out, ["a", "b"], time.perf_counter(), memory)
    results = json.loads(paths["json"].read_text())
    assert set(results["table"]) == {"bn_adapt", "uvpa"}
    assert set(results["devices"]["uvpa"][0]["accuracy"]) == {"gaussian_noise", "contrast"}
    assert "| uvpa |" in paths["report"].read_text()

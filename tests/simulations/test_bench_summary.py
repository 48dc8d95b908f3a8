import json
import shutil

import pytest

from simulations.cli import main
from tests.simulations.test_bench_cli import bench_args, cli

NO_SYNTHETIC = ["--set", "adaptation.synthetic.count=0"]  # no training images of these classes


@pytest.fixture
def two_runs(tiny_benchmark, tiny_distilled, shipped_random_teacher, tmp_path):
    """The same methods twice; the second run's cloud fits from fewer uploads."""
    root = tmp_path / "runs"
    args = bench_args(tiny_benchmark, tiny_distilled, root / "a", "source,bn_adapt,uvpa")
    assert main([*args, "--budget", "0.25", *NO_SYNTHETIC]) == 0
    args = bench_args(tiny_benchmark, tiny_distilled, root / "b", "source,bn_adapt,uvpa")
    fewer = ["--set", "adaptation.session.min_uploads=2"]
    assert main([*args, "--budget", "0.25", *NO_SYNTHETIC, *fewer]) == 0
    return root / "a", root / "b"


def summary(a, b, out, *extra):
    assert main(["bench", "summary", str(a), str(b), "--out", str(out), *extra]) == 0
    return json.loads((out / "summary.json").read_text())["streams"]


def means(folder):
    return {
        k: 100 * v["mean"]
        for k, v in json.loads((folder / "results.json").read_text())["summary"].items()
    }


def test_a_method_run_with_other_settings_gets_its_own_column(two_runs, tmp_path):
    a, b = two_runs
    streams = summary(a, b, tmp_path)
    assert len(streams) == 1  # same stream, severity and images per corruption: one row
    methods = streams[0]["methods"]
    first = "uvpa (adaptation.device.budget=0.25, adaptation.synthetic.count=0)"
    second = (
        "uvpa (adaptation.device.budget=0.25, adaptation.session.min_uploads=2, "
        "adaptation.synthetic.count=0)"
    )
    assert set(methods) == {"source", "bn_adapt", first, second}  # Source is in both runs once
    assert methods[first]["mean"] == pytest.approx(means(a)["uvpa"])
    assert methods[second]["mean"] == pytest.approx(means(b)["uvpa"])
    assert methods[first]["up_kb"] > 0
    assert methods["bn_adapt"]["up_kb"] == 0
    assert methods[first]["cloud_ms"] > 0
    assert methods["bn_adapt"]["cloud_ms"] == 0
    page = (tmp_path / "summary.md").read_text()
    lead = methods[first]["mean"] - methods["bn_adapt"]["mean"]
    assert f"| bn_adapt {methods['bn_adapt']['mean']:.1f} | {round(lead, 1) + 0.0:+.1f} |" in page
    assert (tmp_path / "summary.png").stat().st_size > 5000
    picked = summary(a, b, tmp_path / "picked", "--methods", "bn_adapt,source")
    assert list(picked[0]["methods"]) == ["bn_adapt", "source"]  # only these, in this order


def test_the_same_method_with_other_results_and_the_same_settings_is_refused(two_runs, tmp_path):
    a, _ = two_runs
    twin = tmp_path / "twin"
    shutil.copytree(a, twin)
    payload = json.loads((twin / "results.json").read_text())
    payload["summary"]["bn_adapt"]["mean"] += 0.01
    (twin / "results.json").write_text(json.dumps(payload))
    result = cli("bench", "summary", str(a), str(twin), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "bn_adapt on continual" in result.stderr
    assert "pass only one" in result.stderr


def test_a_folder_that_is_not_a_run_gives_one_clear_line(tmp_path):
    result = cli("bench", "summary", str(tmp_path), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "is not a `cdca bench adapt` run folder" in result.stderr


def test_runs_on_two_benchmarks_are_refused(two_runs, tmp_path):
    a, _ = two_runs
    other = tmp_path / "other"
    shutil.copytree(a, other)
    payload = json.loads((other / "results.json").read_text())
    payload["config"]["data"] = "/elsewhere/digits-c"
    (other / "results.json").write_text(json.dumps(payload))
    result = cli("bench", "summary", str(a), str(other), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "put each benchmark on its own page" in result.stderr

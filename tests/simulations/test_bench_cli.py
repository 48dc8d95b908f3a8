import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from simulations.cli import main

ROOT = Path(__file__).resolve().parents[2]


def bench_args(tiny_benchmark, tiny_student, out, methods="source,bn_adapt,tent,cotta,vdp"):
    return [
        "bench",
        "adapt",
        "--data",
        str(tiny_benchmark),
        "--student",
        str(tiny_student),
        "--methods",
        methods,
        "--corruptions",
        "gaussian_noise,contrast",
        "--num-per-domain",
        "12",
        "--batch-size",
        "4",
        "--threads",
        "1",
        "--out",
        str(out),
    ]


def test_bench_adapt_writes_json_markdown_and_plot(tiny_benchmark, tiny_student, tmp_path):
    assert main(bench_args(tiny_benchmark, tiny_student, tmp_path / "run")) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    rows = {r["method"]: r for r in results["results"]}
    assert set(rows) == {"source", "bn_adapt", "tent", "cotta", "vdp"}
    for row in rows.values():
        assert row["domains"] == ["gaussian_noise", "contrast"]
        assert row["num_images"] == 24
        assert row["mean"] == pytest.approx(np.mean(list(row["accuracy"].values())))
    table = (tmp_path / "run" / "results.md").read_text()
    source = rows["source"]
    assert f"| source | {100 * source['accuracy']['gaussian_noise']:.1f} |" in table
    assert (tmp_path / "run" / "accuracy.png").stat().st_size > 5000


def test_cloud_device_rows_report_uploads_and_bytes(
    tiny_benchmark, tiny_distilled, shipped_random_teacher, tmp_path, capsys
):
    from protocol.config.project import load_project

    args = bench_args(tiny_benchmark, tiny_distilled, tmp_path / "run", "source,uvpa,cloud_teacher")
    synthetic_off = ["--set", "adaptation.synthetic.count=0"]  # no training images of these classes
    assert main([*args, "--budget", "0.25", "--delay", "2", *synthetic_off]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    rows = {r["method"]: r for r in results["results"]}
    assert 0 < rows["uvpa"]["costs"]["upload_fraction"] <= 0.25
    assert rows["cloud_teacher"]["costs"]["upload_fraction"] == 1.0
    assert rows["source"]["costs"]["bytes_up_per_1000"] == 0
    assert results["config"]["delay"] == 2
    settings = load_project(tmp_path / "run" / "config.toml")  # what the rows ran with
    assert settings.adaptation.device.budget == 0.25
    assert (tmp_path / "run" / "model" / "student.onnx").is_file()  # the device it ran
    assert "| uvpa |" in (tmp_path / "run" / "results.md").read_text()


@pytest.mark.usefixtures("fashion_mnist_installed")  # the int8 calibration's training images
def test_the_int8_row_runs_the_device_on_a_quantised_copy_of_the_served_model(
    tiny_benchmark, tiny_distilled, shipped_random_teacher, tmp_path
):
    args = bench_args(tiny_benchmark, tiny_distilled, tmp_path / "run", "uvpa,uvpa_int8")
    assert main([*args, "--set", "adaptation.synthetic.count=0"]) == 0
    assert (tmp_path / "run" / "model" / "student.int8.onnx").is_file()
    rows = {
        r["method"]: r
        for r in json.loads((tmp_path / "run" / "results.json").read_text())["results"]
    }
    fp32, int8 = rows["uvpa"]["costs"], rows["uvpa_int8"]["costs"]
    assert int8["device_state_mb"] < fp32["device_state_mb"]  # the int8 file is what it ran
    assert int8["upload_fraction"] > 0


def test_synthetic_samples_need_training_images_of_the_students_classes(
    tiny_benchmark, tiny_distilled, shipped_random_teacher, tmp_path, capsys
):
    args = bench_args(tiny_benchmark, tiny_distilled, tmp_path / "run", "uvpa")
    assert main(args) == 2  # the default renders 64 per fit from data.train (Fashion-MNIST)
    err = capsys.readouterr().err
    assert "training images of the student's classes" in err
    assert "adaptation.synthetic.count = 0" in err


def test_cloud_device_rows_need_a_distilled_student(tiny_benchmark, tiny_student, tmp_path):
    result = cli(*bench_args(tiny_benchmark, tiny_student, tmp_path / "run", "source,uvpa"))
    assert result.returncode == 2
    assert "needs a distilled student" in result.stderr


def test_bench_random_orders_report_spread(tiny_benchmark, tiny_student, tmp_path):
    args = bench_args(tiny_benchmark, tiny_student, tmp_path / "run", methods="source") + [
        "--stream",
        "random:3",
    ]
    assert main(args) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert len(results["results"]) == 3
    assert results["summary"]["source"]["streams"] == 3
    assert "Over all streams" in (tmp_path / "run" / "results.md").read_text()


def test_several_streams_add_a_panel_of_means_to_the_plot(tiny_benchmark, tiny_student, tmp_path):
    from matplotlib.image import imread

    widths = {}
    for stream in ("random:1", "random:2"):
        out = tmp_path / stream.replace(":", "")
        args = bench_args(tiny_benchmark, tiny_student, out, methods="source")
        assert main([*args, "--stream", stream]) == 0
        widths[stream] = imread(out / "accuracy.png").shape[1]
    assert widths["random:2"] - widths["random:1"] == 4 * 110  # the 4-inch panel at 110 dpi


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "simulations.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "/nonexistent/fmnist-c"], "does not exist"),
        (["--methods", "source,tnet"], "unknown method 'tnet'. Did you mean 'tent'?"),
        (["--corruptions", "gausian_noise"], "unknown corruption 'gausian_noise'"),
        (["--student", "/nonexistent/s.safetensors"], "cdca cloud distill"),
    ],
)
def test_bad_input_gives_one_clear_line_and_no_traceback(
    tiny_benchmark, tiny_student, tmp_path, args, message
):
    base = bench_args(tiny_benchmark, tiny_student, tmp_path / "run")
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[base.index(flag) + 1] = value
    result = cli(*base)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ")
    assert message in result.stderr


def test_corrupt_npy_gives_a_clear_error(tiny_benchmark, tiny_student, tmp_path):
    np.save(tiny_benchmark / "contrast.npy", np.zeros((10, 32, 32), np.uint8))
    result = cli(*bench_args(tiny_benchmark, tiny_student, tmp_path / "run"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "contrast.npy must hold (5*N, H, W, 3) uint8" in result.stderr


def test_data_prepare_missing_dataset_error(tmp_path, monkeypatch):
    result = cli(
        "data",
        "prepare",
        "--source",
        f"npz:{tmp_path / 'missing.npz'}",
        "--out",
        str(tmp_path / "o"),
    )
    assert result.returncode == 2
    assert "missing.npz does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_jobs_in_worker_processes_give_the_same_rows(tiny_benchmark, tiny_student, tmp_path):
    methods = "source,bn_adapt,tent,eata"
    here = bench_args(tiny_benchmark, tiny_student, tmp_path / "here", methods)
    workers = bench_args(tiny_benchmark, tiny_student, tmp_path / "workers", methods)
    assert main(here) == 0
    assert main([*workers, "--jobs", "2"]) == 0
    rows = [
        {
            r["method"]: r["accuracy"]
            for r in json.loads((tmp_path / d / "results.json").read_text())["results"]
        }
        for d in ("here", "workers")
    ]
    assert rows[0] == rows[1]
    settings = json.loads((tmp_path / "workers" / "results.json").read_text())["results"]
    assert {r["method"]: bool(r["hyperparameters"]) for r in settings}["eata"]


def test_bench_uplink_draws_accuracy_against_bytes(
    tiny_benchmark, tiny_distilled, shipped_random_teacher, tmp_path
):
    out = tmp_path / "uplink"
    args = [
        "bench",
        "uplink",
        "--set",
        f"data.shifted={tiny_benchmark}",
        "--set",
        f"student.checkpoint={tiny_distilled}",
        "--set",
        "adaptation.synthetic.count=0",
        "--budgets",
        "25,50",
        "--curves",
        "uvpa,cema_budget",
        "--flat",
        "bn_adapt,cloud_teacher",
        "--encodings",
        "raw,webp:50",
        "--corruptions",
        "gaussian_noise,contrast",
        "--num-per-domain",
        "12",
        "--batch-size",
        "4",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    payload = json.loads((out / "uplink.json").read_text())
    rows = {(r["method"], r["budget"], r["encoding"]): r for r in payload["rows"]}
    assert set(rows) == {
        *(
            (m, b, e)
            for m in ("uvpa", "cema_budget")
            for b in (0.25, 0.5)
            for e in ("raw", "webp:50")
        ),
        ("bn_adapt", None, "project"),
        ("cloud_teacher", None, "project"),
    }
    assert rows[("uvpa", 0.25, "raw")]["uploaded"] <= 0.25
    assert (
        rows[("uvpa", 0.5, "raw")]["kb_up_per_1000"] > rows[("uvpa", 0.25, "raw")]["kb_up_per_1000"]
    )
    assert (
        rows[("uvpa", 0.5, "webp:50")]["kb_up_per_1000"]
        < rows[("uvpa", 0.5, "raw")]["kb_up_per_1000"]
    )
    every = {e: rows[("uvpa", 0.5, e)]["every_frame_kb_per_1000"] for e in ("raw", "webp:50")}
    assert every["webp:50"] < every["raw"] < 3200  # raw: 3,072 pixel bytes a frame, and fields
    assert rows[("bn_adapt", None, "project")]["kb_up_per_1000"] == 0
    assert "| uvpa | raw | 25 |" in (out / "uplink.md").read_text()
    assert (out / "uplink.png").stat().st_size > 5000


def test_bench_uplink_refuses_bad_budgets_and_on_device_curves(capsys):
    assert main(["bench", "uplink", "--budgets", "0,200"]) == 2
    assert "budgets" in capsys.readouterr().err
    assert main(["bench", "uplink", "--curves", "tent"]) == 2
    assert "upload nothing" in capsys.readouterr().err
    assert main(["bench", "uplink", "--encodings", "png:50"]) == 2
    assert "webp:QUALITY" in capsys.readouterr().err
    assert main(["bench", "uplink", "--encodings", "webp:0"]) == 2
    assert "1 to 100" in capsys.readouterr().err

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from simulations.cli import main

ROOT = Path(__file__).resolve().parents[2]


def bench_args(tiny_benchmark, tiny_student, out, methods="source,bn_adapt,tent,cotta,vdp"):
    return ["bench", "adapt", "--data", str(tiny_benchmark), "--student", str(tiny_student),
            "--methods", methods, "--corruptions", "gaussian_noise,contrast", "--num-per-domain", "12",
            "--batch-size", "4", "--threads", "1", "--out", str(out)]  # fmt: skip


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
    args = bench_args(tiny_benchmark, tiny_distilled, tmp_path / "run", "source,uvpa,cloud_teacher")
    assert main([*args, "--budget", "0.25", "--delay", "2", "--fit-norms", "all"]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["config"]["fit_norms"] == "all"
    rows = {r["method"]: r for r in results["results"]}
    assert 0 < rows["uvpa"]["costs"]["upload_fraction"] <= 0.25
    assert rows["cloud_teacher"]["costs"]["upload_fraction"] == 1.0
    assert rows["source"]["costs"]["bytes_up_per_1000"] == 0
    assert results["config"]["delay"] == 2
    # the shipped companion knows Fashion-MNIST's classes, not this student's: a clear refusal
    args = bench_args(tiny_benchmark, tiny_distilled, tmp_path / "run2", "uvpa_companion")
    assert main(args) == 2
    assert "cdca train companion" in capsys.readouterr().err
    assert "| uvpa |" in (tmp_path / "run" / "results.md").read_text()


def test_bench_takes_a_companion_for_the_students_classes(
    tiny_benchmark, tiny_distilled, shipped_random_teacher, tmp_path, capsys
):
    from cloud.students.architectures import CompactCNN
    from cloud.teacher.companion import Companion, save_companion
    from tests.conftest import CLASS_NAMES

    args = bench_args(tiny_benchmark, tiny_distilled, tmp_path / "run", "uvpa_companion")
    assert main([*args, "--companion", str(tmp_path / "none.safetensors")]) == 2
    assert "create it with `cdca train companion`" in capsys.readouterr().err
    companion = tmp_path / "tiny-companion.safetensors"
    save_companion(companion, Companion(CompactCNN(len(CLASS_NAMES), 8), CLASS_NAMES), {})
    assert main([*args, "--budget", "1.0", "--companion", str(companion)]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["config"]["companion"] == "tiny-companion.safetensors"
    assert results["results"][0]["method"] == "uvpa_companion"


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
    return subprocess.run([sys.executable, "-m", "simulations.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


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


def test_benchmarks_find_the_shipped_companion_only_for_a_student_over_its_classes(
    tiny_distilled, tmp_path
):
    from cloud.distill.command import DEFAULT_DISTILLED
    from cloud.teacher.companion import COMPANION_CHECKPOINT
    from simulations.bench.models import load_bench_models

    shipped = load_bench_models(DEFAULT_DISTILLED)
    assert shipped.world.companion is not None
    assert shipped.description["companion"] == COMPANION_CHECKPOINT.name
    tiny = load_bench_models(tiny_distilled)  # 3 tiny classes: it would not fit
    assert tiny.world.companion is None
    missing = load_bench_models(DEFAULT_DISTILLED, companion=tmp_path / "missing.safetensors")
    assert missing.world.companion is None


def test_benchmarks_load_the_clean_training_set_only_when_asked_and_it_fits(
    tiny_distilled, fashion_mnist_installed
):
    from cloud.distill.command import DEFAULT_DISTILLED
    from simulations.bench.models import load_bench_models

    assert load_bench_models(DEFAULT_DISTILLED).world.clean is None  # the other rows
    clean = load_bench_models(DEFAULT_DISTILLED, clean_set=True).world.clean
    assert clean is not None
    assert clean.images.shape == (60000, 32, 32, 3)
    assert load_bench_models(tiny_distilled, clean_set=True).world.clean is None  # other classes

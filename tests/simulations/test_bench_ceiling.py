"""cdca bench ceiling: label-fitted prompt parts against BN-adapt, per domain."""

import json

import numpy as np
import pytest
import torch

from simulations.cli import main


def ceiling_args(tiny_benchmark, student, out, *extra):
    return [
        "bench",
        "ceiling",
        "--data",
        str(tiny_benchmark),
        "--student",
        str(student),
        "--corruptions",
        "gaussian_noise,contrast",
        "--num-per-domain",
        "12",
        "--train",
        "8",
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--threads",
        "1",
        "--out",
        str(out),
        *extra,
    ]


def test_ceiling_writes_every_domain_and_the_means(
    tiny_benchmark, tiny_distilled, tmp_path, capsys
):
    assert main(ceiling_args(tiny_benchmark, tiny_distilled, tmp_path / "run")) == 0
    result = json.loads((tmp_path / "run" / "ceiling.json").read_text())
    domains = result["domains"]
    assert [d["domain"] for d in domains] == ["gaussian_noise", "contrast"]
    for d in domains:
        assert d["best"] == max(d["bn_adapt"], d["label_fit"])
        assert d["bn_adapt"] in (0.0, 0.25, 0.5, 0.75, 1.0)  # 4 scored frames each
    assert result["mean"]["best"] == pytest.approx(np.mean([d["best"] for d in domains]))
    assert result["config"]["parts"] == "norm_affine"
    assert "| **mean** |" in capsys.readouterr().out


def test_label_fit_learns_the_labels_it_is_given(distilled):
    from cloud.export.device_model import DeviceModel
    from simulations.bench.ceiling import CeilingConfig, PromptCeiling

    student, vectors, info = distilled
    torch.manual_seed(0)
    x = torch.randn(16, 3, 32, 32)
    y = torch.randint(0, len(info.class_names), (16,))
    config = CeilingConfig(num_per_domain=32, train_count=16, steps=60, lr=0.05, batch_size=16)
    ceiling = PromptCeiling(DeviceModel(student), vectors, info.normalization, config)
    before = ceiling.accuracy(x, y, {})
    after = ceiling.accuracy(x, y, ceiling.fit(x, y))
    assert after > before
    assert after >= 0.75


@pytest.mark.parametrize("scope", ["encoder", "all"])
def test_label_fit_moves_only_the_batchnorms_in_scope(distilled, scope):
    from cloud.export.device_model import DeviceModel
    from simulations.bench.ceiling import CeilingConfig, PromptCeiling

    student, vectors, info = distilled
    torch.manual_seed(0)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, len(info.class_names), (16,))
    config = CeilingConfig(
        num_per_domain=32, train_count=16, steps=5, batch_size=16, fit_norms=scope
    )
    model = DeviceModel(student)
    moved = PromptCeiling(model, vectors, info.normalization, config).fit(x, y)["norm_affine"]
    for layer in model.norm_layers:
        block = moved[:, layer.offset : layer.offset + layer.channels]
        in_scope = scope == "all" or layer.name.startswith("encoder.")
        assert bool(block.abs().sum() > 0) == in_scope, layer.name


def test_fit_norms_reaches_the_results(tiny_benchmark, tiny_distilled, tmp_path):
    run = tmp_path / "run"
    assert main(ceiling_args(tiny_benchmark, tiny_distilled, run)) == 0
    assert json.loads((run / "ceiling.json").read_text())["config"]["fit_norms"] == "encoder"
    assert main(ceiling_args(tiny_benchmark, tiny_distilled, run, "--fit-norms", "all")) == 0
    assert json.loads((run / "ceiling.json").read_text())["config"]["fit_norms"] == "all"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--train", "12"], "--train (12) must be between"),
        (["--parts", "wings"], "--parts must be"),
        (["--corruptions", "contrast,smoke"], "smoke"),
        (["--num-per-domain", "13"], "12 images per severity"),
    ],
)
def test_bad_settings_say_what_to_change(
    tiny_benchmark, tiny_distilled, tmp_path, capsys, extra, message
):
    assert main(ceiling_args(tiny_benchmark, tiny_distilled, tmp_path / "run", *extra)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before any work


def test_a_label_trained_student_is_refused_clearly(tiny_benchmark, tiny_student, tmp_path, capsys):
    assert main(ceiling_args(tiny_benchmark, tiny_student, tmp_path / "run")) == 2
    assert "label-trained student" in capsys.readouterr().err

"""cdca bench ceiling: each parameterisation fitted on true labels, per source and domain, against BN-adapt."""

import json

import numpy as np
import pytest
import torch

from simulations.cli import main
from tests.conftest import CLASS_NAMES, make_images


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
        "--uploads",
        "6",
        "--clean-images",
        "16",
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


@pytest.fixture
def clean_project(tmp_path):
    """A project whose data.train holds clean images of the tiny classes."""
    images, labels = make_images(40, seed=5)
    np.savez(tmp_path / "clean.npz", images=images, labels=labels, class_names=list(CLASS_NAMES))
    project = tmp_path / "cdca.toml"
    project.write_text(f'[data]\ntrain = "npz:{tmp_path / "clean.npz"}"\n')
    return project


def test_ceiling_writes_every_parameterisation_source_and_domain(
    tiny_benchmark, tiny_distilled, clean_project, tmp_path, capsys
):
    run = tmp_path / "run"
    extra = ["--fit-on", "stream,renderer,oracle", "--project", str(clean_project)]
    assert main(ceiling_args(tiny_benchmark, tiny_distilled, run, *extra)) == 0
    result = json.loads((run / "ceiling.json").read_text())
    assert list(result["bn_adapt"]["domains"]) == ["gaussian_noise", "contrast"]
    rows = {(r["parameterisation"], r["fit_on"]): r for r in result["rows"]}
    from simulations.bench.ceiling import PARAMETERISATIONS

    assert set(rows) == {
        (p, s) for p in PARAMETERISATIONS for s in ("stream", "renderer", "oracle")
    }
    for row in rows.values():
        assert list(row["accuracy"]) == ["gaussian_noise", "contrast"]
        assert all(a in (0.0, 0.25, 0.5, 0.75, 1.0) for a in row["accuracy"].values())  # 4 scored
        assert row["mean"] == pytest.approx(np.mean(list(row["accuracy"].values())))
        assert row["best_of_both"] >= max(row["mean"], result["bn_adapt"]["mean"]) - 1e-9
    # bytes per prompt: encoder scale/shift (2 x 320 of the compact CNN's 576 channels are
    # fitted, all 2 x 576 ship), adapters add 2 x 8 per encoder channel, a model its weights
    assert rows[("norm_affine", "stream")]["bytes_down"] == 4 * 2 * 576
    assert rows[("norm_affine+adapters_r8", "stream")]["bytes_down"] == 4 * (2 * 576 + 2 * 8 * 320)
    assert (
        rows[("all_weights", "stream")]["bytes_down"]
        > 100 * rows[("norm_affine", "stream")]["bytes_down"]
    )
    out = capsys.readouterr().out
    assert "| BN-adapt (neutral prompt) |" in out
    assert "## Fit on oracle" in out
    assert (run / "ceiling.png").stat().st_size > 0


def test_label_fit_learns_the_labels_it_is_given(distilled):
    from cloud.export.device_model import DeviceModel
    from simulations.bench.ceiling import PARAMETERISATIONS, Parameterisation, PromptCeiling

    student, vectors, _info = distilled
    torch.manual_seed(0)
    x = torch.randn(16, 3, 32, 32)
    y = torch.randint(0, len(vectors), (16,))
    ceiling = PromptCeiling(DeviceModel(student), vectors, steps=60, batch_size=16)
    before = ceiling.accuracy(x, y, ceiling.unadapted())
    for how in (PARAMETERISATIONS["norm_affine"], PARAMETERISATIONS["all_weights"]):
        faster = Parameterisation(how.name, "", all_weights=how.all_weights, lr=0.05)
        after = ceiling.accuracy(x, y, ceiling.fit(x, y, faster))
        assert after > before, how.name
        assert after >= 0.75, how.name


def test_fits_change_only_what_they_fit(distilled):
    from cloud.export.device_model import DeviceModel
    from simulations.bench.ceiling import PARAMETERISATIONS, Fitted, PromptCeiling

    student, vectors, _info = distilled
    torch.manual_seed(0)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, len(vectors), (16,))
    model = DeviceModel(student)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    ceiling = PromptCeiling(model, vectors, steps=5, batch_size=16)
    for name in ("norm_affine", "norm_affine_all"):
        moved = ceiling.fit(x, y, PARAMETERISATIONS[name]).prompt["norm_affine"]
        for layer in model.norm_layers:
            block = moved[:, layer.offset : layer.offset + layer.channels]
            in_scope = name == "norm_affine_all" or layer.name.startswith("encoder.")
            assert bool(block.abs().sum() > 0) == in_scope, (name, layer.name)
    adapted = ceiling.fit(x, y, PARAMETERISATIONS["norm_affine+adapters_r8"])
    assert len(adapted.adapters) == 5  # one per encoder BatchNorm
    assert all(bool(up.abs().sum() > 0) for _, up in adapted.adapters.values())
    without = Fitted(model, adapted.prompt, {})
    assert not torch.allclose(ceiling.logits(adapted, x), ceiling.logits(without, x))
    assert not any(m._forward_hooks for m in model.modules())  # the hooks come off after use
    retrained = ceiling.fit(x, y, PARAMETERISATIONS["all_weights"])
    assert retrained.model is not model
    for key, value in model.state_dict().items():  # the shipped model is never trained
        assert torch.equal(value, weights[key]), key
    assert not all(torch.equal(v, weights[k]) for k, v in retrained.model.state_dict().items())
    plain = ceiling.logits(ceiling.unadapted(), x)
    assert torch.equal(plain, model(**{**ceiling.neutral, "x": x})[0])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--train", "12"], "--train (12) must be between"),
        (["--parameterisations", "wings"], "unknown parameterisation 'wings'"),
        (["--fit-on", "dreams"], "--fit-on must be"),
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


def test_renderer_needs_training_images_of_the_students_classes(
    tiny_benchmark, tiny_distilled, tmp_path, capsys
):
    # the built-in project's data.train is Fashion-MNIST: ten classes, not the tiny three
    args = ceiling_args(tiny_benchmark, tiny_distilled, tmp_path / "run", "--fit-on", "renderer")
    assert main(args) == 2
    assert "data.train" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_label_trained_student_is_refused_clearly(tiny_benchmark, tiny_student, tmp_path, capsys):
    assert main(ceiling_args(tiny_benchmark, tiny_student, tmp_path / "run")) == 2
    assert "label-trained student" in capsys.readouterr().err

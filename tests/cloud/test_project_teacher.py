"""The project's teacher through the commands: a pretrained open_clip model, a checkpoint's classes."""

import json

import numpy as np
import open_clip
import pytest
import torch

from simulations.cli import main
from tests.cloud.test_teacher import TINY
from tests.conftest import CLASS_NAMES, make_images


@pytest.fixture
def project(tmp_path):
    """3 classes of 32-px images as an npz, and a tiny open_clip model in a local-dir folder."""
    images, labels = make_images(60)
    np.savez(tmp_path / "set.npz", images=images, labels=labels, class_names=np.array(CLASS_NAMES))
    folder = tmp_path / "clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": TINY, "preprocess_cfg": {}})
    )
    torch.manual_seed(3)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    open_clip.add_model_config(config)
    torch.save(open_clip.create_model("tiny").state_dict(), folder / "open_clip_pytorch_model.bin")
    path = tmp_path / "cdca.toml"
    path.write_text(
        '[data]\ntrain = "npz:set.npz"\ntest = ""\nshifted = "shifted"\n'
        '[teacher]\nmodel = "local-dir:clip"\n'
        '[student]\ncheckpoint = "models/student.safetensors"\n'
    )
    return path


def test_a_pretrained_teacher_learns_prompts_and_is_distilled_from(project, capsys):
    args = ["--project", str(project)]
    assert main(["train", "teacher", *args]) == 2  # an open_clip teacher is not trained here
    assert "cdca cloud learn-prompts" in capsys.readouterr().err
    out = project.parent / "coop"
    assert (
        main(
            [
                "cloud",
                "learn-prompts",
                "--shots",
                "1",
                "--epochs",
                "1",
                "--num-test",
                "12",
                "--out",
                str(out),
                *args,
            ]
        )
        == 0
    )
    assert (out / "coop_1shot.pt").is_file()
    prompts = ["--set", f"teacher.prompts={out / 'coop_1shot.pt'}"]
    assert main(["cloud", "distill", "--epochs", "1", "--num-test", "12", *prompts, *args]) == 0
    from cloud.distill.checkpoint import load_distilled

    _, vectors, info = load_distilled(project.parent / "models" / "student.safetensors")
    assert info.class_names == CLASS_NAMES
    assert vectors.shape == (3, TINY["embed_dim"])  # the CLIP model's joint space
    assert info.trained["prompts"].endswith("coop_1shot.pt")


def test_a_teacher_checkpoint_of_other_classes_is_refused_and_nothing_is_written(project, capsys):
    # the shipped teacher knows Fashion-MNIST's 10 classes; this project has 3
    project.write_text(project.read_text().replace('model = "local-dir:clip"', 'model = "builtin"'))
    assert main(["cloud", "distill", "--epochs", "1", "--project", str(project)]) == 2
    err = capsys.readouterr().err
    assert "was trained on 10 classes" in err
    assert "the project has 3" in err
    assert "cdca train teacher" in err
    assert not (project.parent / "models").exists()

"""``cdca init``: a project file from a labelled image set, with its classes, size and policy."""

import numpy as np
import pytest
from PIL import Image

from protocol.config.project import load_project
from simulations.cli import main


def folder(root, classes, count, size=(48, 48)):
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_init_writes_a_project_that_loads_with_the_datas_classes_and_size(tmp_path, capsys):
    folder(tmp_path / "photos", ["cat", "dog", "bird"], 10)
    assert main(["init", f"image-folder:{tmp_path / 'photos'}", "--dir", str(tmp_path / "p")]) == 0
    project = load_project(tmp_path / "p" / "cdca.toml")
    assert project.data.train == f"image-folder:{tmp_path / 'photos'}"
    assert project.data.class_names == ("bird", "cat", "dog")  # written out: edit to reorder
    assert (project.data.image_size, project.data.resize) == (48, "none")
    assert project.teacher.checkpoint == tmp_path / "p" / "models" / "teacher.safetensors"
    assert project.fleet.per_domain == 6  # 2 held-out images per class
    out = capsys.readouterr().out
    assert "30 images, 3 classes" in out
    assert "warning: class 'bird' has only 10 images" in out
    assert "cdca train teacher" in out
    assert (
        main(["init", str(tmp_path / "photos"), "--dir", str(tmp_path / "p")]) == 2
    )  # no overwrite
    assert main(["init", str(tmp_path / "photos"), "--dir", str(tmp_path / "p"), "--force"]) == 0


def test_mixed_sizes_default_to_crop_and_an_npz_is_recognised(tmp_path):
    root = folder(tmp_path / "mixed", ["a", "b"], 3, size=(40, 30))
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(root / "a" / "big.png")
    assert main(["init", str(root), "--dir", str(tmp_path / "m")]) == 0
    mixed = load_project(tmp_path / "m" / "cdca.toml")
    assert (mixed.data.image_size, mixed.data.resize) == (30, "crop")
    np.savez(tmp_path / "d.npz", images=np.zeros((20, 8, 8), np.uint8), labels=np.arange(20) % 4)
    assert (
        main(
            [
                "init",
                str(tmp_path / "d.npz"),
                "--dir",
                str(tmp_path / "n"),
                "--image-size",
                "32",
                "--resize",
                "stretch",
            ]
        )
        == 0
    )
    npz = load_project(tmp_path / "n" / "cdca.toml")
    assert npz.data.train == f"npz:{tmp_path / 'd.npz'}"
    assert npz.data.class_names == ("class_0", "class_1", "class_2", "class_3")
    assert (npz.data.image_size, npz.data.resize) == (32, "stretch")


@pytest.mark.parametrize(
    ("classes", "message"), [(["only"], "at least 2"), ([], "no class sub-folders")]
)
def test_data_init_cannot_use_is_refused_and_nothing_is_written(tmp_path, capsys, classes, message):
    root = folder(tmp_path / "photos", classes, 2)
    root.mkdir(exist_ok=True)
    assert main(["init", str(root), "--dir", str(tmp_path / "p")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "p" / "cdca.toml").exists()

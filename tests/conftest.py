"""Shared fixtures: tiny images, a tiny benchmark folder in the CIFAR-10-C layout, a tiny student."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

CLASS_NAMES = ("zero", "one", "two")


def make_images(count: int, seed: int = 0, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Blobs on black whose brightness pattern depends on the label, so a model can learn them."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASS_NAMES), count)
    images = np.zeros((count, size, size, 3), np.uint8)
    for i, label in enumerate(labels):
        top = 4 + 8 * int(label)
        images[i, top : top + 8, 8:24] = 200 + rng.integers(0, 55)
    return images, labels.astype(np.int64)


@pytest.fixture(autouse=True)
def _pythonpath_restored():
    """Put PYTHONPATH back after each test: Flower's Ray backend exports the test process's
    sys.path as PYTHONPATH, which every later subprocess would otherwise inherit."""
    before = os.environ.get("PYTHONPATH")
    yield
    if before is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = before


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def tiny_benchmark(tmp_path: Path) -> Path:
    """A CIFAR-10-C-layout folder: 2 corruptions, 5 severities x 12 images, labels.npy, dataset.json."""
    from cloud.data.corruptions import corrupt_batch

    root = tmp_path / "tiny-c"
    root.mkdir()
    images, labels = make_images(12)
    for name in ("gaussian_noise", "contrast"):
        blocks = [corrupt_batch(images, name, s) for s in range(1, 6)]
        np.save(root / f"{name}.npy", np.concatenate(blocks))
    np.save(root / "labels.npy", np.tile(labels, 5))
    (root / "dataset.json").write_text(json.dumps({"class_names": list(CLASS_NAMES)}))
    return root


@pytest.fixture
def tiny_student(tmp_path: Path) -> Path:
    """A randomly initialised compact CNN checkpoint for the 3 tiny classes."""
    import torch

    from cloud.students import create_student
    from cloud.students.checkpoint import StudentInfo, save_student
    from cloud.students.preprocess import Normalization

    torch.manual_seed(0)
    model = create_student("compact_cnn", len(CLASS_NAMES))
    info = StudentInfo("compact_cnn", CLASS_NAMES, Normalization((0.2, 0.2, 0.2), (0.3, 0.3, 0.3)))
    path = tmp_path / "student.safetensors"
    save_student(path, model, info)
    return path


@pytest.fixture
def shipped_random_teacher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A random built-in teacher saved and installed as the shipped checkpoint for this test."""
    from cloud.teacher.factory import create_teacher, save_teacher_weights

    teacher = create_teacher("builtin", device="cpu", load_weights=False)
    path = tmp_path / "teacher.safetensors"
    save_teacher_weights(teacher.model, path, {})
    monkeypatch.setattr("cloud.shipped.SHIPPED_TEACHER", path)
    return path


def require_fashion_mnist() -> None:
    """Skip unless the Debian Fashion-MNIST package is there (make test installs it).

    CI sets ``CDCA_REQUIRE_DATA=1``: there a missing package fails the test instead, so a
    broken install cannot pass as a run of skipped tests.
    """
    from cloud.data import fashion_mnist

    if fashion_mnist.DEBIAN_DIR.is_dir():
        return
    message = "needs the Debian dataset-fashion-mnist package (make fashion-mnist installs it)"
    if os.environ.get("CDCA_REQUIRE_DATA") == "1":
        pytest.fail(message + "; CDCA_REQUIRE_DATA=1 makes missing data an error")
    pytest.skip(message)


@pytest.fixture
def fashion_mnist_installed() -> None:
    """The test needs the Debian Fashion-MNIST package (see ``require_fashion_mnist``)."""
    require_fashion_mnist()


EXPORT_CLASSES = tuple(f"c{i}" for i in range(4))


@pytest.fixture(scope="session")
def distilled():
    """A random distilled student (4 classes, 16-d space) with non-trivial BN statistics."""
    import torch

    from cloud.distill.checkpoint import DistilledInfo
    from cloud.distill.student import DistilledStudent
    from cloud.students import create_student
    from cloud.students.preprocess import Normalization

    torch.manual_seed(0)
    student = DistilledStudent(create_student("compact_cnn", len(EXPORT_CLASSES)), 16, 20.0)
    student.train()
    with torch.no_grad():
        for _ in range(3):
            student(torch.randn(32, 3, 32, 32) * 1.5 + 0.3, torch.eye(16)[: len(EXPORT_CLASSES)])
    student.eval()
    vectors = torch.nn.functional.normalize(torch.randn(len(EXPORT_CLASSES), 16), dim=-1)
    info = DistilledInfo(
        "compact_cnn", EXPORT_CLASSES, Normalization((0.2,) * 3, (0.3,) * 3), 16, 20.0, "tiny"
    )
    return student, vectors, info


@pytest.fixture(scope="session")
def exported(distilled, tmp_path_factory):
    """The distilled fixture exported once: ONNX, defaults and manifest."""
    from cloud.export.onnx_export import export_device_model

    student, vectors, info = distilled
    return export_device_model(student, vectors, info, tmp_path_factory.mktemp("export"))


@pytest.fixture
def tiny_distilled(tmp_path):
    """A random distilled student in the built-in teacher's 128-d space, for the 3 tiny classes."""
    import torch

    from cloud.distill.checkpoint import DistilledInfo, save_distilled
    from cloud.distill.student import DistilledStudent
    from cloud.students import create_student
    from cloud.students.preprocess import Normalization

    torch.manual_seed(0)
    student = DistilledStudent(create_student("compact_cnn", 3), 128, 20.0).eval()
    vectors = torch.nn.functional.normalize(torch.randn(3, 128), dim=-1)
    info = DistilledInfo(
        "compact_cnn", CLASS_NAMES, Normalization((0.2,) * 3, (0.3,) * 3), 128, 20.0, "builtin"
    )
    path = tmp_path / "distilled.safetensors"
    save_distilled(path, student, vectors, info)
    return path


def prepare_fashion_mnist_c(
    folder: Path, num_images: int, corruptions: str = "fog,contrast"
) -> Path:
    """A small real Fashion-MNIST-C written by `cdca data prepare` (needs the Debian package)."""
    from simulations.cli import main

    args = [
        "data",
        "prepare",
        "--out",
        str(folder),
        "--corruptions",
        corruptions,
        "--num-images",
        str(num_images),
    ]
    assert main(args) == 0
    return folder

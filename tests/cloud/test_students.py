import numpy as np
import pytest
import torch

from cloud.data.labelled import LabelledImages
from cloud.students import create_student, list_students
from cloud.students.checkpoint import StudentInfo, load_student, save_student
from cloud.students.preprocess import Normalization
from cloud.students.training import TrainConfig, augment, evaluate, train_supervised
from protocol.errors import DataError, UnknownNameError
from tests.conftest import CLASS_NAMES, make_images, require_fashion_mnist


@pytest.mark.parametrize("arch", list_students())
def test_students_give_logits_and_features(arch):
    model = create_student(arch, 10).eval()
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 10)
    assert model.forward_features(x).shape == (2, model.feature_dim)


def test_compact_cnn_is_edge_sized():
    assert sum(p.numel() for p in create_student("compact_cnn", 10).parameters()) < 200_000


def test_unknown_architecture():
    with pytest.raises(UnknownNameError, match="compact_cnn"):
        create_student("resnet9000", 10)


def test_checkpoint_round_trip_keeps_weights_and_contract(tmp_path):
    model = create_student("compact_cnn", 3)
    info = StudentInfo(
        "compact_cnn",
        CLASS_NAMES,
        Normalization((0.1, 0.2, 0.3), (0.4, 0.5, 0.6)),
        trained={"seed": 7},
    )
    save_student(tmp_path / "s.safetensors", model, info)
    loaded, loaded_info = load_student(tmp_path / "s.safetensors")
    assert loaded_info == info
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)


def test_missing_and_corrupt_checkpoints_name_the_fix(tmp_path):
    with pytest.raises(DataError, match="cdca train student"):
        load_student(tmp_path / "none.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(DataError, match="not a usable student checkpoint"):
        load_student(tmp_path / "bad.safetensors")


def test_augment_keeps_shape_and_content_mass():
    x = torch.rand(4, 3, 32, 32)
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert out.sum() <= x.sum() + 1e-3  # translation with zero padding only loses pixels


def test_training_learns_and_resumes(tmp_path):
    images, labels = make_images(96)
    data = LabelledImages(images, labels, CLASS_NAMES)
    norm = Normalization.fit(images)
    config = TrainConfig(epochs=6, batch_size=16, lr=5e-3, threads=1)
    torch.manual_seed(0)
    model = create_student("compact_cnn", 3)
    state = tmp_path / "state.pt"
    train_supervised(model, data, norm, config, state)
    assert evaluate(model, data, norm) > 0.9
    # A finished run resumes past its last epoch: no further steps, same weights.
    again = create_student("compact_cnn", 3)
    train_supervised(again, data, norm, config, state)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value)
    assert np.isclose(evaluate(again, data, norm), evaluate(model, data, norm))


def test_train_student_command_writes_a_loadable_checkpoint(tmp_path):
    from simulations.cli import main

    require_fashion_mnist()
    out = tmp_path / "mnv3.safetensors"
    args = [
        "train",
        "student",
        "--arch",
        "mobilenet_v3_small",
        "--limit",
        "64",
        "--epochs",
        "1",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    model, info = load_student(out)
    assert info.arch == "mobilenet_v3_small"
    assert info.trained["command"].startswith("cdca train student --arch mobilenet_v3_small")
    assert info.trained["train_images"] == 64
    assert not out.with_name(out.name + ".state.pt").exists()

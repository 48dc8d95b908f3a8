import json

import numpy as np
import open_clip
import pytest
import torch

from cloud.data.labelled import LabelledImages
from cloud.teacher.factory import create_teacher, load_teacher_weights, save_teacher_weights
from cloud.teacher.training import TeacherTrainConfig, evaluate_teacher, train_teacher
from protocol.errors import DataError, UnknownNameError
from tests.conftest import CLASS_NAMES, make_images

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_name(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "cdca-test-tiny.json"
    path.write_text(json.dumps(TINY))
    open_clip.add_model_config(path)
    return "cdca-test-tiny"


@pytest.fixture
def tiny_local_dir(tmp_path, tiny_name):
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": TINY, "preprocess_cfg": {}})
    )
    torch.manual_seed(3)
    model = open_clip.create_model(tiny_name)
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder, model


def test_builtin_teacher_classifies_32px_images_without_weights():
    teacher = create_teacher("builtin", device="cpu", load_weights=False)
    vectors = teacher.class_vectors(["shirt", "bag"])
    logits = teacher.logits(torch.rand(3, 3, 32, 32), vectors)
    assert logits.shape == (3, 2)
    assert not any(p.requires_grad for p in teacher.model.parameters())
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(2))


def test_open_clip_name_with_local_checkpoint_file(tmp_path, tiny_name):
    torch.manual_seed(5)
    reference = open_clip.create_model(tiny_name)
    torch.save(reference.state_dict(), tmp_path / "weights.pt")
    teacher = create_teacher(tiny_name, pretrained=str(tmp_path / "weights.pt"), device="cpu")
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(teacher.model.state_dict()[key], value)


def test_local_dir_schema_loads_config_and_weights(tiny_local_dir):
    folder, reference = tiny_local_dir
    teacher = create_teacher(f"local-dir:{folder}", device="cpu")
    torch.testing.assert_close(teacher.model.text_projection, reference.text_projection)
    assert teacher.preprocess.image_size == 32


def test_precision_argument_casts_weights(tiny_name):
    teacher = create_teacher(tiny_name, device="cpu", precision="bf16", load_weights=False)
    assert next(teacher.model.parameters()).dtype == torch.bfloat16
    assert teacher.logits(torch.rand(1, 3, 32, 32), teacher.class_vectors(["a", "b"])).shape == (
        1,
        2,
    )


def test_unknown_model_name_suggests_a_close_one():
    with pytest.raises(UnknownNameError, match="Did you mean 'ViT-B-32'"):
        create_teacher("ViT-B-23", device="cpu")


def test_missing_and_corrupt_checkpoints(tmp_path, tiny_name):
    with pytest.raises(DataError, match="cdca train teacher"):
        create_teacher("builtin", device="cpu", checkpoint=tmp_path / "none.safetensors")
    with pytest.raises(DataError, match="not found"):
        create_teacher(tiny_name, pretrained=str(tmp_path / "none.pt"), device="cpu")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(DataError, match="not a usable teacher checkpoint"):
        create_teacher("builtin", device="cpu", checkpoint=tmp_path / "bad.safetensors")
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="could not load"):
        create_teacher(tiny_name, pretrained=str(tmp_path / "bad.pt"), device="cpu")


def test_pretrained_tag_while_offline_says_how_to_fix(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", offline)
    with pytest.raises(DataError, match="go online once, or pass a local file"):
        create_teacher("RN50", pretrained="openai", device="cpu")


def test_teacher_weights_round_trip_in_fp16(tmp_path):
    teacher = create_teacher("builtin", device="cpu", load_weights=False)
    save_teacher_weights(teacher.model, tmp_path / "t.safetensors", {"seed": 1})
    again = create_teacher("builtin", device="cpu", load_weights=False)
    assert load_teacher_weights(again.model, tmp_path / "t.safetensors") == {"seed": 1}
    for key, value in teacher.model.state_dict().items():
        torch.testing.assert_close(again.model.state_dict()[key], value.half().float())


def test_teacher_training_resumes_from_its_state(tmp_path):
    images, labels = make_images(96)
    data = LabelledImages(images, labels, CLASS_NAMES)
    teacher = create_teacher("builtin", device="cpu", load_weights=False)
    config = TeacherTrainConfig(epochs=3, batch_size=32, lr=3e-4, augmix_prob=0.0, threads=2)
    losses: list[float] = []
    train_teacher(
        teacher, data, config, tmp_path / "state.pt", lambda e, s, loss: losses.append(loss)
    )
    assert len(losses) == 9
    assert np.isfinite(losses).all()
    assert np.isfinite(float(teacher.logit_scale()))
    # The finished state makes a second call a no-op: nothing left to train.
    again: list[float] = []
    train_teacher(
        teacher, data, config, tmp_path / "state.pt", lambda e, s, loss: again.append(loss)
    )
    assert again == []


@pytest.mark.slow  # about 40 s on 2 cores: enough steps to leave the plateau at chance
def test_teacher_training_from_scratch_learns_tiny_data(tmp_path):
    torch.manual_seed(0)
    images, labels = make_images(96)
    data = LabelledImages(images, labels, CLASS_NAMES)
    teacher = create_teacher("builtin", device="cpu", load_weights=False)
    config = TeacherTrainConfig(
        epochs=60, batch_size=32, lr=3e-4, augmix_prob=0.0, extra_corruption_prob=0.0, threads=2
    )
    losses: list[float] = []
    train_teacher(teacher, data, config, tmp_path / "s.pt", lambda e, s, loss: losses.append(loss))
    assert np.mean(losses[-15:]) < 0.5 * np.log(3)  # well below a uniform guess
    assert evaluate_teacher(teacher, data, teacher.class_vectors(CLASS_NAMES)) > 0.9


def test_a_teacher_run_that_diverges_writes_nothing_and_says_what_to_try(tmp_path, monkeypatch):
    from cloud.teacher import training
    from cloud.watchdog import TrainingFailed

    images, labels = make_images(32)
    data = LabelledImages(images, labels, CLASS_NAMES)
    teacher = create_teacher("builtin", device="cpu", load_weights=False)
    monkeypatch.setattr(
        training.F, "cross_entropy", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True)
    )
    config = TeacherTrainConfig(epochs=1, batch_size=16, augmix_prob=0.0, threads=1)
    with pytest.raises(TrainingFailed, match="diverged.*lower --lr"):
        train_teacher(teacher, data, config, tmp_path / "state.pt")
    assert not (tmp_path / "state.pt").exists()


@pytest.mark.usefixtures("fashion_mnist_installed")
def test_shipped_teacher_is_accurate_and_more_robust_than_the_student():
    from cloud.data.corruptions import TEST_CORRUPTIONS, corrupt_batch
    from cloud.data.fashion_mnist import load_fashion_mnist

    teacher = create_teacher("builtin", device="cpu")
    test = load_fashion_mnist("test", allow_download=False).take(200)
    vectors = teacher.class_vectors(test.class_names)
    assert evaluate_teacher(teacher, test, vectors) > 0.84
    shifted = [
        evaluate_teacher(
            teacher,
            LabelledImages(
                corrupt_batch(test.images[:100], c, 5), test.labels[:100], test.class_names
            ),
            vectors,
        )
        for c in TEST_CORRUPTIONS
    ]
    assert np.mean(shifted) > 0.72  # the clean-trained student keeps ~0.56 here

"""The companion teacher: trains, round-trips, normalises with the images it is given, fails clearly."""

from pathlib import Path

import pytest
import torch

from cloud.data.labelled import LabelledImages
from cloud.students.preprocess import pixels_from_uint8
from cloud.teacher.companion import (
    Companion,
    CompanionConfig,
    load_companion,
    save_companion,
    train_companion,
)
from cloud.train_cli import main
from protocol.errors import ConfigError, DataError
from tests.conftest import CLASS_NAMES, make_images


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    images, labels = make_images(256)
    data = LabelledImages(images, labels, CLASS_NAMES, "blobs")
    state = tmp_path_factory.mktemp("companion") / "state.pt"
    # raw pixels: these tests are about the batch re-normalisation, not the front end
    config = CompanionConfig(width=8, epochs=2, batch_size=32, lr=5e-3, front_end="none")
    return train_companion(data, config, state), data


def test_training_learns_and_a_saved_companion_answers_the_same(trained, tmp_path):
    companion, data = trained
    pixels = pixels_from_uint8(data.images[:64])
    probs = companion.probabilities(pixels)
    torch.testing.assert_close(probs.sum(1), torch.ones(64))
    assert (probs.argmax(1).numpy() == data.labels[:64]).mean() > 0.5  # blobs are easy
    save_companion(tmp_path / "c.safetensors", companion, {"command": "test"})
    again = load_companion(tmp_path / "c.safetensors")
    assert again.class_names == tuple(CLASS_NAMES)
    torch.testing.assert_close(again.probabilities(pixels), probs)


def test_each_call_normalises_with_its_own_images(trained):
    companion, data = trained
    pixels = pixels_from_uint8(data.images[:16])
    alone = companion.probabilities(pixels)
    darker = torch.cat([pixels, pixels[:8] * 0.2])  # other images change the statistics
    assert not torch.allclose(companion.probabilities(darker)[:16], alone)
    # a uniformly dimmer environment looks much the same once re-normalised (the point of it)
    dim = companion.probabilities(pixels * 0.5)
    assert (dim.argmax(1) == alone.argmax(1)).float().mean() >= 0.9


def test_too_few_images_missing_files_and_other_checkpoints_are_clear_errors(
    trained, tmp_path, tiny_student
):
    companion, data = trained
    with pytest.raises(DataError, match="at least 8"):
        companion.probabilities(pixels_from_uint8(data.images[:3]))
    with pytest.raises(DataError, match="cdca train companion"):
        load_companion(tmp_path / "missing.safetensors")
    with pytest.raises(DataError, match="not a companion"):
        load_companion(tiny_student)


def test_cli_trains_measures_and_saves(tmp_path, fashion_mnist_installed, capsys):
    out = tmp_path / "companion.safetensors"
    argv = ["companion", "--limit", "256", "--epochs", "1", "--width", "8", "--out", str(out),
            "--eval-data", str(tmp_path / "none")]  # fmt: skip
    assert main(argv) == 0
    assert "clean_test_accuracy=" in capsys.readouterr().out
    assert isinstance(load_companion(out), Companion)
    assert not out.with_name(out.name + ".state.pt").exists()


def test_a_server_world_hands_its_companion_to_every_device_session(exported, distilled):
    from cloud.server.world import CloudWorld
    from tests.system.conftest import tiny_world

    world: CloudWorld = tiny_world(exported, distilled)
    assert world.new_fleet().session("cam-a").companion is None

    def view(pixels):
        return torch.full((len(pixels), 4), 0.25)

    world.companion = view
    assert world.new_fleet().session("cam-a").companion is view


def test_the_server_takes_a_companion_path_and_refuses_one_for_other_classes(trained, tmp_path):
    from cloud.server.config import load_config
    from cloud.teacher.companion import companion_for

    assert load_config(companion="c.safetensors").companion == Path("c.safetensors")
    companion, _ = trained
    save_companion(tmp_path / "c.safetensors", companion, {})
    assert companion_for(tmp_path / "c.safetensors", tuple(CLASS_NAMES)).class_names == CLASS_NAMES
    with pytest.raises(DataError, match="retrain it with `cdca train companion`"):
        companion_for(tmp_path / "c.safetensors", ("a", "b", "c"))


def test_the_front_end_round_trips_and_older_checkpoints_load_without_one(tmp_path):
    from cloud.weights_io import read_weights, save_weights

    assert CompanionConfig().front_end == "lcn"  # the default since it measured best (docs/uvpa.md)
    images, labels = make_images(64)
    data = LabelledImages(images, labels, CLASS_NAMES, "blobs")
    config = CompanionConfig(width=4, epochs=1, batch_size=32)
    companion = train_companion(data, config, tmp_path / "state.pt")
    pixels = pixels_from_uint8(images[:16])
    save_companion(tmp_path / "c.safetensors", companion, {})
    again = load_companion(tmp_path / "c.safetensors")
    assert again.front_end == "lcn"
    torch.testing.assert_close(again.probabilities(pixels), companion.probabilities(pixels))
    tensors, meta = read_weights(tmp_path / "c.safetensors", kind="companion", make_it="")
    older = {k: v for k, v in meta.items() if k != "front_end"}  # written before front ends
    save_weights(tmp_path / "old.safetensors", tensors, older)
    assert load_companion(tmp_path / "old.safetensors").front_end == "none"
    save_weights(tmp_path / "odd.safetensors", tensors, {**meta, "front_end": "sharpen"})
    with pytest.raises(DataError, match="unknown companion front end.*retrain"):
        load_companion(tmp_path / "odd.safetensors")
    with pytest.raises(ConfigError, match="unknown companion front end"):
        CompanionConfig(front_end="sharpen")

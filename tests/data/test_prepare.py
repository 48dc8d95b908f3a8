import json

import numpy as np
import pytest

from cloud.data.card import write_dataset_card
from cloud.data.labelled import LabelledImages
from cloud.data.prepare import PrepareRequest, prepare_corrupted
from protocol.errors import ConfigError
from tests.conftest import CLASS_NAMES, make_images


@pytest.fixture
def source():
    images, labels = make_images(10)
    return LabelledImages(images, labels, CLASS_NAMES, name="tiny")


def test_prepare_writes_cifar_layout_and_skips_done_work(tmp_path, source):
    request = PrepareRequest(source, tmp_path / "out", ["fog", "contrast"], num_images=8, workers=1)
    assert sorted(prepare_corrupted(request)) == ["contrast", "fog"]
    fog = np.load(tmp_path / "out" / "fog.npy")
    assert fog.shape == (40, 32, 32, 3)
    assert fog.dtype == np.uint8
    assert np.load(tmp_path / "out" / "labels.npy").shape == (40,)
    mtime = (tmp_path / "out" / "fog.npy").stat().st_mtime_ns
    assert prepare_corrupted(request) == []
    assert (tmp_path / "out" / "fog.npy").stat().st_mtime_ns == mtime


def test_prepare_is_reproducible(tmp_path, source):
    for name in ("a", "b"):
        prepare_corrupted(PrepareRequest(source, tmp_path / name, ["snow"], num_images=4, workers=1))
    np.testing.assert_array_equal(np.load(tmp_path / "a" / "snow.npy"), np.load(tmp_path / "b" / "snow.npy"))


def test_prepare_refuses_to_mix_seeds_in_one_folder(tmp_path, source):
    prepare_corrupted(PrepareRequest(source, tmp_path, ["fog"], num_images=4, workers=1))
    with pytest.raises(ConfigError, match="--force"):
        prepare_corrupted(PrepareRequest(source, tmp_path, ["fog"], num_images=4, seed=9, workers=1))


def test_prepare_rejects_more_images_than_the_source_has(tmp_path, source):
    with pytest.raises(ConfigError, match="only 10 images"):
        prepare_corrupted(PrepareRequest(source, tmp_path, ["fog"], num_images=11, workers=1))


def test_dataset_card_records_the_constants(tmp_path, source):
    prepare_corrupted(PrepareRequest(source, tmp_path, ["fog", "contrast"], num_images=4, workers=1))
    card = write_dataset_card(tmp_path, "cdca data prepare --test", source.images[:4]).read_text()
    assert "| contrast | test | `0.75` | `0.5` | `0.4` | `0.3` | `0.15` |" in card
    assert "cdca data prepare --test" in card
    assert (tmp_path / "examples.png").stat().st_size > 1000
    assert json.loads((tmp_path / "dataset.json").read_text())["num_images"] == 4

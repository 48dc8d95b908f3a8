"""The cloud's clean set for synthetic samples: Fashion-MNIST's training split, or a clear refusal."""

import numpy as np
import pytest

from cloud.adaptation.clean_set import CLEAN_SET_MISSING, clean_renderer, load_clean_set
from cloud.data import fashion_mnist
from cloud.data.fashion_mnist import CLASS_NAMES
from cloud.data.labelled import LabelledImages
from protocol.errors import ConfigError, DataError


@pytest.fixture
def small_train_split(monkeypatch):
    """Fashion-MNIST's training split stood in for by 30 random images (no 180 MB read)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8)
    split = LabelledImages(images, rng.integers(0, 10, 30), CLASS_NAMES, "train")
    asked = []

    def load(name, data_dir=None, *, allow_download=True):
        asked.append((name, allow_download))
        return split

    monkeypatch.setattr(fashion_mnist, "load_fashion_mnist", load)
    return asked


def test_a_fashion_mnist_student_gets_a_renderer_over_the_training_split_offline(
    small_train_split,
):
    renderer = clean_renderer(CLASS_NAMES, count=7)
    assert renderer.config.count == 7
    assert renderer.frame_shape == (3, 32, 32)
    assert renderer.num_classes == 10
    assert small_train_split == [("train", False)]  # never the test split, never a download


def test_a_student_over_other_classes_has_no_clean_set_and_is_told_so(small_train_split):
    assert load_clean_set(("cat", "dog")) is None
    with pytest.raises(ConfigError, match="only Fashion-MNIST's are known here"):
        clean_renderer(("cat", "dog"), count=8)
    assert small_train_split == []


def test_a_missing_training_split_says_how_to_install_it(monkeypatch):
    def missing(*args, **kwargs):
        raise DataError("not found")

    monkeypatch.setattr(fashion_mnist, "load_fashion_mnist", missing)
    assert load_clean_set(CLASS_NAMES) is None
    with pytest.raises(ConfigError, match="dataset-fashion-mnist") as err:
        clean_renderer(CLASS_NAMES, count=8)
    assert CLEAN_SET_MISSING in str(err.value)

"""The cloud's clean set for synthetic samples: the project's own training split, or a clear refusal."""

import numpy as np
import pytest

from cloud.adaptation.clean_set import clean_renderer
from protocol.config.adaptation import SyntheticConfig
from protocol.config.data import DataConfig
from protocol.errors import ConfigError


@pytest.fixture
def digits_npz(tmp_path):
    """30 random 16-px images of 3 named classes, as a user's npz."""
    rng = np.random.default_rng(0)
    path = tmp_path / "set.npz"
    np.savez(
        path,
        images=rng.integers(0, 256, (30, 16, 16), dtype=np.uint8),
        labels=np.arange(30) % 3,
        class_names=np.array(["a", "b", "c"]),
    )
    return path


def test_the_renderer_draws_on_the_projects_training_split(digits_npz):
    data = DataConfig(train=f"npz:{digits_npz}", test="", image_size=16, resize="none")
    renderer = clean_renderer(data, ("a", "b", "c"), 16, SyntheticConfig(count=7))
    assert renderer.config.count == 7
    assert renderer.frame_shape == (3, 16, 16)
    assert renderer.num_classes == 3
    assert len(renderer.images) == 24  # the 6 held-out test images are never rendered


def test_a_student_of_other_classes_is_told_to_point_data_train_at_its_data(digits_npz):
    data = DataConfig(train=f"npz:{digits_npz}", test="", image_size=16)
    with pytest.raises(ConfigError, match="training images of the student's classes") as err:
        clean_renderer(data, ("cat", "dog"), 16, SyntheticConfig(count=8))
    assert "adaptation.synthetic.count = 0" in str(err.value)


def test_unloadable_training_images_say_what_to_fix(tmp_path):
    data = DataConfig(train=f"npz:{tmp_path / 'missing.npz'}", test="")
    with pytest.raises(ConfigError, match="fix data.train"):
        clean_renderer(data, ("a", "b"), 32, SyntheticConfig(count=8))


def test_a_size_other_than_the_students_is_refused(digits_npz):
    data = DataConfig(train=f"npz:{digits_npz}", test="", image_size=16)
    with pytest.raises(ConfigError, match="takes 32-px images"):
        clean_renderer(data, ("a", "b", "c"), 32, SyntheticConfig(count=8))

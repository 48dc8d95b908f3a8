import numpy as np
import pytest

from cloud.data.corruptions import (
    CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    SEVERITY_CONSTANTS,
    TEST_CORRUPTIONS,
    corrupt_batch,
    list_corruptions,
)
from protocol.errors import ConfigError, DataError, UnknownNameError
from tests.conftest import make_images

DETERMINISTIC = {"defocus_blur", "zoom_blur", "gaussian_blur", "brightness", "contrast",
                 "saturate", "jpeg_compression", "pixelate"}


def test_suite_has_the_15_test_corruptions_in_cotta_order_and_4_extras():
    assert TEST_CORRUPTIONS[0] == "gaussian_noise"
    assert TEST_CORRUPTIONS[-1] == "jpeg_compression"
    assert len(TEST_CORRUPTIONS) == 15
    assert set(EXTRA_CORRUPTIONS) == {"speckle_noise", "gaussian_blur", "spatter", "saturate"}
    assert set(list_corruptions()) == set(CORRUPTIONS) == set(SEVERITY_CONSTANTS)
    assert all(len(SEVERITY_CONSTANTS[name]) == 5 for name in CORRUPTIONS)


@pytest.mark.parametrize("name", list_corruptions())
def test_corruption_keeps_shape_dtype_and_is_deterministic_per_seed(name):
    images, _ = make_images(6)
    first = corrupt_batch(images, name, 5, seed=1)
    again = corrupt_batch(images, name, 5, seed=1)
    assert first.shape == images.shape
    assert first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, images), f"{name} left the images unchanged"


@pytest.mark.parametrize("name", sorted(set(list_corruptions()) - DETERMINISTIC))
def test_random_corruption_changes_with_the_seed(name):
    images, _ = make_images(6)
    assert not np.array_equal(corrupt_batch(images, name, 3, seed=1), corrupt_batch(images, name, 3, seed=2))


@pytest.mark.parametrize("name", ["gaussian_noise", "defocus_blur", "contrast", "fog", "pixelate", "zoom_blur"])
def test_severity_5_changes_images_more_than_severity_1(name):
    images, _ = make_images(16)
    change = [np.abs(corrupt_batch(images, name, s).astype(float) - images).mean() for s in (1, 5)]
    assert change[1] > change[0]


def test_cifar_constants_are_used_not_imagenet_ones():
    # CIFAR-10-C's Gaussian sigma at severity 5 is 0.10 (ImageNet-C: 0.38); contrast 0.15 (0.05).
    assert SEVERITY_CONSTANTS["gaussian_noise"][4] == pytest.approx(0.10)
    assert SEVERITY_CONSTANTS["contrast"][4] == pytest.approx(0.15)
    assert SEVERITY_CONSTANTS["brightness"][4] == pytest.approx(0.30)


def test_unknown_corruption_names_the_closest_match():
    images, _ = make_images(2)
    with pytest.raises(UnknownNameError, match="Did you mean 'gaussian_noise'"):
        corrupt_batch(images, "gausian_noise", 3)


def test_bad_severity_and_bad_images_are_refused():
    images, _ = make_images(2)
    with pytest.raises(ConfigError, match="severity"):
        corrupt_batch(images, "fog", 6)
    with pytest.raises(DataError, match="uint8"):
        corrupt_batch(images.astype(np.float32), "fog", 1)

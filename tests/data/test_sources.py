"""The user's images: npz and image folders, the resize policy, class names, the held-out split."""

import numpy as np
import pytest
from PIL import Image

from cloud.data.images import fit_images
from cloud.data.sources import load_source
from cloud.data.splits import load_split
from protocol.config.data import DataConfig
from protocol.errors import DataError
from tests.conftest import CLASS_NAMES, make_images


def write_folder(root, images, labels, names=CLASS_NAMES):
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize(
    ("policy", "shape"), [("pad", (2, 32, 32, 3)), ("crop", (2, 32, 32, 3)), ("stretch", (2, 32, 32, 3))]
)
def test_every_policy_brings_images_to_the_project_size(policy, shape):
    images = np.full((2, 20, 28, 3), 200, np.uint8)
    assert fit_images(images, 32, policy, "x").shape == shape


def test_pad_centres_smaller_images_on_black_without_resampling():
    images = np.full((1, 28, 28, 3), 200, np.uint8)
    padded = fit_images(images, 32, "pad", "x")
    assert padded[0, 2:30, 2:30].min() == 200 and padded[0, :2].max() == 0  # Fashion-MNIST's padding


def test_none_refuses_another_size_and_says_what_to_set():
    with pytest.raises(DataError, match="28x28 px, not 32x32; set data.resize"):
        fit_images(np.zeros((1, 28, 28, 3), np.uint8), 32, "none", "x")


def test_npz_keys_greyscale_and_class_names(tmp_path):
    images, labels = make_images(6, size=24)
    np.savez(tmp_path / "set.npz", images=images[..., 0], labels=labels, class_names=np.array(CLASS_NAMES))
    loaded = load_source(f"npz:{tmp_path / 'set.npz'}", image_size=32, resize="pad")
    assert loaded.images.shape == (6, 32, 32, 3)
    assert tuple(loaded.class_names) == CLASS_NAMES
    np.testing.assert_array_equal(loaded.labels, labels)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"pictures": np.zeros((2, 8, 8), np.uint8)}, "lacks the array(s) ['images', 'labels']"),
        ({"images": np.zeros((2, 8, 8)), "labels": np.zeros(2, int)}, "must be uint8 (0-255), got float64"),
        ({"images": np.zeros((2, 8, 8), np.uint8), "labels": np.array([0, 5]),
          "class_names": np.array(["a", "b"])}, "labels go up to 5 but class_names has 2"),
        ({"images": np.zeros((2, 8, 8), np.uint8), "labels": np.array([0, -1])}, "labels must start at 0"),
        ({"images": np.zeros((2, 8, 8, 4), np.uint8), "labels": np.zeros(2, int)}, "must be (N, H, W)"),
    ],
)
def test_a_bad_npz_is_one_clear_error(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError) as err:
        load_source(f"npz:{tmp_path / 'bad.npz'}", image_size=8)
    assert message in str(err.value)


def test_a_class_list_that_does_not_fit_the_npz_is_refused(tmp_path):
    images, labels = make_images(6)
    np.savez(tmp_path / "set.npz", images=images, labels=labels, class_names=np.array(CLASS_NAMES))
    with pytest.raises(DataError, match="data.class_names has 2 names but .* has 3 classes"):
        load_source(f"npz:{tmp_path / 'set.npz'}", class_names=("a", "b"))
    np.savez(tmp_path / "unnamed.npz", images=images, labels=np.full(6, 4))
    with pytest.raises(DataError, match="labels go up to 4 but data.class_names has 3"):
        load_source(f"npz:{tmp_path / 'unnamed.npz'}", class_names=CLASS_NAMES)


def test_image_folders_are_alphabetical_unless_the_class_names_say_otherwise(tmp_path):
    images, labels = make_images(9)
    root = write_folder(tmp_path / "photos", images, labels)
    alphabetical = load_source(f"image-folder:{root}")
    assert tuple(alphabetical.class_names) == ("one", "two", "zero")
    chosen = load_source(f"image-folder:{root}", class_names=CLASS_NAMES)
    assert tuple(chosen.class_names) == CLASS_NAMES
    # folder "zero" is label 0 again: read in the list's order, each image keeps its class
    np.testing.assert_array_equal(chosen.labels, np.sort(labels))
    with pytest.raises(DataError, match=r"no folder for \['three'\]; no name for the folder\(s\) \['zero'\]"):
        load_source(f"image-folder:{root}", class_names=("one", "two", "three"))


def test_an_empty_class_folder_and_mixed_sizes_are_clear_errors(tmp_path):
    images, labels = make_images(6)
    root = write_folder(tmp_path / "photos", images, labels)
    (root / "empty").mkdir()
    with pytest.raises(DataError, match="class folder .*empty holds no images"):
        load_source(f"image-folder:{root}")
    (root / "empty").rmdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(root / "zero" / "big.png")
    with pytest.raises(DataError, match="differ in size .*40x40 px.*data.resize is none"):
        load_source(f"image-folder:{root}", resize="none")
    assert load_source(f"image-folder:{root}", resize="crop").images.shape[1:] == (32, 32, 3)


def test_the_held_out_test_split_is_per_class_seeded_and_disjoint(tmp_path):
    images, labels = make_images(40, size=16)
    images[:, 0, 0, 0] = np.arange(40)  # a fingerprint per image
    np.savez(tmp_path / "set.npz", images=images, labels=labels, class_names=np.array(CLASS_NAMES))
    data = DataConfig(train=f"npz:{tmp_path / 'set.npz'}", test="", image_size=16, test_share=0.25)
    train, test = load_split(data, "train"), load_split(data, "test")
    assert len(train) + len(test) == 40
    assert not set(train.images[:, 0, 0, 0]) & set(test.images[:, 0, 0, 0])
    for label in range(3):  # every class is in the test split
        assert (test.labels == label).sum() == round((labels == label).sum() * 0.25)
    np.testing.assert_array_equal(load_split(data, "test").images, test.images)  # seeded
    assert len(load_split(data, "train", limit=5)) == 5

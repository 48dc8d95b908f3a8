import numpy as np
import pytest
from PIL import Image

from cloud.data.formats import ImageNetCDataset, NpyCorruptedDataset, open_benchmark
from cloud.data.sources import load_source
from protocol.errors import ConfigError, DataError, UnknownNameError
from tests.conftest import CLASS_NAMES, make_images


def test_cifar_layout_severity_blocks_and_labels(tiny_benchmark):
    dataset = open_benchmark(tiny_benchmark)
    assert dataset.corruptions() == ["contrast", "gaussian_noise"]
    assert tuple(dataset.class_names) == CLASS_NAMES
    whole = np.load(tiny_benchmark / "contrast.npy")
    block = dataset.load("contrast", 3, count=5, offset=2)
    np.testing.assert_array_equal(block.images, whole[2 * 12 + 2 : 2 * 12 + 7])
    np.testing.assert_array_equal(block.labels, make_images(12)[1][2:7])


def test_labels_of_length_n_are_accepted(tiny_benchmark):
    labels = np.load(tiny_benchmark / "labels.npy")[:12]
    np.save(tiny_benchmark / "labels.npy", labels)
    assert len(open_benchmark(tiny_benchmark).load("contrast", 5)) == 12


def test_cifar10_c_kind_gives_cifar_class_names(tiny_benchmark):
    (tiny_benchmark / "dataset.json").unlink()
    dataset = open_benchmark(f"cifar10-c:{tiny_benchmark}")
    assert dataset.class_names[0] == "airplane"


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros((60, 32, 32, 3), np.float32), "uint8"),
        (np.zeros((60, 32, 32), np.uint8), "CIFAR-10-C layout"),
        (np.zeros((61, 32, 32, 3), np.uint8), "multiple of 5"),
        (np.zeros((50, 32, 32, 3), np.uint8), "labels.npy has 60"),
    ],
)
def test_wrong_shape_or_dtype_npy_is_refused(tiny_benchmark, array, match):
    np.save(tiny_benchmark / "fog.npy", array)
    with pytest.raises(DataError, match=match):
        open_benchmark(tiny_benchmark).load("fog", 1)


def test_garbage_npy_is_refused(tiny_benchmark):
    (tiny_benchmark / "fog.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataError, match="not a readable .npy"):
        open_benchmark(tiny_benchmark).load("fog", 1)


def test_missing_folder_and_unknown_corruption(tmp_path, tiny_benchmark):
    with pytest.raises(DataError, match="cdca data prepare"):
        NpyCorruptedDataset(tmp_path / "nowhere")
    with pytest.raises(UnknownNameError, match="gaussian_noise"):
        open_benchmark(tiny_benchmark).load("gausian_noise", 1)
    with pytest.raises(ConfigError, match="images per severity"):
        open_benchmark(tiny_benchmark).load("contrast", 1, count=13)


def test_imagenet_c_folder_layout(tmp_path):
    images, labels = make_images(6, size=40)
    for corruption in ("fog", "snow"):
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = tmp_path / corruption / "5" / f"n0000{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i}.JPEG", format="PNG")
    dataset = open_benchmark(f"imagenet-c:{tmp_path}")
    assert isinstance(dataset, ImageNetCDataset)
    assert dataset.corruptions() == ["fog", "snow"]
    loaded = ImageNetCDataset(tmp_path, image_size=32).load("fog", 5)
    assert loaded.images.shape == (6, 32, 32, 3)
    assert sorted(loaded.labels.tolist()) == sorted(np.searchsorted(sorted(set(labels)), labels).tolist())


def test_npz_and_image_folder_sources(tmp_path):
    images, labels = make_images(5)
    np.savez(tmp_path / "set.npz", images=images[..., 0], labels=labels, class_names=np.array(CLASS_NAMES))
    from_npz = load_source(f"npz:{tmp_path / 'set.npz'}")
    assert from_npz.images.shape == (5, 32, 32, 3)
    assert tuple(from_npz.class_names) == CLASS_NAMES
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = tmp_path / "folder" / CLASS_NAMES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i}.png")
    from_folder = load_source(f"image-folder:{tmp_path / 'folder'}")
    assert len(from_folder) == 5
    assert set(from_folder.class_names) <= set(CLASS_NAMES)


def test_npz_missing_arrays_is_refused(tmp_path):
    np.savez(tmp_path / "bad.npz", pictures=np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(DataError, match="lacks"):
        load_source(f"npz:{tmp_path / 'bad.npz'}")

import numpy as np
import pytest

from device.sources import open_source
from protocol.errors import ConfigError, DataError


def frames(n, seed=0, size=32):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def collect(source):
    batches = list(source)
    labels = [b.labels for b in batches]
    return np.concatenate([b.images for b in batches]), None if labels[
        0
    ] is None else np.concatenate(labels)


def test_npz_streams_in_batches_with_labels(tmp_path):
    images = frames(10)
    np.savez(tmp_path / "s.npz", images=images, labels=np.arange(10))
    batches = list(open_source(str(tmp_path / "s.npz"), 4))
    assert [len(b.images) for b in batches] == [4, 4, 2]
    got, labels = collect(open_source(str(tmp_path / "s.npz"), 4, limit=7))
    assert np.array_equal(got, images[:7])
    assert list(labels) == list(range(7))


def test_cifar_c_file_picks_the_severity_block(tmp_path):
    images = frames(15)
    np.save(tmp_path / "fog.npy", images)
    np.save(tmp_path / "labels.npy", np.arange(15) % 3)
    got, labels = collect(open_source(str(tmp_path / "fog.npy"), 8, severity=4))
    assert np.array_equal(got, images[9:12])
    assert list(labels) == [0, 1, 2]
    with pytest.raises(ConfigError, match="severity"):
        open_source(str(tmp_path / "fog.npy"), 8, severity=6)


def test_cifar_c_folder_streams_domains_in_order(tmp_path):
    fog, snow = frames(10, 1), frames(10, 2)
    np.save(tmp_path / "fog.npy", fog)
    np.save(tmp_path / "snow.npy", snow)
    np.save(tmp_path / "labels.npy", np.zeros(10, np.int64))
    got, _ = collect(open_source(str(tmp_path), 5, corruptions=["snow", "fog"], severity=1))
    assert np.array_equal(got, np.concatenate([snow[:2], fog[:2]]))
    with pytest.raises(DataError, match="rain.npy"):
        open_source(str(tmp_path), 5, corruptions=["rain"])


def test_image_folder_reads_pngs_in_name_order(tmp_path):
    from PIL import Image

    images = frames(3, size=20)
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"{i:02d}.png")
    got, labels = collect(open_source(str(tmp_path), 2))
    assert np.array_equal(got, images)
    assert labels is None


@pytest.mark.parametrize("content", ["float", "missing", "text"])
def test_bad_sources_say_what_is_wrong(tmp_path, content):
    path = tmp_path / "bad.npz"
    if content == "float":
        np.savez(path, images=np.zeros((2, 8, 8, 3), np.float32))
    elif content == "text":
        path.write_text("not an archive")
    with pytest.raises(DataError):
        list(open_source(str(path), 2))

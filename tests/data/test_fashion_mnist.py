import gzip
from pathlib import Path

import numpy as np
import pytest

from cloud.data import fashion_mnist
from cloud.data.fashion_mnist import load_fashion_mnist, read_idx
from protocol.errors import DataError


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


@pytest.fixture
def idx_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 5), ("t10k", 3)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", rng.integers(0, 255, (count, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, count), compress=False)
    return tmp_path


def test_loads_from_data_dir_padded_to_32_rgb(idx_dir):
    data = load_fashion_mnist("test", idx_dir, allow_download=False)
    assert data.images.shape == (3, 32, 32, 3)
    assert data.images.dtype == np.uint8
    assert (data.images[:, :2] == 0).all()  # 2-px zero padding
    np.testing.assert_array_equal(data.images[..., 0], data.images[..., 2])  # grey replicated
    assert len(data.class_names) == 10


def test_cdca_data_environment_variable_is_searched(idx_dir, monkeypatch):
    monkeypatch.setenv("CDCA_DATA", str(idx_dir))
    assert len(load_fashion_mnist("train", allow_download=False)) == 5


def test_missing_everywhere_names_all_three_fixes(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(fashion_mnist, "DOWNLOAD_DIR", tmp_path / "no-download")
    monkeypatch.delenv("CDCA_DATA", raising=False)
    with pytest.raises(DataError) as err:
        load_fashion_mnist("test", tmp_path / "empty", allow_download=False)
    message = str(err.value)
    assert "--data-dir" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "torchvision" in message


def test_truncated_idx_is_refused(tmp_path):
    path = tmp_path / "bad-idx3-ubyte"
    write_idx(path, np.zeros((2, 28, 28)), compress=False)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated"):
        read_idx(path, expected_ndim=3)


def test_wrong_magic_is_refused(tmp_path):
    path = tmp_path / "junk"
    path.write_bytes(b"not an idx file at all")
    with pytest.raises(DataError, match="magic"):
        read_idx(path, expected_ndim=3)


@pytest.mark.usefixtures("fashion_mnist_installed")
def test_real_debian_fashion_mnist_loads():
    test = load_fashion_mnist("test", allow_download=False)
    assert test.images.shape == (10_000, 32, 32, 3)
    assert np.bincount(test.labels).tolist() == [1000] * 10

"""Where a device's frames come from: arrays on disk, a folder of images, or a camera.

Every source yields ``Frames`` batches of (n, H, W, 3) uint8 with labels when the source
has them (so a device can report its own accuracy on a benchmark stream). Specs:

- ``stream.npz``: arrays ``images`` (N, H, W, 3|) uint8 and optional ``labels`` (N,) and
  ``domain`` (N,) (a batch never spans two domains);
- ``frames.npy``: images; labels from a sibling ``labels.npy`` if present;
- ``fog.npy --severity 5``: a CIFAR-10-C-style file (5 x N rows, severity s = block s);
- a CIFAR-10-C-style folder with ``--corruptions fog,snow --severity 5``: the domains in turn;
- a folder of ``.png``/``.jpg`` images (needs Pillow or OpenCV);
- ``camera:0``: an OpenCV camera (needs ``opencv-python``), endless.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protocol.errors import ConfigError, DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
SEVERITIES = 5


@dataclass(frozen=True)
class Frames:
    """One batch of frames; ``labels`` is None when the source has none."""

    images: np.ndarray
    labels: np.ndarray | None


def open_source(
    spec: str,
    batch_size: int,
    *,
    severity: int | None = None,
    corruptions: Sequence[str] = (),
    limit: int | None = None,
) -> Iterator[Frames]:
    """Batches from ``spec`` (see the module docstring); at most ``limit`` frames per domain."""
    if batch_size < 1:
        raise ConfigError("batch size must be >= 1")
    if spec.startswith("camera:"):
        return _camera(spec.partition(":")[2], batch_size)
    path = Path(spec)
    if not path.exists():
        raise DataError(f"input {spec!r} does not exist")
    if path.is_dir() and corruptions:
        return _domains(path, corruptions, severity, batch_size, limit)
    if path.is_dir():
        return _batches(*_image_folder(path), batch_size, limit)
    if path.suffix == ".npz":
        images, labels, domain = _npz(path)
        return _batches(images, labels, batch_size, limit, domain)
    if path.suffix == ".npy":
        return _batches(*_npy(path, severity), batch_size, limit)
    raise DataError(
        f"cannot read frames from {spec!r}: give an .npz/.npy file, an image folder, a "
        "CIFAR-10-C folder with --corruptions, or camera:N"
    )


def batch_starts(domain: np.ndarray, batch_size: int) -> list[int]:
    """Where batches begin, plus the end: every ``batch_size`` frames, anew at each domain.

    No batch mixes two domains (as in ``simulations.streams``): a recorded stream replays
    with the same batches however it is replayed.
    """
    changes = [0, *(np.flatnonzero(np.diff(domain)) + 1).tolist(), len(domain)]
    starts: list[int] = []
    for begin, end in zip(changes[:-1], changes[1:], strict=True):
        starts.extend(range(begin, end, batch_size))
    return [*starts, len(domain)]


def _batches(
    images: np.ndarray,
    labels: np.ndarray | None,
    batch_size: int,
    limit: int | None,
    domain: np.ndarray | None = None,
) -> Iterator[Frames]:
    count = len(images) if limit is None else min(limit, len(images))
    if domain is None:
        domain = np.zeros(count, np.int8)
    starts = batch_starts(np.asarray(domain[:count]), batch_size)
    for start, stop in zip(starts[:-1], starts[1:], strict=True):
        batch = np.ascontiguousarray(images[start:stop])
        yield Frames(batch, None if labels is None else np.asarray(labels[start:stop], np.int64))


def _checked(images: np.ndarray, source: Path | str) -> np.ndarray:
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise DataError(
            f"{source}: frames must be uint8 (N, H, W[, 3]), got {images.dtype} {images.shape}"
        )
    return images


def _npz(path: Path) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as data:
            key = "images" if "images" in data.files else "x" if "x" in data.files else None
            if key is None:
                raise DataError(f"{path} has no 'images' array (found {data.files})")
            labels = data["labels"] if "labels" in data.files else None
            domain = data["domain"] if "domain" in data.files else None  # batches stay within one
            return _checked(data[key], path), labels, domain
    except (OSError, ValueError) as err:
        raise DataError(f"{path} is not a readable .npz: {err}") from err


def _npy(path: Path, severity: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        images = _checked(np.load(path, mmap_mode="r", allow_pickle=False), path)
    except (OSError, ValueError) as err:
        raise DataError(f"{path} is not a readable .npy: {err}") from err
    label_file = path.with_name("labels.npy")
    labels = np.load(label_file, allow_pickle=False) if label_file.is_file() else None
    if severity is None:
        return images, labels
    if not 1 <= severity <= SEVERITIES or len(images) % SEVERITIES:
        raise ConfigError(
            f"--severity needs 1..5 and a file of 5 equal blocks; {path} has {len(images)} rows"
        )
    n = len(images) // SEVERITIES
    block = images[(severity - 1) * n : severity * n]
    if labels is not None and len(labels) == SEVERITIES * n:
        labels = labels[(severity - 1) * n : severity * n]
    return block, labels


def _domains(
    root: Path, corruptions: Sequence[str], severity: int | None, batch_size: int, limit: int | None
) -> Iterator[Frames]:
    files = [root / f"{name}.npy" for name in corruptions]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:  # checked before the first frame, not halfway through the stream
        raise DataError(f"missing corruption files: {', '.join(missing)}")
    return (
        batch
        for file in files
        for batch in _batches(*_npy(file, severity or SEVERITIES), batch_size, limit)
    )


def _image_folder(path: Path) -> tuple[np.ndarray, None]:
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{path} holds no {'/'.join(IMAGE_SUFFIXES)} images")
    images = [_read_image(f) for f in files]
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise DataError(
            f"images in {path} differ in size ({sorted(shapes)[:3]}...); resize them first"
        )
    return np.stack(images), None


def _read_image(path: Path) -> np.ndarray:
    try:
        from PIL import Image

        with Image.open(path) as picture:
            return np.asarray(picture.convert("RGB"), np.uint8)
    except ImportError:
        pass
    try:
        import cv2
    except ImportError as err:
        raise ConfigError(
            "reading image files needs Pillow or opencv-python: pip install pillow"
        ) from err
    pixels = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if pixels is None:
        raise DataError(f"cannot read image {path}")
    return np.ascontiguousarray(pixels[..., ::-1])


def _camera(index: str, batch_size: int) -> Iterator[Frames]:
    try:
        import cv2
    except ImportError as err:
        raise ConfigError("camera input needs OpenCV: pip install opencv-python-headless") from err
    capture = cv2.VideoCapture(int(index) if index.isdigit() else index)
    if not capture.isOpened():
        raise DataError(f"cannot open camera {index!r}")
    try:
        while True:
            frames: list[np.ndarray] = []
            while len(frames) < batch_size:
                ok, frame = capture.read()
                if not ok:
                    return
                frames.append(frame[..., ::-1])  # OpenCV gives BGR
            yield Frames(np.ascontiguousarray(np.stack(frames)), None)
    finally:
        capture.release()

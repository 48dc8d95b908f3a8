"""Write a corrupted benchmark (CIFAR-10-C layout) from a clean labelled image set.

Work is split into (corruption, severity) blocks run in worker processes; a corruption's
``.npy`` is written atomically once its five blocks are done, so an interrupted run
resumes where it stopped and a finished one is skipped.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cloud.data.corruptions import SEVERITIES, check_corruption, corrupt_batch
from cloud.data.formats import METADATA_FILE, NUM_SEVERITIES
from cloud.data.labelled import LabelledImages
from protocol.errors import ConfigError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
ProgressFn = Callable[[str, int], None]  # (message, blocks advanced)


@dataclass(frozen=True)
class PrepareRequest:
    """What to write: the clean images, which corruptions, how many images, which seed."""

    source: LabelledImages
    out_dir: Path
    corruptions: Sequence[str]
    num_images: int
    seed: int = 0
    workers: int = field(default_factory=lambda: min(2, os.cpu_count() or 1))
    force: bool = False


def prepare_corrupted(request: PrepareRequest, progress: ProgressFn | None = None) -> list[str]:
    """Write ``<corruption>.npy`` files, ``labels.npy`` and ``dataset.json``.

    Returns:
        The corruptions written by this call (those already on disk are skipped).
    """
    for name in request.corruptions:
        check_corruption(name)
    source = _select(request.source, request.num_images)
    request.out_dir.mkdir(parents=True, exist_ok=True)
    _check_or_write_metadata(request, source)
    todo = [c for c in request.corruptions if request.force or not _is_done(request.out_dir, c, len(source))]
    if progress:
        skipped = (len(request.corruptions) - len(todo)) * NUM_SEVERITIES
        if skipped:
            progress("already on disk", skipped)
    if todo:
        _run_blocks(request, source, todo, progress)
    return todo


def _select(source: LabelledImages, num_images: int) -> LabelledImages:
    if num_images < 1:
        raise ConfigError(f"--num-images must be at least 1, got {num_images}")
    if num_images > len(source):
        raise ConfigError(f"{source.name} has only {len(source)} images; asked for {num_images}")
    return source.take(num_images)


def _check_or_write_metadata(request: PrepareRequest, source: LabelledImages) -> None:
    meta_path = request.out_dir / METADATA_FILE
    meta = {
        "format_version": FORMAT_VERSION,
        "source": source.name,
        "num_images": len(source),
        "seed": request.seed,
        "image_shape": list(source.images.shape[1:]),
        "class_names": list(source.class_names),
        "layout": "CIFAR-10-C: <corruption>.npy (5*N, H, W, 3) uint8, severity s in rows "
        "[(s-1)*N, s*N); labels.npy (5*N,)",
    }
    if meta_path.is_file() and not request.force:
        old = json.loads(meta_path.read_text())
        changed = [k for k in ("source", "num_images", "seed", "image_shape") if old.get(k) != meta[k]]
        if changed:
            raise ConfigError(
                f"{request.out_dir} was prepared with different "
                + ", ".join(f"{k}={old.get(k)!r}" for k in changed)
                + "; pass --force to overwrite or choose another --out"
            )
    _atomic_save_json(meta_path, meta)
    labels = np.tile(source.labels, NUM_SEVERITIES)  # as CIFAR-10-C: one label per row
    _atomic_save_npy(request.out_dir / "labels.npy", labels)


def _is_done(out_dir: Path, corruption: str, num_images: int) -> bool:
    path = out_dir / f"{corruption}.npy"
    if not path.is_file():
        return False
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError):
        return False
    return array.dtype == np.uint8 and array.shape[0] == num_images * NUM_SEVERITIES


_WORKER_IMAGES: np.ndarray | None = None


def _init_worker(images: np.ndarray) -> None:
    global _WORKER_IMAGES  # one copy per worker process instead of one per task
    _WORKER_IMAGES = images


def _corrupt_block(corruption: str, severity: int, seed: int) -> tuple[str, int, np.ndarray]:
    assert _WORKER_IMAGES is not None
    return corruption, severity, corrupt_batch(_WORKER_IMAGES, corruption, severity, seed)


def _run_blocks(
    request: PrepareRequest,
    source: LabelledImages,
    todo: Sequence[str],
    progress: ProgressFn | None,
) -> None:
    blocks: dict[str, dict[int, np.ndarray]] = {c: {} for c in todo}
    with ProcessPoolExecutor(
        max_workers=request.workers, initializer=_init_worker, initargs=(source.images,)
    ) as pool:
        futures = [
            pool.submit(_corrupt_block, c, s, request.seed) for c in todo for s in SEVERITIES
        ]
        for future in as_completed(futures):
            corruption, severity, block = future.result()
            blocks[corruption][severity] = block
            if len(blocks[corruption]) == NUM_SEVERITIES:
                stacked = np.concatenate([blocks[corruption][s] for s in SEVERITIES])
                _atomic_save_npy(request.out_dir / f"{corruption}.npy", stacked)
                del blocks[corruption]
                logger.info("wrote %s", corruption)
            if progress:
                progress(f"{corruption} s{severity}", 1)


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
    os.replace(tmp, path)


def _atomic_save_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)

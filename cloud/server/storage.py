"""What the server keeps on disk: the upload inbox, each device's prompt bank, the fleet's environments.

Uploads are written to the inbox before the device is told they arrived, and removed only
after the adaptation worker has ingested them, so an accepted sample is either processed
or still on disk after a crash. Every file is written to a temporary name, fsynced and
renamed: a crash leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from cloud.adaptation.environments import Environment, EnvironmentBank, PooledUploads
from cloud.adaptation.prompt_bank import Prompt, PromptBank
from protocol.config.adaptation import PromptBankConfig
from protocol.errors import DataError
from protocol.files import atomic_write


@dataclass(frozen=True)
class StoredBatch:
    """One device batch's accepted uploads, as the worker will ingest them."""

    device_id: str
    batch_id: int
    images: np.ndarray  # (n, H, W, 3) uint8
    uncertainty: np.ndarray  # (n,) float32
    batch_stats: np.ndarray  # (2, K) float32
    shift: bool
    frames_seen: int


class Inbox:
    """Accepted upload batches waiting for the adaptation worker, oldest first."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.tmp"):  # half-written: never acknowledged to the device
            stale.unlink()
        existing = self.pending()
        last = int(existing[-1].name.split("-")[0]) if existing else -1
        # Numbers never repeat across restarts (the ingest ledger names files): start from the
        # clock in microseconds, or after the newest waiting file if that is later.
        self._next = max(last + 1, time.time_ns() // 1000)

    def put(self, batch: StoredBatch) -> Path:
        """Persist one batch; returns its file."""
        buffer = io.BytesIO()
        meta = {
            "device_id": batch.device_id,
            "batch_id": batch.batch_id,
            "shift": batch.shift,
            "frames_seen": batch.frames_seen,
        }
        np.savez(
            buffer,
            images=batch.images,
            uncertainty=batch.uncertainty,
            batch_stats=batch.batch_stats,
            meta=np.array(json.dumps(meta)),
        )
        path = self.folder / f"{self._next:020d}-{batch.device_id}.npz"
        self._next += 1
        atomic_write(path, buffer.getvalue())
        return path

    def pending(self) -> list[Path]:
        """Files not yet ingested, in arrival order."""
        return sorted(self.folder.glob("*.npz"))

    @staticmethod
    def load(path: Path) -> StoredBatch:
        """Read one batch back."""
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                return StoredBatch(
                    meta["device_id"],
                    int(meta["batch_id"]),
                    data["images"],
                    data["uncertainty"],
                    data["batch_stats"],
                    bool(meta["shift"]),
                    int(meta["frames_seen"]),
                )
        except (OSError, ValueError, KeyError, EOFError) as err:
            raise DataError(f"inbox file {path} is unreadable: {err}") from err

    @staticmethod
    def device_of(path: Path) -> str:
        """The device whose batch an inbox file holds, from its name."""
        return path.name.split("-", 1)[1].removesuffix(".npz")

    @staticmethod
    def done(path: Path) -> None:
        """The worker ingested it."""
        path.unlink(missing_ok=True)


class IngestLedger:
    """Append-only record of what left the inbox: one ``file device samples ok`` line per batch.

    A line is written (and fsynced) just before its inbox file is removed. A crash between
    the two re-ingests that batch and writes its line twice, so readers count each file
    once; a crash mid-line leaves a line without its closing ``ok``, which readers skip
    and the next record starts after. With the inbox and ``rejected/`` it accounts for
    every acknowledged sample.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def record(self, inbox_file: Path, device_id: str, samples: int) -> None:
        """One ingested batch."""
        with open(self.path, "a+b") as handle:
            torn = handle.tell() > 0 and _last_byte(handle) != b"\n"
            line = f"{inbox_file.name} {device_id} {samples} ok\n".encode()
            handle.write(b"\n" + line if torn else line)
            handle.flush()
            os.fsync(handle.fileno())

    def files(self, device_id: str) -> dict[str, int]:
        """Samples per ingested inbox file of ``device_id``, each file once."""
        found: dict[str, int] = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                parts = line.split(" ")
                if len(parts) == 4 and parts[1] == device_id and parts[3] == "ok":
                    found[parts[0]] = int(parts[2])
        return found


def _last_byte(handle: io.BufferedRandom) -> bytes:
    handle.seek(-1, os.SEEK_END)
    last = handle.read(1)
    handle.seek(0, os.SEEK_END)
    return last


def save_bank(path: Path, bank: PromptBank, version: int) -> None:
    """Persist a device's prompt bank (shared and specific deltas) and its prompt's version."""
    tensors: dict[str, torch.Tensor] = {}
    for group, prompt in (("shared", bank.shared), ("specific", bank.specific)):
        tensors.update({f"{group}.{k}": v.detach().float().contiguous() for k, v in prompt.items()})
    metadata = {"environments": str(bank.environments), "version": str(version)}
    atomic_write(path, save_safetensors(tensors, metadata=metadata))


def load_bank(
    path: Path, neutral: Prompt, config: PromptBankConfig | None = None
) -> tuple[PromptBank, int]:
    """A bank and its prompt version from disk (fresh, version 0, without a file)."""
    bank = PromptBank(neutral, config)
    if not path.is_file():
        return bank, 0
    try:
        data = path.read_bytes()
        tensors = load_safetensors(data)
        metadata = _read_metadata(data)
    except (SafetensorError, OSError, ValueError) as err:
        raise DataError(f"prompt bank {path} is unreadable: {err}") from err
    for group, target in (("shared", bank.shared), ("specific", bank.specific)):
        for key, like in neutral.items():
            value = tensors.get(f"{group}.{key}")
            if value is None or value.shape != like.shape:
                raise DataError(
                    f"prompt bank {path} does not fit the served model ({group}.{key}); "
                    "move it away to start this device from scratch"
                )
            target[key] = value
    bank.environments = int(metadata.get("environments", 1))
    return bank, int(metadata.get("version", 0))


def save_environments(path: Path, bank: EnvironmentBank) -> None:
    """Persist the fleet's environment bank: each entry's signature, prompt, evidence and pool."""
    tensors: dict[str, torch.Tensor] = {}
    counts = []
    for i, entry in enumerate(bank.entries):
        # a copy: a signature that came back from a Ray worker is a read-only array
        tensors[f"{i}.signature"] = torch.from_numpy(np.array(entry.signature, np.float64))
        if entry.prompt is not None:  # None: only short stays so far (their uploads pool)
            tensors.update(
                {
                    f"{i}.prompt.{k}": v.detach().float().contiguous()
                    for k, v in entry.prompt.items()
                }
            )
        if entry.uploads is not None:
            pool = zip(PooledUploads.names(), entry.uploads.tensors(), strict=True)
            tensors.update({f"{i}.uploads.{k}": v.contiguous() for k, v in pool})
        for device_id, (_, signature_sum) in entry.contributors.items():
            tensors[f"{i}.contributor.{device_id}"] = torch.from_numpy(
                np.asarray(signature_sum, np.float64)
            )
        contributions = {d: count for d, (count, _) in entry.contributors.items()}
        counts.append([entry.evidence, entry.visits, entry.prompt_from, contributions])
    metadata = {"entries": str(len(bank.entries)), "counts": json.dumps(counts)}
    atomic_write(path, save_safetensors(tensors, metadata=metadata))


def load_environments(path: Path, bank: EnvironmentBank, neutral: Prompt) -> int:
    """Fill ``bank`` from ``path`` (nothing without a file); returns the entries restored."""
    if not path.is_file():
        return 0
    try:
        data = path.read_bytes()
        tensors = load_safetensors(data)
        metadata = _read_metadata(data)
        counts = json.loads(metadata["counts"])
        entries = []
        for i, (evidence, visits, *origin) in enumerate(counts):
            prompt = _prompt(tensors, f"{i}.prompt.", neutral)
            prompt_from, contributions = origin if origin else ("", {})
            contributors = {
                str(device): (int(count), tensors[f"{i}.contributor.{device}"].numpy())
                for device, count in contributions.items()
            }
            entries.append(
                Environment(
                    tensors[f"{i}.signature"].numpy(),
                    prompt,
                    int(evidence),
                    int(visits),
                    _pooled(tensors, f"{i}.uploads."),
                    str(prompt_from),
                    contributors,
                )
            )
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise DataError(
            f"environment bank {path} is unreadable or does not fit the served model ({err}); "
            "move it away to start the fleet's bank from scratch"
        ) from err
    bank.entries = entries
    return len(entries)


def _prompt(tensors: dict[str, torch.Tensor], prefix: str, neutral: Prompt) -> Prompt | None:
    """An entry's prompt (None when it has none yet); ValueError when it does not fit the model."""
    if not any(key.startswith(prefix) for key in tensors):
        return None
    prompt = {k: tensors[prefix + k] for k in neutral}
    if any(prompt[k].shape != like.shape for k, like in neutral.items()):
        raise ValueError("a prompt does not fit the served model")
    return prompt


def _pooled(tensors: dict[str, torch.Tensor], prefix: str) -> PooledUploads | None:
    """An entry's pooled uploads (None when it has none); ValueError when they do not add up."""
    if f"{prefix}pixels" not in tensors:
        return None
    pool = PooledUploads(*(tensors[prefix + k] for k in PooledUploads.names()))
    sizes = {len(t) for t in pool.tensors()}
    if len(sizes) != 1 or pool.pixels.dtype != torch.uint8 or pool.pixels.ndim != 4:
        raise ValueError("pooled uploads are inconsistent")
    return pool


def _read_metadata(data: bytes) -> dict[str, str]:
    header_size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_size])
    metadata: dict[str, str] = header.get("__metadata__", {})
    return metadata

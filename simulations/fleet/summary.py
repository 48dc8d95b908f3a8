"""Turn per-batch records into the numbers a fleet report shows.

Accuracy is online (each batch predicted before anyone adapts on it) and averaged over
domains with equal weight, as in ``cdca bench adapt``. "After a shift" is the accuracy on
the first ``first_batches`` batches of every domain but a device's first one: how quickly a
device recovers when its world changes, which the environment bank is meant to speed up.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from device.replay import BatchRecord


def device_summary(
    records: list[BatchRecord], domain_names: list[str], bytes_down: int, first_batches: int
) -> dict[str, object]:
    """One device's accuracy per domain and mean, uploads, traffic and recovery after shifts."""
    correct: dict[str, int] = defaultdict(int)
    frames: dict[str, int] = defaultdict(int)
    after_shift = [0, 0]
    position, previous = 0, None
    for r in records:
        domain = domain_names[r.domain]
        position = position + 1 if domain == previous else 0
        if previous is not None and position < first_batches:
            after_shift[0] += r.correct
            after_shift[1] += r.frames
        previous = domain
        correct[domain] += r.correct
        frames[domain] += r.frames
    accuracy = {d: correct[d] / frames[d] for d in frames}
    total = sum(frames.values())
    per_k = 1000 / max(1, total)
    return {
        "accuracy": accuracy,
        "mean": float(np.mean(list(accuracy.values()))),
        "after_shift": after_shift[0] / max(1, after_shift[1]),
        "frames": total,
        "upload_fraction": sum(r.uploaded for r in records) / max(1, total),
        "bytes_up_per_1000": sum(r.bytes_up for r in records) * per_k,
        "bytes_down_per_1000": bytes_down * per_k,
        "prompts_applied": len({r.prompt_version for r in records} - {0}),
        "shifts_reported": sum(r.shift for r in records),
        "batch_accuracy": [r.correct / r.frames for r in records],
    }


def peer_after_shift(batch_domain: list[str], batch_accuracy: list[float], first: int) -> float:
    """A peer's accuracy on the first batches after each domain change (batch-weighted)."""
    values, position, previous = [], 0, None
    for domain, accuracy in zip(batch_domain, batch_accuracy, strict=True):
        position = position + 1 if domain == previous else 0
        if previous is not None and position < first:
            values.append(accuracy)
        previous = domain
    return float(np.mean(values)) if values else float("nan")


def fleet_table(methods: dict[str, list[dict[str, object]]]) -> dict[str, dict[str, float]]:
    """Per method: mean over devices of the device means, the spread, and recovery after shifts."""
    table = {}
    for name, devices in methods.items():
        means = [float(d["mean"]) for d in devices]  # type: ignore[arg-type]
        after = [float(d["after_shift"]) for d in devices]  # type: ignore[arg-type]
        row = {
            "mean": float(np.mean(means)),
            "std": float(np.std(means)),
            "after_shift": float(np.mean(after)),
            "devices": len(devices),
        }
        if "upload_fraction" in devices[0]:
            for key in ("upload_fraction", "bytes_up_per_1000", "bytes_down_per_1000"):
                row[key] = float(np.mean([float(d[key]) for d in devices]))  # type: ignore[arg-type]
        table[name] = row
    return table

"""``cdca device bench``: how fast and how accurate the device model is on this machine.

Before deploying to an edge box, a user wants to know what it sustains: latency and frames
per second of the exported student with every execution provider onnxruntime offers here
(CPU, and CUDA, TensorRT, OpenVINO, CoreML or DirectML when installed), fp32 and int8, at
batch 1 and 64, with a prompt applied and without, the peak memory of a process that runs
it, and its accuracy on the labelled sample `cdca cloud export` writes beside the model;
then the whole adapting step a device takes per batch with the project's default device
settings (batch statistics held between refreshes, the prompt gate, uncertainty scoring and
the upload choice), which is what an adapting device pays per frame.
Each model and provider runs in its own process, so peak memory is that configuration's
alone. Needs only the ``device`` extra (onnxruntime and NumPy, no torch).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from protocol.errors import DataError
from protocol.manifest import INT8_MANIFEST_FILE, MANIFEST_FILE, SAMPLE_FILE

if TYPE_CHECKING:
    from device.runtime import DeviceRuntime

BUNDLED_MODEL = Path(__file__).parent / "bundled"  # the built-in student and its sample
MODEL_FILES = {"fp32": MANIFEST_FILE, "int8": INT8_MANIFEST_FILE}
PROVIDERS = (  # in onnxruntime's order of preference; the CPU always last
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "OpenVINOExecutionProvider",
    "CoreMLExecutionProvider",
    "DmlExecutionProvider",
    "CPUExecutionProvider",
)
PROMPT_SCALE = 0.05  # size of the random BatchNorm scale/shift standing in for a cloud prompt
STEP_BLOCK = 8  # adapting steps per timing: two refreshes of held statistics (every 4th)
MODEL_RUN, STEP_RUN = "model", "adapting step"


@dataclass(frozen=True)
class BenchRow:
    """One measured configuration (``error`` set when it could not run)."""

    model: str
    provider: str
    batch: int
    prompt: bool
    run: str = MODEL_RUN  # the model call alone, or the device's whole adapting step
    ms_per_batch: float | None = None
    ms_per_frame: float | None = None
    frames_per_second: float | None = None
    peak_memory_mb: float | None = None
    accuracy: float | None = None
    error: str = ""


def models_in(folder: Path) -> dict[str, Path]:
    """The manifests in ``folder`` by precision (``fp32``, ``int8``)."""
    found = {name: folder / file for name, file in MODEL_FILES.items() if (folder / file).is_file()}
    if not found:
        raise DataError(
            f"{folder} holds no {MANIFEST_FILE}: give the folder `cdca cloud export` wrote"
        )
    return found


def available_providers(wanted: list[str] | None = None) -> list[str]:
    """The providers onnxruntime offers on this machine that cdca knows, or the ``wanted`` ones."""
    import onnxruntime as ort

    here = ort.get_available_providers()
    if wanted:
        names = [_provider_name(w) for w in wanted]
        missing = [n for n in names if n not in here]
        if missing:
            raise DataError(f"providers {missing} are not installed here; available: {here}")
        return names
    return [p for p in PROVIDERS if p in here]


def run_bench(
    folder: Path,
    providers: list[str],
    batches: list[int],
    seconds: float,
    threads: int,
    progress: Callable[[str], None] = print,
) -> list[BenchRow]:
    """Every model in ``folder`` on every provider, each in a fresh process."""
    rows: list[BenchRow] = []
    for model, manifest in models_in(folder).items():
        for provider in providers:
            progress(f"{model} on {provider} ...")
            job = {
                "manifest": str(manifest),
                "model": model,
                "provider": provider,
                "batches": batches,
                "seconds": seconds,
                "threads": threads,
            }
            rows.extend(_in_child(job))
    return rows


def _in_child(job: dict[str, object]) -> list[BenchRow]:
    done = subprocess.run(
        [sys.executable, "-m", "device.bench", json.dumps(job)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["exited with " + str(done.returncode)])[-1]
        return [BenchRow(str(job["model"]), str(job["provider"]), 0, False, error=reason)]
    return [BenchRow(**row) for row in json.loads(done.stdout.strip().splitlines()[-1])]


def measure(job: dict) -> list[BenchRow]:  # type: ignore[type-arg]
    """One model on one provider: every batch size, prompt off and on, the adapting step."""
    from device.runtime import DeviceRuntime

    manifest = Path(job["manifest"])
    runtime = DeviceRuntime.load(manifest, threads=job["threads"], providers=[job["provider"]])
    images, labels = _sample(manifest.parent, runtime.manifest.preprocess.image_size)
    accuracy = _accuracy(runtime, images, labels) if labels is not None else None
    prompted = _prompt(runtime)
    rows = []
    for batch in job["batches"]:
        frames = images[np.arange(batch) % len(images)]
        for prompt in (False, True):
            feeds = prompted if prompt else dict(runtime.defaults)
            ms = _median_ms(partial(runtime.predict, frames, feeds), job["seconds"])
            rows.append(_row(job, batch, prompt, MODEL_RUN, ms, accuracy))
        ms = _step_ms(runtime, prompted, frames, job["seconds"])
        rows.append(_row(job, batch, True, STEP_RUN, ms, None))
    peak = _peak_memory_mb()
    return [replace(r, peak_memory_mb=peak) for r in rows]


def _row(
    job: dict[str, Any], batch: int, prompt: bool, run: str, ms: float, accuracy: float | None
) -> BenchRow:
    return BenchRow(
        job["model"],
        job["provider"],
        batch,
        prompt,
        run,
        round(ms, 3),
        round(ms / batch, 4),
        round(1000 * batch / ms, 1),
        accuracy=accuracy,
    )


def _step_ms(
    runtime: DeviceRuntime, prompt: dict[str, np.ndarray], frames: np.ndarray, seconds: float
) -> float:
    """Ms per batch of ``DeviceAgent.step`` with the default settings and a prompt in force."""
    from device.agent import DeviceAgent
    from protocol.config.adaptation import DeviceSettings

    agent = DeviceAgent(runtime, DeviceSettings())
    agent.apply({"norm_affine": prompt["norm_affine"]})

    def block() -> None:
        for _ in range(STEP_BLOCK):
            agent.step(frames)

    return _median_ms(block, seconds, least=3) / STEP_BLOCK


def _sample(folder: Path, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The exported labelled sample, or random frames (no accuracy) when there is none."""
    path = folder / SAMPLE_FILE
    if not path.is_file():
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (64, size, size, 3), dtype=np.uint8), None
    with np.load(path, allow_pickle=False) as archive:
        return archive["images"], archive["labels"]


def _accuracy(runtime, images: np.ndarray, labels: np.ndarray) -> float:  # type: ignore[no-untyped-def]
    predicted = np.concatenate(
        [runtime.predict(images[i : i + 64]).logits.argmax(1) for i in range(0, len(images), 64)]
    )
    return round(float((predicted == labels).mean()) * 100, 2)


def _prompt(runtime) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    """What an adapting device feeds: a (random) BatchNorm prompt and its own batch statistics."""
    feeds = dict(runtime.defaults)
    rng = np.random.default_rng(1)
    affine = feeds["norm_affine"]
    feeds["norm_affine"] = rng.normal(0, PROMPT_SCALE, affine.shape).astype(affine.dtype)
    feeds["stat_mix"] = np.ones_like(feeds["stat_mix"])
    return feeds


def _median_ms(call, seconds: float, least: int = 5) -> float:  # type: ignore[no-untyped-def]
    for _ in range(2):  # warm-up: the first runs allocate and pick kernels
        call()
    times: list[float] = []
    began = time.perf_counter()
    while len(times) < least or time.perf_counter() - began < seconds:
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _peak_memory_mb() -> float | None:
    """This process's peak resident memory since it started (not its parent's)."""
    status = Path("/proc/self/status")
    if status.is_file():  # Linux: VmHWM is per address space, so exec starts it afresh
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    try:
        import resource
    except ImportError:  # Windows: no getrusage
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)  # bytes on macOS


def _provider_name(name: str) -> str:
    """``cpu`` / ``CUDA`` / ``CUDAExecutionProvider`` -> onnxruntime's name."""
    for full in PROVIDERS:
        if name.lower() in (full.lower(), full.lower().removesuffix("executionprovider")):
            return full
    return name


def format_table(rows: list[BenchRow]) -> str:
    """A Markdown table for a person."""
    lines = [
        "| model | provider | run | batch | prompt | ms / batch | ms / frame | frames/s "
        "| peak MiB | accuracy (%) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        provider = r.provider.removesuffix("ExecutionProvider")
        if r.error:
            lines.append(f"| {r.model} | {provider} | | | | failed: {r.error} | | | | |")
            continue
        lines.append(
            f"| {r.model} | {provider} | {r.run} | {r.batch} | {'on' if r.prompt else 'off'} "
            f"| {r.ms_per_batch} | {r.ms_per_frame} | {r.frames_per_second} "
            f"| {_or_dash(r.peak_memory_mb)} | {_or_dash(r.accuracy)} |"
        )
    return "\n".join(lines)


def _or_dash(value: float | None) -> str:
    return "-" if value is None else str(value)


if __name__ == "__main__":  # one configuration, run by ``_in_child``; prints JSON rows
    print(json.dumps([asdict(row) for row in measure(json.loads(sys.argv[1]))]))

"""``cdca bench system``: the running system (server + device processes) next to its simulation.

The same device streams go (a) through the ONNX device and the cloud in one process
(``simulations.bench.cloud_device``), where a prompt learned from batch t is used from batch
t + 1, and (b) through a real ``cdca cloud serve`` process
and one ``cdca device run`` process per device on loopback, paced like cameras, where
prompts arrive when the cloud has learned them. Reported per device: online accuracy of the
source model, of the device alone (own batch statistics, no cloud), of U-VPA simulated and
of U-VPA over gRPC; the device's per-frame latency with and without a prompt in force; and
upload and prompt-delivery latency on loopback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulations.harness.processes import device_run_argv, enrol, launch_server


@dataclass(frozen=True)
class SystemBenchConfig:
    """One run of the system benchmark."""

    data: str
    out: Path
    devices: int = 3
    corruptions: tuple[str, ...] = ()
    per_domain: int = 200
    batch_size: int = 64
    fps: float = 40.0
    seed: int = 0


def materialise_streams(config: SystemBenchConfig) -> list[Path]:
    """Each device's stream as an .npz of frames and labels (its own order and images)."""
    from cloud.data.formats import open_benchmark
    from simulations.streams import continual, device_streams, iterate_batches

    dataset = open_benchmark(config.data)
    base = continual(config.corruptions, 5, config.per_domain, config.batch_size)
    pool = len(dataset.load(config.corruptions[0], 5))
    paths = []
    for i, spec in enumerate(device_streams(base, config.devices, pool, config.seed)):
        batches = list(iterate_batches(dataset, spec))
        path = config.out / "streams" / f"device-{i}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            path,
            images=np.concatenate([b.images for b in batches]),
            labels=np.concatenate([b.labels for b in batches]),
        )
        paths.append(path)
    return paths


def simulate(streams: list[Path], batch_size: int, out: Path) -> list[dict[str, float]]:
    """Source, device alone and U-VPA (delay 1) on each stream, in this process (built-in project)."""
    from dataclasses import replace

    from cloud.server.models import load_cloud_models
    from cloud.students.preprocess import pixels_from_uint8
    from protocol.config.project import load_project
    from simulations.bench.cloud_device import FleetMethod

    project = load_project(None)
    cloud_models = load_cloud_models(project, out / "simulated")
    device = project.adaptation.device
    runs = (("source", 0.0, False), ("device_alone", 1.0, False), ("uvpa_simulated", 1.0, True))
    results = []
    for path in streams:
        with np.load(path) as data:
            images, labels = data["images"], data["labels"]
        rows: dict[str, float] = {}
        for name, stat_mix, learn in runs:
            adaptation = replace(project.adaptation, device=replace(device, stat_mix=stat_mix))
            method = FleetMethod(name, cloud_models, adaptation)
            hits = 0
            for start in range(0, len(images), batch_size):
                frames = images[start : start + batch_size]
                if learn:
                    pixels = pixels_from_uint8(frames)
                    logits = method.step(pixels).numpy()
                else:
                    logits = method.agent.runtime.predict(frames).logits
                hits += int((logits.argmax(1) == labels[start : start + batch_size]).sum())
            rows[name] = hits / len(images)
        results.append(rows)
    return results


def run_system(
    config: SystemBenchConfig, streams: list[Path]
) -> tuple[list[dict[str, object]], Path]:
    """A server process and one device process per stream; returns the device summaries."""
    work = Path(tempfile.mkdtemp(prefix="cdca-system-"))
    state = work / "cloud"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    tokens = {f"device-{i}": enrol(state, f"device-{i}", env) for i in range(len(streams))}
    (config.out / "server.log").unlink(missing_ok=True)
    server, port = launch_server(state, 0, config.out / "server.log", env)
    try:
        devices = []
        for i, path in enumerate(streams):
            device_id = f"device-{i}"
            with open(config.out / f"{device_id}.log", "w") as dlog:
                devices.append(
                    subprocess.Popen(
                        device_run_argv(
                            path,
                            state / "model",
                            work / device_id,
                            port,
                            device_id,
                            tokens[device_id],
                            "--fps",
                            str(config.fps),
                            "--batch-size",
                            str(config.batch_size),
                            "--threads",
                            "1",
                            "--out",
                            "none",
                            "--summary",
                            str(config.out / f"{device_id}.summary.json"),
                        ),
                        stdout=subprocess.DEVNULL,
                        stderr=dlog,
                        env=env,
                    )
                )
        for process in devices:
            if process.wait() != 0:
                raise RuntimeError(f"a device failed; see {config.out}/device-*.log")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    summaries = [
        json.loads((config.out / f"device-{i}.summary.json").read_text())
        for i in range(len(streams))
    ]
    return summaries, work


def device_latency(
    model_dir: Path, prompt_cache: Path, batch_size: int, repeats: int = 200, rounds: int = 5
) -> dict[str, float]:
    """Per-frame onnxruntime latency at batch 1 and ``batch_size``: no prompt vs a learned one.

    "No prompt" is the shipped defaults (zero prompt, source statistics); "with prompt" is the
    prompt device 0 ended the run with, plus its own batch statistics. Medians over rounds.
    """
    from device.runtime import DeviceRuntime
    from device.spool import PromptCache
    from protocol.manifest import MANIFEST_FILE

    runtime = DeviceRuntime.load(model_dir / MANIFEST_FILE, threads=1)
    frames = np.random.default_rng(0).integers(0, 256, (batch_size, 32, 32, 3), dtype=np.uint8)
    cached = PromptCache(prompt_cache).load()
    prompt = cached[1] if cached else {}
    settings = {"no_prompt": {}, "with_prompt": {**prompt, "stat_mix": np.ones(1, np.float32)}}
    samples: dict[str, list[float]] = {}
    for _ in range(rounds):  # interleaved, so drift in machine load hits both settings alike
        for label, inputs in settings.items():
            runtime.reset_adaptation()
            runtime.set_adaptation(**inputs)
            for batch in (1, batch_size):
                runtime.predict(frames[:batch])
                count = max(5, repeats // batch)
                start = time.perf_counter()
                for _ in range(count):
                    runtime.predict(frames[:batch])
                seconds = (time.perf_counter() - start) / count / batch
                samples.setdefault(f"{label}_ms_per_frame_batch{batch}", []).append(seconds * 1e3)
    return {key: round(float(np.median(values)), 4) for key, values in samples.items()}

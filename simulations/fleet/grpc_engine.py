"""The ``grpc`` engine: a real ``cdca cloud serve`` and one ``cdca device run`` process per device.

Everything goes over loopback exactly as in a deployment: the server reads the project
file, devices get their settings from it at ``Register``, enrolment tokens, uploads, the
server's own budget, prompts pushed over ``WatchPrompts``. Devices run flat out (or at
``fps``) and apply prompts when they arrive, so timing differs from the round-based engines
(a prompt may land a batch earlier or later); the report says how much that moves the
result. Per-batch records are rebuilt from each device's JSON lines (one per frame) and its
summary. Logs and device outputs land in ``<run>/grpc/``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from cloud.server.models import CloudModels
from device.replay import BatchRecord
from device.sources import batch_starts
from protocol.config.project import ProjectConfig, write_resolved
from protocol.config.server import LimitsConfig
from simulations.fleet.engine_run import EngineRun
from simulations.harness.processes import device_run_argv, enrol, launch_server


def run_grpc(
    project: ProjectConfig,
    streams: list[Path],
    cloud_models: CloudModels,
    out: Path,
    progress: Callable[[int], None] | None = None,
) -> EngineRun:
    """Run the fleet through processes; returns per-device batch records, bytes down, logs."""
    work = out / "grpc"
    shutil.rmtree(work, ignore_errors=True)
    state = work / "cloud"
    state.mkdir(parents=True)
    # the server serves the model this run exported, from its own state folder, on loopback;
    # absolute paths: the project file below resolves relative ones against its own folder
    loopback = replace(
        project.server,
        host="127.0.0.1",
        port=0,
        state_dir=state.resolve(),
        model_dir=cloud_models.served.folder.resolve(),
        tls=None,
        limits=_replay_limits(project),
    )
    config = write_resolved(replace(project, server=loopback), work, "this run's server")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ids = [f"device-{i}" for i in range(len(streams))]
    tokens = {device_id: enrol(state, device_id, env) for device_id in ids}
    server, port = launch_server(
        state, 0, work / "server.log", env, extra=("--project", str(config))
    )
    devices: list[subprocess.Popen[bytes]] = []
    try:
        for i, path in enumerate(streams):
            devices.append(
                _start_device(project, cloud_models, work, path, i, port, tokens[ids[i]], env)
            )
        _wait(devices, [work / f"{d}.jsonl" for d in ids], progress)
    finally:  # also on Ctrl-C or SIGTERM (see command.py): leave no process behind
        for device in devices:
            if device.poll() is None:
                device.kill()
            device.wait()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    records, bytes_down = [], []
    for i, path in enumerate(streams):
        summary = json.loads((work / f"{ids[i]}.summary.json").read_text())
        records.append(_records(work / f"{ids[i]}.jsonl", path, project.fleet.batch_size, summary))
        bytes_down.append(int(summary.get("bytes_down", 0)))
    return EngineRun(records, bytes_down, {"server_log": str(work / "server.log"), "port": port})


def _start_device(project, cloud_models, work, stream, i, port, token, env):  # type: ignore[no-untyped-def]
    """``cdca device run``: its settings come from the server at ``Register``, its seed is its own."""
    device_id, fleet = f"device-{i}", project.fleet
    command = device_run_argv(
        stream,
        cloud_models.served.folder,
        work / device_id,
        port,
        device_id,
        token,
        "--batch-size",
        str(fleet.batch_size),
        "--threads",
        "1",
        "--seed",
        str(fleet.seed + i),
        "--out",
        str(work / f"{device_id}.jsonl"),
        "--summary",
        str(work / f"{device_id}.summary.json"),
        "--log-level",
        "WARNING",
    )
    if fleet.fps:
        command += ["--fps", str(fleet.fps)]
    log = open(work / f"{device_id}.log", "w")  # noqa: SIM115 - the child writes to it
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, env=env)


def _wait(
    devices: list[subprocess.Popen[bytes]],
    outputs: list[Path],
    progress: Callable[[int], None] | None,
) -> None:
    reported = 0
    while any(d.poll() is None for d in devices):
        time.sleep(1.0)
        if progress:
            done = sum(_count_lines(p) for p in outputs)
            progress(done - reported)
            reported = done
    failed = [i for i, d in enumerate(devices) if d.returncode != 0]
    if failed:
        raise RuntimeError(f"device(s) {failed} failed; see {outputs[0].parent}/device-*.log")
    if progress:
        progress(sum(_count_lines(p) for p in outputs) - reported)


def _count_lines(path: Path) -> int:
    if not path.is_file():
        return 0
    with open(path, "rb") as handle:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))


def _records(
    lines: Path, stream: Path, batch_size: int, summary: dict[str, object]
) -> list[BatchRecord]:
    """One record per batch, as the round-based engines write them (bytes up spread by uploads)."""
    frames = [json.loads(line) for line in lines.read_text().splitlines()]
    with np.load(stream, allow_pickle=False) as data:
        domain, labels = data["domain"], data["labels"]
    starts = batch_starts(domain, batch_size)
    uploaded_total = max(1, sum(1 for f in frames if f.get("uploaded")))
    bytes_up = int(summary.get("bytes_up", 0))  # type: ignore[call-overload]
    records = []
    for batch, (start, stop) in enumerate(zip(starts[:-1], starts[1:], strict=True)):
        chunk = frames[start:stop]
        uploaded = sum(1 for f in chunk if f.get("uploaded"))
        records.append(
            BatchRecord(
                batch=batch,
                domain=int(domain[start]),
                frames=len(chunk),
                correct=sum(int(f["index"] == labels[start + j]) for j, f in enumerate(chunk)),
                uploaded=uploaded,
                shift=False,
                bytes_up=bytes_up * uploaded // uploaded_total,
                prompt_version=int(chunk[0]["prompt_version"]) if chunk else 0,
            )
        )
    return records


def _replay_limits(project: ProjectConfig) -> LimitsConfig:
    """The project's [server.limits], with the per-second rates lifted when devices run flat out.

    The rates are meant for cameras in real time; a stream replayed as fast as the device
    model runs is many times faster, and refusing its samples would measure the replay.
    """
    limits = project.server.limits
    if project.fleet.fps:
        return limits
    return replace(
        limits, samples_per_second=1e9, sample_burst=10**9, shifts_per_minute=1e9, shift_burst=10**9
    )

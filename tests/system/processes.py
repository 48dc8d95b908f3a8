"""Start ``cdca cloud serve`` and ``cdca device run`` as real processes, as users do."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import numpy as np

from simulations.bench import system

CDCA = system.CDCA
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def corrupted_stream(path: Path, domains: list[str], per_domain: int, offset: int = 0) -> Path:
    """Real Fashion-MNIST test images, one block per corruption at severity 5, with labels."""
    from cloud.data.corruptions import corrupt_batch
    from cloud.data.fashion_mnist import load_fashion_mnist

    images, labels = [], []
    for i, name in enumerate(domains):
        clean = load_fashion_mnist("test").take(per_domain, offset + i * per_domain)
        images.append(corrupt_batch(clean.images, name, 5, seed=i))
        labels.append(clean.labels)
    np.savez(path, images=np.concatenate(images), labels=np.concatenate(labels))
    return path


def enrol(state_dir: Path, device_id: str) -> str:
    return system.enrol(state_dir, device_id, ENV)


def start_server(state_dir: Path, port: int, log: Path) -> subprocess.Popen:
    """``cdca cloud serve`` with the shipped student and built-in teacher; waits until it listens."""
    return system.launch_server(state_dir, port, log, ENV, timeout=120)[0]


def start_device(stream: Path, state_dir: Path, model_dir: Path, port: int, device_id: str,
                 token: str, fps: float, out: Path) -> subprocess.Popen:  # fmt: skip
    with open(state_dir / f"{device_id}.log", "w") as log:
        return subprocess.Popen(
            [*CDCA, "device", "run", "--input", str(stream), "--model", str(model_dir),
             "--state-dir", str(state_dir / device_id), "--server", f"127.0.0.1:{port}",
             "--device-id", device_id, f"--token={token}", "--fps", str(fps), "--out", str(out),
             "--summary", str(state_dir / f"{device_id}.summary.json"), "--rpc-timeout", "5",
             "--backoff-max", "1", "--drain-seconds", "30"],
            stdout=subprocess.DEVNULL, stderr=log, env=ENV,
        )  # fmt: skip


def summary(state_dir: Path, device_id: str) -> dict:
    return json.loads((state_dir / f"{device_id}.summary.json").read_text())


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    process.send_signal(sig)
    return process.wait(timeout=timeout)


def processes_mentioning(text: str) -> list[int]:
    """Live pids whose command line contains ``text`` (the orphan check)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            state = (entry / "stat").read_text().split()[2]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(entry.name))
    return found

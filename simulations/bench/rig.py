"""A server state folder, its ``cdca cloud serve`` process and its devices, for fault scenarios.

Processes are started as users start them (``cdca cloud enrol``, ``cdca cloud serve``,
``cdca device run``) on loopback. ``holdings`` reads back what the cloud holds of a
device's uploads: the ingest ledger, the inbox and ``rejected/``, keyed by inbox file name
so a file moving between them while we read is counted once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from simulations.harness.processes import device_run_argv, free_port

DOMAINS = ("gaussian_noise", "contrast", "impulse_noise", "fog", "pixelate", "shot_noise")


def corrupted_stream(
    path: Path, domains: tuple[str, ...] | list[str], per_domain: int, offset: int = 0
) -> Path:
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


def line_count(path: Path) -> int:
    """Lines in a file; 0 when it does not exist yet."""
    return len(path.read_text().splitlines()) if path.is_file() else 0


def wait_until(condition: Callable[[], bool], seconds: float = 60) -> bool:
    """Whether ``condition`` holds within ``seconds`` (polled every 0.2 s)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def wait_for(path: Path, text: str, seconds: float = 60) -> bool:
    """Whether ``path`` exists and contains ``text`` within ``seconds``."""
    return wait_until(lambda: path.is_file() and text in path.read_text(), seconds)


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


class Rig:
    """One cloud state folder on a fixed loopback port, with the processes started on it."""

    ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.state = workdir / "cloud"
        self.state.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log = workdir / "server.log"
        self.server: subprocess.Popen[bytes] | None = None
        self.server_exits: list[int] = []

    @classmethod
    def start(cls, workdir: Path) -> Rig:
        """A rig with its server listening."""
        rig = cls(workdir)
        rig.restart_server()
        return rig

    def enrol(self, device_id: str) -> str:
        """``cdca cloud enrol``; the device's token."""
        from simulations.harness.processes import enrol

        return enrol(self.state, device_id, self.ENV)

    def restart_server(self) -> None:
        """``cdca cloud serve`` on this rig's port; returns once it listens."""
        from simulations.harness.processes import launch_server

        self.server = launch_server(self.state, self.port, self.log, self.ENV, timeout=120)[0]

    def server_signal(self, sig: int) -> None:
        """Send ``sig`` to the running server."""
        assert self.server is not None
        self.server.send_signal(sig)

    def kill_server(self, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        """Stop the server with ``sig``; a clean stop's exit code is kept for the crash count."""
        if self.server is None or self.server.poll() is not None:
            return
        self.server.send_signal(signal.SIGCONT)  # a stalled server must be able to exit
        self.server.send_signal(sig)
        try:
            code = self.server.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.server.kill()
            code = self.server.wait()
        if sig == signal.SIGTERM:
            self.server_exits.append(code)

    def start_device(
        self,
        stream: Path,
        device_id: str,
        token: str,
        out: Path,
        fps: float,
        queue_items: int = 1000,
        drain_seconds: float = 30,
    ) -> subprocess.Popen[bytes]:
        """``cdca device run`` on ``stream``; its log is ``<device_id>.log`` (appended).

        ``drain_seconds``: how long the device waits at the end of its stream for queued
        uploads (it stops waiting as soon as the queue is empty).
        """
        with open(self.device_log(device_id), "a") as log:
            return subprocess.Popen(
                device_run_argv(
                    stream,
                    self.state / "model",
                    self.workdir / device_id,
                    self.port,
                    device_id,
                    token,
                    "--fps",
                    str(fps),
                    "--out",
                    str(out),
                    "--summary",
                    str(self.workdir / f"{device_id}.summary.json"),
                    "--rpc-timeout",
                    "5",
                    "--backoff-max",
                    "1",
                    "--drain-seconds",
                    str(drain_seconds),
                    "--queue-items",
                    str(queue_items),
                ),
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=self.ENV,
            )

    def device_log(self, device_id: str) -> Path:
        """Where a device's stderr goes."""
        return self.workdir / f"{device_id}.log"

    def summary(self, device_id: str) -> dict[str, Any]:
        """The device's run summary (JSON)."""
        result: dict[str, Any] = json.loads(
            (self.workdir / f"{device_id}.summary.json").read_text()
        )
        return result

    @contextmanager
    def cleanup(self, device: subprocess.Popen[bytes]) -> Iterator[None]:
        """Whatever happens inside, leave no process behind; the server gets a clean SIGTERM."""
        try:
            yield
        finally:
            if device.poll() is None:
                device.kill()
                device.wait()
            self.kill_server()

    def settled_holdings(self, device_id: str, quiet: float = 1.0) -> dict[str, int]:
        """``holdings`` once they stop changing (checked every ``quiet`` s, 10 times at most).

        An upload a killed device had in flight may still be stored by the server after the
        device is gone; counted later, its resend would look like a lost sample.
        """
        held = self.holdings(device_id)
        deadline = time.monotonic() + 10 * quiet
        while time.monotonic() < deadline:
            time.sleep(quiet)
            again = self.holdings(device_id)
            if again == held:
                break
            held = again
        return held

    def holdings(self, device_id: str) -> dict[str, int]:
        """Samples the cloud holds from ``device_id``, per inbox file (ingested, waiting or rejected)."""
        from cloud.server.storage import Inbox, IngestLedger

        held: dict[str, int] = {}
        for folder in (
            self.state / "inbox",
            self.state / "rejected",
        ):  # before the ledger: see above
            for path in sorted(folder.glob("*.npz")) if folder.is_dir() else []:
                if Inbox.device_of(path) != device_id:
                    continue
                try:
                    with np.load(path) as data:
                        held[path.name] = len(data["images"])
                except OSError:  # ingested between the listing and the read: the ledger has it
                    continue
        held.update(IngestLedger(self.state / "ingested.log").files(device_id))
        return held

    def accounting(
        self,
        device_id: str,
        expected_frames: int,
        out: Path,
        exits: dict[str, int],
        held_before: dict[str, int] | None = None,
    ) -> dict[str, Any]:
        """Frames, crashes and acknowledged samples the cloud cannot account for, after the run."""
        summary = self.summary(device_id)
        held = {k: v for k, v in self.holdings(device_id).items() if k not in (held_before or {})}
        # a batch the cloud already had is acknowledged again as stored before and held
        # once, in an earlier file; one batch can come back twice (a killed device's queued
        # resend, then the restarted device's identical batch), so every such sample is
        # taken out, not at most what was held before the restart
        again = int(summary.get("samples_stored_before", 0))
        acked = int(summary["samples_acked"]) - again
        logs = [self.log, *(self.device_log(d) for d in exits)]
        crashes = sum(code != 0 for code in [*exits.values(), *self.server_exits])
        crashes += sum("Traceback" in p.read_text() for p in logs if p.is_file())
        return {
            "frames": summary["frames"],
            "expected_frames": expected_frames,
            "lines_written": line_count(out),
            "samples_acked": acked,
            "acked_again": again,
            "samples_held_by_cloud": sum(held.values()),
            "lost_acknowledged": max(0, acked - sum(held.values())),
            "crashes": crashes,
            "queue_left": summary["queue_left"],
            "rpc_errors": summary.get("rpc_errors", 0),
        }

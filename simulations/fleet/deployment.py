"""The ``flower`` engine: Flower's Deployment Engine on loopback, started the way operators start it.

One ``flower-superlink`` (``--insecure``, its own state database, runtime dependency
installation disabled: nothing is downloaded), one ``flower-supernode`` per device (each
told its ``partition-id``), then ``flwr run <checkout> <connection>`` with the run's
resolved project file as run config (``project``), polled with ``flwr ls`` until the run
finishes. Every process runs in its own
process group and is stopped as a group (a SuperNode leaves a SuperExec child behind
otherwise). Logs land in ``<run>/flower/``. For real deployments (TLS, node
authentication) see docs/flower.md.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from protocol.config.loader import toml_value
from protocol.config.project import ProjectConfig, write_resolved
from protocol.errors import CdcaError
from simulations.fleet.engine_run import EngineRun
from simulations.fleet.flower_server import PROGRESS_FILE, RESULTS_FILE
from simulations.harness.processes import free_port

CONNECTION = "cdca-loopback"


def project_root() -> Path:
    """The checkout holding pyproject.toml with the ``[tool.flwr.app]`` section."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise CdcaError(
            "the flower engine runs `flwr run` on a source checkout of cdca; "
            f"no pyproject.toml at {root}"
        )
    return root


class LoopbackFederation:
    """A SuperLink and N SuperNodes on 127.0.0.1, stopped as process groups on exit."""

    def __init__(self, folder: Path, nodes: int, node_config: dict[int, str] | None = None) -> None:
        """``node_config``: more ``--node-config`` pairs for some nodes (``stream="..."``)."""
        self.folder, self.nodes, self.extra = folder, nodes, node_config or {}
        self.port = free_port()
        self.processes: list[subprocess.Popen[bytes]] = []
        bin_dir = str(Path(sys.executable).parent)  # flower-superexec must be on PATH
        self.env = {
            **os.environ,
            "FLWR_HOME": str(folder / "home"),
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
        }

    def __enter__(self) -> LoopbackFederation:
        home = self.folder / "home"
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(
            f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )
        self._start(
            "superlink",
            [
                "flower-superlink",
                "--insecure",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--database",
                str(self.folder / "superlink.db"),
                "--disable-runtime-dependency-installation",
            ],
        )
        self._wait_for_port(self.port)
        for i in range(self.nodes):
            node_config = f"partition-id={i} num-partitions={self.nodes} {self.extra.get(i, '')}"
            self._start(
                f"supernode-{i}",
                [
                    "flower-supernode",
                    "--insecure",
                    "--superlink",
                    f"127.0.0.1:{self.port}",
                    "--port",
                    str(free_port()),
                    "--node-config",
                    node_config,
                ],
            )
        return self

    def __exit__(self, *exc: object) -> None:
        for process in reversed(self.processes):
            _stop_group(process)

    def flwr(self, *args: str) -> dict[str, object]:
        """Run the ``flwr`` CLI with ``--format json``; returns its parsed output."""
        out = subprocess.run(
            [str(Path(sys.executable).parent / "flwr"), *args, "--format", "json"],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=project_root(),
        )
        try:
            return json.loads(out.stdout)
        except json.JSONDecodeError as err:
            raise CdcaError(
                f"`flwr {' '.join(args)}` failed: {out.stdout[-2000:]}{out.stderr[-2000:]}"
            ) from err

    def _start(self, name: str, command: list[str]) -> None:
        log = open(self.folder / f"{name}.log", "wb")  # noqa: SIM115 - kept open while it runs
        self.processes.append(
            subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        )

    def _wait_for_port(self, port: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.processes[0].poll() is not None:
                raise CdcaError(f"flower-superlink exited; see {self.folder / 'superlink.log'}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.2)
        raise CdcaError(f"flower-superlink did not listen on {port} within {timeout:.0f} s")


def run_deployment(
    project: ProjectConfig,
    run_dir: Path,
    progress: Callable[[int], None] | None = None,
    timeout: float = 3600.0,
) -> EngineRun:
    """The whole fleet through a loopback federation; returns what the ServerApp wrote."""
    run_dir = run_dir.resolve()
    folder = run_dir / "flower"
    folder.mkdir(parents=True, exist_ok=True)
    for stale in (RESULTS_FILE, PROGRESS_FILE):
        (run_dir / stale).unlink(missing_ok=True)
    config = folder / "run-config.toml"
    config.write_text(run_config(project, run_dir, folder))
    with LoopbackFederation(folder, project.fleet.devices) as federation:
        started = federation.flwr(
            "run", str(project_root()), CONNECTION, "--run-config", str(config)
        )
        if not started.get("success"):
            raise CdcaError(f"`flwr run` refused the app: {started}")
        run_id = str(started["run-id"])
        status = _wait(federation, run_id, run_dir, progress, timeout)
    if status.get("status") != "finished:completed":
        raise CdcaError(
            f"the Flower run ended {status.get('status')}: {status.get('status-details')} "
            f"(logs: {folder})"
        )
    return EngineRun.from_json(json.loads((run_dir / RESULTS_FILE).read_text()))


def run_config(project: ProjectConfig, run_dir: Path, folder: Path) -> str:
    """``flwr run --run-config``: the project as one file, no scenario over it, the results folder.

    The file holds absolute paths: the app runs from a bundle without the shipped files.
    """
    from cloud.shipped import with_shipped_checkpoints

    project_file = write_resolved(with_shipped_checkpoints(project), folder, "this Flower run")
    values = {
        "project": str(project_file),
        "scenario": "",
        "set": "",
        "run-dir": str(run_dir),
        "report": False,  # `cdca simulate` writes the report, with every engine's runs
    }
    return "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items())


def _wait(
    federation: LoopbackFederation,
    run_id: str,
    run_dir: Path,
    progress: Callable[[int], None] | None,
    timeout: float,
) -> dict[str, object]:
    deadline, reported = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        listing = federation.flwr("ls", CONNECTION, "--run-id", run_id)
        run = listing.get("runs", [{}])[0]  # type: ignore[index]
        done_file = run_dir / PROGRESS_FILE
        if progress and done_file.is_file() and (text := done_file.read_text().strip()).isdigit():
            progress(int(text) - reported)
            reported = int(text)
        if str(run.get("status", "")).startswith("finished"):
            return run
        time.sleep(1.0)
    raise CdcaError(f"the Flower run {run_id} did not finish within {timeout:.0f} s")


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue

"""Starting cdca's processes the way users start them: ``cdca cloud enrol``, ``serve``, ``device run``.

One place builds each command line, so the fleet's gRPC engine, the system benchmark and
the fault rig run the same commands a user types.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

CDCA = [sys.executable, "-c", "import sys; from simulations.cli import main; sys.exit(main())"]


def free_port() -> int:
    """A loopback port nobody listens on (yet)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def device_run_argv(
    stream: Path,
    model_dir: Path,
    state_dir: Path,
    port: int,
    device_id: str,
    token: str,
    *options: str,
) -> list[str]:
    """``cdca device run`` for one device on loopback; ``options`` are further flags."""
    return [
        *CDCA,
        "device",
        "run",
        "--input",
        str(stream),
        "--model",
        str(model_dir),
        "--state-dir",
        str(state_dir),
        "--server",
        f"127.0.0.1:{port}",
        "--device-id",
        device_id,
        f"--token={token}",
        *options,
    ]


def enrol(state_dir: Path, device_id: str, env: dict[str, str]) -> str:
    """``cdca cloud enrol`` in a subprocess; returns the device's token."""
    out = subprocess.run(
        [*CDCA, "cloud", "enrol", "--device", device_id, "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return out.stdout.strip()


def launch_server(
    state_dir: Path,
    port: int,
    log: Path,
    env: dict[str, str],
    timeout: float = 300,
    extra: tuple[str, ...] = (),
) -> tuple[subprocess.Popen[bytes], int]:
    """``cdca cloud serve`` (output appended to ``log``), once it listens; returns it and its port."""
    port_file = state_dir / "port"
    port_file.unlink(missing_ok=True)
    with open(log, "a") as handle:
        server = subprocess.Popen(
            [
                *CDCA,
                "cloud",
                "serve",
                "--state-dir",
                str(state_dir),
                "--port",
                str(port),
                "--port-file",
                str(port_file),
                "--metrics-port",  # a free one: runs and benchmarks may share a machine
                "0",
                *extra,
            ],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
        )
    deadline = time.monotonic() + timeout
    while not port_file.is_file():
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f"the server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    return server, int(port_file.read_text())

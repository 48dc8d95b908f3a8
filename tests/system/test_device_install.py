"""The device extra alone: a fresh venv with ``cdca[device]`` is small and runs ``cdca device bench``."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEVICE_INSTALL_LIMIT_MB = 300


def clean_env() -> dict[str, str]:
    """This process's environment without the PYTHON* variables that would let the venv see
    the test's own packages (Flower's Ray backend exports the driver's sys.path as
    PYTHONPATH, and every later subprocess would inherit it)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}


def folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


@pytest.mark.slow
def test_the_device_extra_alone_is_small_has_no_torch_and_benches_a_model(exported, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=clean_env())
    python = venv / "bin" / "python"
    source = tmp_path / "src"  # a clean copy: no .venv, runs or build folders in the wheel
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(".venv", "runs", "data", ".git", "*.egg-info", "build"),
    )
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", f"{source}[device]"],
        check=True,
        timeout=900,
        env=clean_env(),
    )
    site = next((venv / "lib").glob("python3*/site-packages"))
    size = folder_mb(site)
    print(f"device extra installed: {size:.1f} MiB in {site}")
    assert size < DEVICE_INSTALL_LIMIT_MB
    assert not any((site / name).exists() for name in ("torch", "torchvision", "open_clip"))
    assert (site / "onnxruntime").is_dir()  # installed here, not borrowed from the test's venv
    imports = "import importlib.util as u; print([u.find_spec(n) is None for n in ('torch', 'open_clip')])"
    found = subprocess.run(
        [python, "-c", imports], capture_output=True, text=True, check=True, env=clean_env()
    )
    assert found.stdout.strip() == "[True, True]"
    model = tmp_path / "model"
    shutil.copytree(exported.manifest.parent, model)
    bench = venv_cdca(venv, tmp_path, "device", "bench", "--model", model, "--seconds", "0.05")
    assert "| fp32 | CPU | model | 64 | on |" in bench
    assert "| fp32 | CPU | adapting step | 64 | on |" in bench  # the agent, torch-free
    # no --model: the student cdca ships, with its sample
    shipped = venv_cdca(
        venv, tmp_path, "device", "bench", "--seconds", "0.05", "--batch-sizes", "1"
    )
    assert "| int8 | CPU | model | 1 | off |" in shipped


def venv_cdca(venv: Path, cwd: Path, *args: object) -> str:
    """Run the venv's own ``cdca``; its stdout (a failure shows both streams)."""
    done = subprocess.run(
        [venv / "bin" / "cdca", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=clean_env(),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout

"""The device extra alone: a fresh venv with ``cdca[device]`` is small and runs ``cdca device bench``."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEVICE_INSTALL_LIMIT_MB = 300


def folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


@pytest.mark.slow
def test_the_device_extra_alone_is_small_has_no_torch_and_benches_a_model(exported, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
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
    )
    site = next((venv / "lib").glob("python3*/site-packages"))
    size = folder_mb(site)
    print(f"device extra installed: {size:.1f} MiB in {site}")
    assert size < DEVICE_INSTALL_LIMIT_MB
    assert not any((site / name).exists() for name in ("torch", "torchvision", "open_clip"))
    model = tmp_path / "model"
    shutil.copytree(exported.manifest.parent, model)
    bench = subprocess.run(
        [venv / "bin" / "cdca", "device", "bench", "--model", model, "--seconds", "0.05"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert bench.returncode == 0, bench.stdout + bench.stderr
    assert "| fp32 | CPU | 64 | on |" in bench.stdout
    shipped = subprocess.run(  # no --model: the student cdca ships, with its sample
        [venv / "bin" / "cdca", "device", "bench", "--seconds", "0.05", "--batch-sizes", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert shipped.returncode == 0, shipped.stdout + shipped.stderr
    assert "| int8 | CPU | 1 | off |" in shipped.stdout

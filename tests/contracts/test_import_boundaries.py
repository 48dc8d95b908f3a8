"""The layering promise: protocol and device never load torch; cloud never reaches device/simulations."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# A meta-path finder that makes torch & co. unimportable, standing in for an edge box that
# installed only the device extra.
BLOCK_HEAVY = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'torch', 'torchvision', 'open_clip', 'cloud', 'simulations.bench'}:
            raise ModuleNotFoundError(f'No module named {name!r}', name=name)
        return None
sys.meta_path.insert(0, _Block())
"""


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


DEVICE_SIDE = sorted(
    ["protocol", "device"]
    + [f"protocol.{p.stem}" for p in (ROOT / "protocol").glob("*.py") if p.stem != "__init__"]
    + [f"protocol.config.{p.stem}" for p in (ROOT / "protocol" / "config").glob("*.py")]
    + [f"device.{p.stem}" for p in (ROOT / "device").glob("*.py") if p.stem != "__init__"]
)  # every device and protocol module, found on disk: a new one is checked without a list edit


@pytest.mark.parametrize("module", DEVICE_SIDE)
def test_module_does_not_load_torch(module):
    result = run_python(
        f"import sys, {module}; bad = [m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'torchvision', 'open_clip', 'cloud', 'simulations')]; assert not bad, bad"
    )
    assert result.returncode == 0, result.stderr


def test_cdca_device_runs_without_torch_installed():
    result = run_python(
        BLOCK_HEAVY + "from simulations.cli import main; sys.exit(main(['device', 'doctor']))"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "torch_loaded: False" in result.stdout


def test_cdca_device_run_predicts_without_torch_installed(exported, tmp_path):
    import numpy as np

    stream = tmp_path / "frames.npz"
    rng = np.random.default_rng(0)
    np.savez(
        stream,
        images=rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8),
        labels=rng.integers(0, 4, 40),
    )
    argv = [
        "device",
        "run",
        "--input",
        str(stream),
        "--model",
        str(exported.manifest),
        "--state-dir",
        str(tmp_path / "state"),
        "--batch-size",
        "16",
    ]
    result = run_python(
        BLOCK_HEAVY + f"from simulations.cli import main; code = main({argv!r}); "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'cloud')]; "
        "assert not bad, bad; sys.exit(code)"
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 40
    assert '"accuracy"' in result.stderr


def test_cdca_help_is_light():
    result = run_python(
        BLOCK_HEAVY + "from simulations.cli import main; sys.exit(main(['--help']))"
    )
    assert result.returncode == 0, result.stderr
    assert "device" in result.stdout


def test_cloud_command_without_cloud_extra_says_what_to_install():
    result = run_python(
        BLOCK_HEAVY.replace("'cloud', ", "")
        + "from simulations.cli import main; sys.exit(main(['bench', 'adapt']))"
    )
    assert result.returncode == 3
    assert "pip install 'cdca[cloud]'" in result.stderr


def test_import_linter_contracts_hold():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which(
        "lint-imports"
    )
    assert lint, "import-linter is part of the dev extra"
    result = subprocess.run(
        [lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 kept, 0 broken" in result.stdout

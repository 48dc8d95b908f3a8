import numpy as np

from protocol.manifest import load_manifest, sha256_of
from simulations.bench.rig import Rig
from simulations.harness.processes import CDCA
from tests.system.conftest import TOKENS

ENV = Rig.ENV


def test_a_new_device_downloads_its_model_and_runs_against_the_server(live_server, tmp_path):
    import subprocess

    stream = tmp_path / "frames.npz"
    rng = np.random.default_rng(0)
    np.savez(stream, images=rng.integers(0, 256, (48, 32, 32, 3), dtype=np.uint8))
    state = tmp_path / "device"
    result = subprocess.run(
        [
            *CDCA,
            "device",
            "run",
            "--bootstrap",
            "--server",
            live_server.address,
            "--device-id",
            "cam-a",
            f"--token={TOKENS['cam-a']}",
            "--input",
            str(stream),
            "--state-dir",
            str(state),
            "--batch-size",
            "16",
            "--drain-seconds",
            "10",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = load_manifest(state / "model" / "student.manifest.json")
    assert (
        manifest.sha256
        == live_server.manifest_sha256
        == sha256_of(state / "model" / manifest.model_file)
    )
    held = manifest.held  # the held-statistics graph and its data came down too
    assert held is not None
    assert sha256_of(state / "model" / held.data_file) == held.data_sha256
    assert len(result.stdout.splitlines()) == 48
    assert '"queue_left": 0' in result.stderr


def test_a_device_with_a_wrong_token_keeps_predicting_and_says_why(live_server, tmp_path, exported):
    import subprocess

    stream = tmp_path / "frames.npz"
    np.savez(stream, images=np.zeros((16, 32, 32, 3), np.uint8))
    result = subprocess.run(
        [
            *CDCA,
            "device",
            "run",
            "--server",
            live_server.address,
            "--device-id",
            "cam-a",
            "--token=wrong",
            "--input",
            str(stream),
            "--model",
            str(exported.manifest),
            "--state-dir",
            str(tmp_path / "d"),
            "--drain-seconds",
            "1",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(result.stdout.splitlines()) == 16
    assert (
        "the cloud refused this device (UNAUTHENTICATED: device id or token not accepted"
        in result.stderr
    )

"""The "Your own data" guide end to end on a generated dataset unlike Fashion-MNIST.

48-px colour images of 4 classes, as an image folder: ``cdca init``, ``data prepare``,
``train teacher``, ``train student``, ``cloud distill``, ``cloud export``, ``bench adapt``,
``simulate``, then ``cloud serve`` with a ``device run`` against it, every step the command
a user types (tiny epochs). Nothing may mention Fashion-MNIST's classes or 32 px.
"""

import json
import subprocess

import numpy as np
import pytest
from PIL import Image

from protocol.config.project import load_project
from protocol.manifest import load_manifest
from simulations.cli import main
from simulations.harness.processes import CDCA

CLASSES = ("red", "green", "blue", "white")
SIZE = 48


def shapes(root, per_class=40, seed=0):
    """A coloured square whose colour is the class, somewhere on a noisy background."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = rng.integers(0, 60, (SIZE, SIZE, 3), dtype=np.uint8)
            top, left = rng.integers(4, SIZE - 20, 2)
            colour = [255 * (label in (0, 3)), 255 * (label in (1, 3)), 255 * (label in (2, 3))]
            image[top : top + 16, left : left + 16] = colour
            Image.fromarray(image).save(root / name / f"{i}.png")
    return root


def cdca(project_dir, *args):
    assert main([*args, "--project", str(project_dir / "cdca.toml")]) == 0, args


@pytest.mark.slow  # about 2 minutes on 2 cores
def test_from_an_image_folder_to_a_served_fleet(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shapes(tmp_path / "photos")
    assert main(["init", "image-folder:photos", "--dir", "project"]) == 0
    project_dir = tmp_path / "project"
    quick = [
        "--set",
        "adaptation.synthetic.count=16",
        "--set",
        "fleet.per_domain=32",
        "--set",
        "fleet.devices=2",
        "--set",
        "fleet.batch_size=16",
        "--set",
        "adaptation.device.budget=0.5",
    ]
    (project_dir / "cdca.toml").write_text(
        (project_dir / "cdca.toml").read_text() + "\n[adaptation.session]\nmin_uploads = 4\n"
    )
    cdca(project_dir, "data", "prepare", "--corruptions", "fog,contrast,gaussian_noise")
    cdca(project_dir, "train", "teacher", "--epochs", "2", "--batch-size", "32")
    cdca(project_dir, "train", "student", "--epochs", "2")
    cdca(project_dir, "cloud", "distill", "--epochs", "2")
    cdca(project_dir, "cloud", "export", "--out", str(tmp_path / "export"))
    manifest = load_manifest(tmp_path / "export" / "student.manifest.json")
    assert manifest.class_names == tuple(sorted(CLASSES))  # the folder names, alphabetical
    assert manifest.preprocess.image_size == SIZE
    with np.load(tmp_path / "export" / "student.sample.npz") as sample:  # held-out, own classes
        assert sample["images"].shape[1:] == (SIZE, SIZE, 3)
    assert load_project(project_dir / "cdca.toml").data.image_size == SIZE
    report = (project_dir / "models" / "student.report.md").read_text()
    assert "label-trained student" in report  # this project's, not the shipped one

    bench = tmp_path / "bench"
    cdca(
        project_dir,
        "bench",
        "adapt",
        "--methods",
        "source,bn_adapt,uvpa",
        "--corruptions",
        "fog,contrast",
        "--num-per-domain",
        "32",
        "--batch-size",
        "16",
        "--threads",
        "1",
        "--out",
        str(bench),
        *quick,
    )
    rows = {r["method"]: r for r in json.loads((bench / "results.json").read_text())["results"]}
    assert 0 < rows["uvpa"]["costs"]["upload_fraction"] <= 0.5
    simulated = tmp_path / "simulated"
    cdca(project_dir, "simulate", "--out", str(simulated), "--threads", "1", *quick)
    results = json.loads((simulated / "results.json").read_text())
    assert results["cloud"]["uvpa"]["synthetic_samples"] > 0  # rendered from the user's images
    assert "T-shirt" not in (simulated / "report.md").read_text()
    _serve_and_run_a_device(project_dir, tmp_path)


def _serve_and_run_a_device(project_dir, tmp_path):
    from simulations.harness.processes import enrol, launch_server

    state = tmp_path / "state"
    env = {"PYTHONUNBUFFERED": "1", **__import__("os").environ}
    token = enrol(state, "cam-1", env)
    extra = ("--project", str(project_dir / "cdca.toml"))
    server, port = launch_server(state, 0, tmp_path / "server.log", env, extra=extra)
    try:
        run = subprocess.run(
            [
                *CDCA,
                "device",
                "run",
                "--input",
                str(project_dir / "data" / "shifted"),
                "--corruptions",
                "fog,contrast",
                "--severity",
                "5",
                "--state-dir",
                str(tmp_path / "cam"),
                "--server",
                f"127.0.0.1:{port}",
                "--device-id",
                "cam-1",
                f"--token={token}",
                "--bootstrap",
                "--batch-size",
                "16",
                "--out",
                "none",
                "--summary",
                str(tmp_path / "cam.json"),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads((tmp_path / "cam.json").read_text())
    assert summary["frames"] == 2 * 32
    assert summary["uploads_acked"] > 0
    assert load_project(state / "config.toml").data.image_size == SIZE  # what the server ran with

"""``cdca device bench`` on a tiny exported model: real onnxruntime sessions in child processes."""

import json
import shutil

import numpy as np
import pytest

from device.bench import MODEL_RUN, STEP_RUN, BenchRow, available_providers
from device.runtime import DeviceRuntime
from protocol.manifest import SAMPLE_FILE
from simulations.cli import main


def labelled_sample(folder, manifest):
    """Images whose labels are the model's own predictions, every other one changed: 50 %."""
    runtime = DeviceRuntime.load(manifest)
    images = np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    labels = runtime.predict(images).logits.argmax(1)
    labels[::2] = (labels[::2] + 1) % len(runtime.manifest.class_names)
    np.savez(folder / SAMPLE_FILE, images=images, labels=labels)


def test_device_bench_measures_every_configuration_and_the_sample_accuracy(
    exported, tmp_path, capsys
):
    folder = tmp_path / "model"
    shutil.copytree(exported.manifest.parent, folder)
    labelled_sample(folder, folder / exported.manifest.name)
    argv = ["device", "bench", "--model", str(folder), "--providers", "cpu"]
    code = main([*argv, "--batch-sizes", "1,4", "--seconds", "0.05", "--json"])
    assert code == 0
    rows = [BenchRow(**r) for r in json.loads(capsys.readouterr().out)]
    model, step = MODEL_RUN, STEP_RUN
    assert [(r.batch, r.prompt, r.run) for r in rows] == [
        (1, False, model),
        (1, True, model),
        (1, True, step),  # the device's whole adapting step under a prompt
        (4, False, model),
        (4, True, model),
        (4, True, step),
    ]
    for row in rows:
        assert (row.model, row.provider, row.error) == ("fp32", "CPUExecutionProvider", "")
        assert row.accuracy == (50.0 if row.run == model else None)
        assert row.frames_per_second == pytest.approx(
            1000 * row.batch / row.ms_per_batch, rel=0.01
        )  # ms rounded to 3 places
        # the child's own peak: onnxruntime and NumPy, far below the test process (torch)
        assert row.peak_memory_mb is not None
        assert 10 < row.peak_memory_mb < 400


def test_device_bench_says_what_is_wrong(tmp_path, capsys):
    assert main(["device", "bench", "--model", str(tmp_path)]) == 2
    assert "cdca cloud export" in capsys.readouterr().out
    assert main(["device", "bench", "--batch-sizes", "0"]) == 2
    assert main(["device", "bench", "--providers", "no-such-provider"]) == 2
    assert "not installed here" in capsys.readouterr().out
    assert "CPUExecutionProvider" in available_providers()

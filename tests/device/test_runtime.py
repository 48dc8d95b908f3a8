import numpy as np
import pytest
import torch

from device.preprocess import preprocess, resize_bilinear
from device.runtime import DeviceRuntime
from protocol.errors import DataError
from protocol.manifest import Preprocess, load_manifest

# The tiny fixture's norm channels: 320 in the compact CNN's BatchNorm2d layers plus the
# projector's BatchNorm1d (2 x the 16-d joint space).
TINY_K = 320 + 32


def test_preprocess_matches_the_student_normalisation():
    from cloud.students.preprocess import Normalization

    images = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    ours = preprocess(images, Preprocess(32, (0.2, 0.3, 0.4), (0.5, 0.6, 0.7)))
    theirs = Normalization((0.2, 0.3, 0.4), (0.5, 0.6, 0.7)).to_tensor(images).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_resize_matches_torch_bilinear():
    images = np.random.default_rng(1).integers(0, 255, (2, 40, 28, 3), dtype=np.uint8)
    ours = resize_bilinear(images, 32)
    theirs = torch.nn.functional.interpolate(
        torch.from_numpy(images).permute(0, 3, 1, 2).float(),
        size=(32, 32),
        mode="bilinear",
        align_corners=False,
    ).permute(0, 2, 3, 1)
    np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-3)


def test_runtime_predicts_like_the_distilled_student(exported, distilled):
    student, vectors, info = distilled
    runtime = DeviceRuntime.load(exported.manifest)
    images = np.random.default_rng(2).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    prediction = runtime.predict(images)
    expected = student(info.normalization.to_tensor(images), vectors).detach().numpy()
    np.testing.assert_allclose(prediction.logits, expected, atol=1e-3)
    assert prediction.embedding.shape == (5, 16)


def test_prompt_changes_predictions_and_reset_restores(exported):
    runtime = DeviceRuntime.load(exported.manifest)
    images = np.random.default_rng(3).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    base = runtime.predict(images).logits
    runtime.set_adaptation(
        prompt=np.full((1, 3, 32, 32), 0.5, np.float32), stat_mix=np.ones(1, np.float32)
    )
    assert not np.allclose(runtime.predict(images).logits, base)
    runtime.reset_adaptation()
    np.testing.assert_allclose(runtime.predict(images).logits, base, atol=1e-6)


@pytest.mark.parametrize(
    ("inputs", "match"),
    [
        ({"prompt": np.full((1, 3, 32, 32), np.nan, np.float32)}, "NaN"),
        ({"prompt": np.zeros((1, 3, 16, 16), np.float32)}, "shape"),
        ({"norm_affine": np.zeros((2, TINY_K), np.float64)}, "float32"),
        ({"temperature": np.zeros(1, np.float32)}, "no input 'temperature'"),
    ],
)
def test_bad_adaptation_inputs_are_refused_and_the_last_good_one_stays(exported, inputs, match):
    runtime = DeviceRuntime.load(exported.manifest)
    good = np.full((1, 3, 32, 32), 0.1, np.float32)
    runtime.set_adaptation(prompt=good)
    with pytest.raises(DataError, match=match):
        runtime.set_adaptation(**inputs)
    np.testing.assert_array_equal(runtime.adaptation["prompt"], good)


def test_tampered_model_is_refused(exported, tmp_path):
    import shutil

    for path in (exported.model, exported.manifest, exported.defaults):
        shutil.copy(path, tmp_path / path.name)
    model = tmp_path / exported.model.name
    data = bytearray(model.read_bytes())
    data[-100] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(DataError, match="tampered"):
        DeviceRuntime.load(tmp_path / exported.manifest.name)
    assert load_manifest(tmp_path / exported.manifest.name).model_file == "student.onnx"


def test_an_int8_model_runs_without_the_rewrite_that_makes_it_slow(exported, tmp_path, monkeypatch):
    import shutil
    from dataclasses import replace

    import onnxruntime as ort

    from protocol.manifest import load_manifest

    folder = tmp_path / "model"
    shutil.copytree(exported.manifest.parent, folder)
    fp32 = load_manifest(exported.manifest)
    assert fp32.disabled_optimizers == []
    (folder / "int8.json").write_text(replace(fp32, quantization="int8-qdq").to_json())
    opened = []
    real = ort.InferenceSession
    monkeypatch.setattr(
        ort, "InferenceSession", lambda *a, **kw: opened.append(kw) or real(*a, **kw)
    )
    DeviceRuntime.load(folder / "int8.json")
    DeviceRuntime.load(exported.manifest)
    assert [kw["disabled_optimizers"] for kw in opened] == [["QDQPropagationTransformer"], []]

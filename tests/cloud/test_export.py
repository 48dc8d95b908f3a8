import json
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from cloud.distill.checkpoint import DistilledInfo, save_distilled
from cloud.distill.student import DistilledStudent
from cloud.export.device_model import DeviceModel
from cloud.export.onnx_export import PARITY_TOLERANCE, export_device_model
from cloud.students import create_student
from protocol.manifest import SAMPLE_FILE, load_manifest, sha256_of, verify_model_file
from tests.conftest import require_fashion_mnist

# The tiny fixture's norm channels: 320 in the compact CNN's BatchNorm2d layers plus the
# projector's BatchNorm1d (2 x the 16-d joint space).
TINY_K = 320 + 32


def test_neutral_inputs_reproduce_the_distilled_student(distilled):
    student, vectors, _ = distilled
    model = DeviceModel(student)
    inputs = model.neutral_inputs(vectors, batch=5)
    inputs["x"] = torch.randn(5, 3, 32, 32)
    logits, embedding, batch_stats = model(**inputs)
    torch.testing.assert_close(logits, student(inputs["x"], vectors), atol=1e-4, rtol=1e-4)
    assert torch.allclose(embedding.norm(dim=-1), torch.ones(5))
    assert batch_stats.shape == (2, model.num_norm_channels)
    first = model.norm_layers[0]
    expected_mean = student.encoder.features[0](inputs["x"]).mean(dim=(0, 2, 3))
    torch.testing.assert_close(batch_stats[0, : first.channels], expected_mean)


def test_reported_batch_stats_reproduce_batch_normalisation_with_stat_mix_zero(distilled):
    student, vectors, _ = distilled
    model = DeviceModel(student)
    inputs = model.neutral_inputs(vectors, batch=8)
    inputs["x"] = torch.randn(8, 3, 32, 32) * 2
    inputs["stat_mix"] = torch.ones(1)
    on_device, _, stats = model(**inputs)
    running = torch.cat(
        [
            torch.stack([m.running_mean, m.running_var])
            for m in model.student.modules()
            if hasattr(m, "layer")
        ],
        dim=1,
    )
    replay = dict(inputs, stat_mix=torch.zeros(1))
    replay["norm_stats"] = torch.stack([stats[0] - running[0], torch.log(stats[1] / running[1])])
    torch.testing.assert_close(model(**replay)[0], on_device, atol=1e-4, rtol=1e-4)


def test_adaptation_inputs_change_the_output(distilled):
    student, vectors, _ = distilled
    model = DeviceModel(student)
    inputs = model.neutral_inputs(vectors, batch=4)
    inputs["x"] = torch.randn(4, 3, 32, 32)
    base = model(**inputs)[0]
    for name in ("prompt", "input_affine", "norm_affine", "norm_stats", "stat_mix"):
        changed = dict(inputs)
        changed[name] = inputs[name] + 0.5
        assert not torch.allclose(model(**changed)[0], base), name


def test_the_exported_fused_normalisation_computes_what_the_cloud_trains(distilled):
    from cloud.export.onnx_export import random_adaptation_inputs

    student, vectors, _ = distilled
    cloud, export = DeviceModel(student), DeviceModel(student, for_export=True)
    example = cloud.neutral_inputs(vectors, batch=6)
    inputs = {
        k: torch.as_tensor(v) for k, v in random_adaptation_inputs(example, 6, seed=3).items()
    }
    inputs["stat_mix"] = torch.full((1,), 0.7)
    for ours, theirs in zip(cloud(**inputs), export(**inputs), strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_replayed_logits_are_the_forward_logits_with_stat_mix_zero(distilled):
    from cloud.export.onnx_export import random_adaptation_inputs

    student, vectors, _ = distilled
    model = DeviceModel(student)
    example = model.neutral_inputs(vectors, batch=6)
    inputs = {
        k: torch.as_tensor(v) for k, v in random_adaptation_inputs(example, 6, seed=4).items()
    }
    inputs["stat_mix"] = torch.zeros(1)
    forward = model(**inputs)[0]
    replayed = model.replayed_logits(**{k: v for k, v in inputs.items() if k != "stat_mix"})
    assert torch.equal(replayed, forward)  # the skipped batch statistics had weight 0
    # and the model observes batches again afterwards (the device's statistics come from it)
    assert model(**inputs)[2].shape == (2, model.num_norm_channels)


def test_export_matches_torch_and_has_a_dynamic_batch(exported, distilled):
    assert exported.parity_max_abs_diff < PARITY_TOLERANCE
    student, vectors, _ = distilled
    session = ort.InferenceSession(str(exported.model), providers=["CPUExecutionProvider"])
    defaults = dict(np.load(exported.defaults))
    for batch in (1, 3):
        logits, embedding, stats = session.run(
            None, {**defaults, "x": np.zeros((batch, 3, 32, 32), np.float32)}
        )
        assert stats.shape == (2, TINY_K)
        assert logits.shape == (batch, 4)
        assert embedding.shape == (batch, 16)
    more = np.concatenate([defaults["class_vectors"], defaults["class_vectors"][:1]])
    logits, *_ = session.run(
        None, {**defaults, "class_vectors": more, "x": np.zeros((2, 3, 32, 32), np.float32)}
    )
    assert logits.shape == (2, 5)  # new class vectors, same model file


def test_manifest_describes_the_model_and_catches_tampering(exported, tmp_path):
    manifest = load_manifest(exported.manifest)
    assert manifest.sha256 == sha256_of(exported.model)
    assert [s.name for s in manifest.inputs] == list(DeviceModel.INPUTS)
    assert manifest.input("norm_affine").shape == (2, TINY_K)
    assert len(manifest.class_names) == 4
    assert manifest.preprocess.mean == (0.2, 0.2, 0.2)
    assert sum(layer["channels"] for layer in manifest.norm_layers) == TINY_K
    verify_model_file(manifest, exported.model)
    tampered = tmp_path / "student.onnx"
    data = bytearray(exported.model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    from protocol.errors import DataError

    with pytest.raises(DataError, match="tampered"):
        verify_model_file(manifest, tampered)


def test_export_command_with_int8_reports_sizes_accuracy_and_latency(distilled, tmp_path):
    from cloud.data import fashion_mnist
    from simulations.cli import main

    require_fashion_mnist()
    student, vectors, info = distilled
    ten = DistilledStudent(create_student("compact_cnn", 10), 16, 20.0).eval()
    ten_vectors = torch.nn.functional.normalize(torch.randn(10, 16), dim=-1)
    ten_info = DistilledInfo(
        "compact_cnn", tuple(fashion_mnist.CLASS_NAMES), info.normalization, 16, 20.0, "tiny"
    )
    save_distilled(tmp_path / "d.safetensors", ten, ten_vectors, ten_info)
    args = [
        "cloud",
        "export",
        "--student",
        str(tmp_path / "d.safetensors"),
        "--out",
        str(tmp_path / "m"),
        "--int8",
        "--calibration-images",
        "64",
        "--num-test",
        "64",
        "--set",
        f"data.shifted={tmp_path / 'none'}",
    ]
    assert main(args) == 0
    report = json.loads((tmp_path / "m" / "export_report.json").read_text())
    assert report["int8"]["bytes"] < report["fp32"]["bytes"]
    assert report["fp32"]["accuracy_clean"] == report["torch"]["accuracy_clean"]
    assert 0 <= report["int8"]["accuracy_clean"] <= 1
    assert report["fp32"]["ms_per_image_batch1"] > 0
    int8_manifest = load_manifest(tmp_path / "m" / "student.int8.manifest.json")
    assert int8_manifest.quantization == "int8-qdq"
    assert int8_manifest.disabled_optimizers == ["QDQPropagationTransformer"]
    ops = Counter(n.op_type for n in onnx.load(tmp_path / "m" / "student.int8.onnx").graph.node)
    # the convolutions alone: a quantised input and output per Conv, no Q/DQ around the
    # BatchNorm arithmetic the adaptation inputs feed
    assert ops["QuantizeLinear"] <= 2 * ops["Conv"]
    verify_model_file(int8_manifest, tmp_path / "m" / int8_manifest.model_file)
    with np.load(tmp_path / "m" / SAMPLE_FILE) as sample:  # what `cdca device bench` scores
        assert sample["images"].shape == (256, 32, 32, 3)
        assert sample["images"].dtype == np.uint8
        assert len(set(sample["labels"].tolist())) > 5  # a random draw, not the first class
        assert list(sample["class_names"]) == list(fashion_mnist.CLASS_NAMES)


def test_the_cloud_refuses_a_model_folder_exported_from_another_student(exported, distilled):
    import copy

    from cloud.server.models import check_same_student, served_model
    from protocol.errors import DataError

    student, vectors, _ = distilled
    same = DeviceModel(student)
    served = served_model(exported.model.parent, same)
    check_same_student(served, same, vectors)  # the student it came from: accepted
    other = copy.deepcopy(student)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    with pytest.raises(DataError, match="exported from another student"):
        check_same_student(served, DeviceModel(other), vectors)


@pytest.mark.parametrize(("arch", "size"), [("resnet18", 64), ("mobilenet_v3_small", 48)])
def test_every_student_architecture_exports_at_the_projects_image_size(tmp_path, arch, size):
    from cloud.students.preprocess import Normalization

    torch.manual_seed(0)
    student = DistilledStudent(create_student(arch, 5), 16, 20.0).eval()
    vectors = torch.nn.functional.normalize(torch.randn(5, 16), dim=-1)
    info = DistilledInfo(
        arch,
        tuple("abcde"),
        Normalization((0.5,) * 3, (0.25,) * 3),
        16,
        20.0,
        "tiny",
        image_size=size,
    )
    result = export_device_model(student, vectors, info, tmp_path)
    manifest = load_manifest(result.manifest)
    assert manifest.preprocess.image_size == size
    assert manifest.input("x").shape[-2:] == (size, size)
    assert result.parity_max_abs_diff <= PARITY_TOLERANCE

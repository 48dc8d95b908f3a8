"""The benchmark's U-VPA rows: the real ONNX device and the real cloud, batch by batch."""

import numpy as np
import pytest
import torch

from device.runtime import DeviceRuntime
from protocol.config.project import ProjectConfig
from protocol.errors import ConfigError, DataError
from simulations.bench.cloud_device import CloudTeacherMethod, FleetMethod
from simulations.methods import MethodFactory, list_methods
from simulations.peers import PixelModel
from simulations.peers.student import ClassVectorHead
from tests.simulations.conftest import ADAPTATION, TinyTeacher, batches


@pytest.mark.parametrize("delay", [1, 3])
def test_a_prompt_learned_from_batch_t_is_used_from_batch_t_plus_delay(cloud_models, delay):
    method = FleetMethod("uvpa", cloud_models, ADAPTATION, delay)
    learned, applied = [], []
    ingest, apply = method.cloud.ingest, method.agent.apply

    def record_learned(device_id, fields):
        prompt = ingest(device_id, fields)
        if prompt is not None:
            learned.append(method.batch)
        return prompt

    method.cloud.ingest = record_learned
    method.agent.apply = lambda parts: applied.append(method.batch) or apply(parts)
    for pixels in batches(8):
        method.step(pixels)
    assert learned, "the cloud shipped no prompt"
    assert applied == [t + delay for t in learned if t + delay < 8]


def test_the_bench_device_is_the_onnx_device(cloud_models, exported):
    """Before any prompt arrives, the row answers exactly as the exported model does."""
    method = FleetMethod("uvpa", cloud_models, ADAPTATION)
    runtime = DeviceRuntime.load(exported.manifest)
    runtime.set_adaptation(stat_mix=np.ones(1, np.float32))
    pixels = batches(1)[0]
    frames = (pixels * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(method.step(pixels).numpy(), runtime.predict(frames).logits)


def test_costs_count_uploads_within_budget_and_wire_bytes_both_ways(cloud_models):
    method = FleetMethod("uvpa", cloud_models, ADAPTATION)
    for pixels in batches(6):
        assert method.step(pixels).shape == (32, len(cloud_models.class_vectors))
    costs = method.costs()
    assert 0 < costs["upload_fraction"] <= 0.25
    per_frame_up = 3 * 32 * 32  # uint8 frames dominate the uplink
    assert costs["bytes_up_per_1000"] >= costs["upload_fraction"] * 1000 * per_frame_up
    assert costs["bytes_down_per_1000"] > 0 or costs["prompts_shipped"] == 0


def test_synthetic_samples_join_every_fit_and_the_ablation_turns_them_off(cloud_models, distilled):
    method = FleetMethod("uvpa", cloud_models, ADAPTATION)
    for pixels in batches(4):
        method.step(pixels)
    stats = method.cloud.cloud.stats()
    assert stats["updates"] > 0
    assert stats["synthetic_samples"] == 8 * stats["updates"]
    factory = _factory(cloud_models, distilled)
    without = factory.create("uvpa_no_synthetic")
    assert without.cloud.cloud.synthetic is None


def test_cloud_teacher_uploads_every_frame(cloud_models):
    method = CloudTeacherMethod("cloud_teacher", cloud_models)
    for pixels in batches(2):
        method.step(pixels)
    costs = method.costs()
    assert costs["upload_fraction"] == 1.0
    assert costs["bytes_up_per_1000"] > 1000 * 3 * 32 * 32


def _factory(cloud_models, distilled, **kwargs):
    student, vectors, info = distilled
    model = PixelModel(ClassVectorHead(student, vectors), info.normalization)
    project = ProjectConfig(adaptation=ADAPTATION)
    teacher = lambda: TinyTeacher(vectors.shape[1])  # noqa: E731
    return MethodFactory(model, project, cloud_models, teacher=teacher, **kwargs)


def test_factory_builds_every_method_with_its_settings(cloud_models, distilled):
    factory = _factory(cloud_models, distilled)
    for name in list_methods():
        method, pixels = factory.create(name), batches(1)[0]
        if getattr(method, "wants_labels", False):
            method.reveal_labels(pixels, np.zeros(len(pixels), dtype=np.int64))
        assert method.step(pixels).shape == (32, len(cloud_models.class_vectors))
    assert factory.create("uvpa_no_gate").agent.settings.gate == "off"
    assert factory.create("uvpa_random").agent.settings.score == "random"
    assert factory.create("uvpa").agent.settings == ADAPTATION.device
    with pytest.raises(ConfigError, match="distilled student"):
        MethodFactory(factory.model, factory.project, None).check("uvpa")
    with pytest.raises(ConfigError, match="delay"):
        _factory(cloud_models, distilled, delay=0)
    with pytest.raises(ConfigError, match="unknown method"):
        factory.check("uvpa_companion")


def test_label_target_teaches_each_upload_its_revealed_label(cloud_models, distilled):
    method = _factory(cloud_models, distilled).create("uvpa_label_target")
    g = torch.Generator().manual_seed(1)
    revealed = {}
    for pixels in batches(4):
        labels = torch.randint(
            0, len(cloud_models.class_vectors), (len(pixels),), generator=g
        ).numpy()
        method.reveal_labels(pixels, labels)
        frames = (pixels * 255).round().to(torch.uint8).numpy()
        revealed.update({f.tobytes(): int(y) for f, y in zip(frames, labels, strict=True)})
        method.step(pixels)
    [session] = method.cloud.cloud.sessions.values()
    assert session.uploads > 0
    for sample in session.buffer:
        assert int(sample.teacher_logits.argmax()) == revealed[sample.frame.numpy().tobytes()]


def test_label_target_refuses_uploads_whose_labels_were_not_revealed(cloud_models, distilled):
    method = _factory(cloud_models, distilled).create("uvpa_label_target")
    with pytest.raises(DataError, match="reveal_labels"):
        method.step(batches(1)[0])

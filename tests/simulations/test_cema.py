"""CEMA on cdca's device and wire: the edge filter, the cloud's two steps, and the crossed rows."""

import numpy as np
import pytest
import torch

from protocol.config.adaptation import DeviceSettings
from protocol.upload import Upload
from simulations.bench.cloud_device import FleetMethod
from simulations.peers.cema import CemaCloud, CemaSampler, CemaSettings
from tests.simulations.conftest import ADAPTATION, TinyTeacher, batches

STATS = np.ones((2, 4), np.float32)


def logits_for(probabilities):
    return np.log(np.asarray(probabilities, np.float64)).astype(np.float32)


def test_unreliable_frames_never_go_up():
    sampler = CemaSampler(DeviceSettings(detect_shifts=False), 4)
    confident, unsure = [0.97, 0.01, 0.01, 0.01], [0.25, 0.25, 0.25, 0.25]
    decision = sampler.decide(logits_for([unsure, confident, unsure]), STATS)
    assert decision.indices.tolist() == [1]


def test_a_frame_like_the_running_mean_prediction_is_redundant():
    sampler = CemaSampler(DeviceSettings(detect_shifts=False), 4, cosine_margin=0.4)
    class0, class1 = [0.97, 0.01, 0.01, 0.01], [0.01, 0.97, 0.01, 0.01]
    sampler.decide(logits_for([class0] * 4), STATS)  # the mean prediction is now class 0
    decision = sampler.decide(logits_for([class0, class1]), STATS)
    assert decision.indices.tolist() == [1]


def test_the_budget_caps_uploads_and_no_budget_takes_every_frame_that_passes():
    rng = np.random.default_rng(0)
    probs = np.full((64, 4), 0.01)
    probs[np.arange(64), rng.integers(0, 4, 64)] = 0.97
    capped = CemaSampler(DeviceSettings(detect_shifts=False), 4, budget=0.1, cosine_margin=1.1)
    free = CemaSampler(DeviceSettings(detect_shifts=False), 4, cosine_margin=1.1)
    for _ in range(5):
        capped.decide(logits_for(probs), STATS)
        free.decide(logits_for(probs), STATS)
    assert capped.selected <= 0.1 * capped.seen
    assert capped.selected >= 0.1 * capped.seen - 1
    assert free.uploaded_fraction == 1.0  # margin 1.1: nothing is redundant, all are reliable


def uploads(count, size=16, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(count):
        images = rng.integers(0, 256, (size, 32, 32, 3), dtype=np.uint8)
        stats = np.abs(rng.normal(1.0, 0.1, (2, 0))).astype(np.float32)
        yield i, images, stats


def make_upload(cloud_models, i, images, rng):
    k = cloud_models.running_stats.shape[1]
    stats = cloud_models.running_stats.numpy() * rng.uniform(0.8, 1.2, (2, k)).astype(np.float32)
    return Upload(
        batch_id=i,
        images=images,
        uncertainty=np.full(len(images), 0.2, np.float32),
        frame_ids=np.arange(len(images), dtype=np.int64) + 100 * i,
        predicted=np.zeros(len(images), np.int64),
        batch_stats=stats.astype(np.float32),
        shift=False,
        frames_seen=100 * (i + 1),
    )


def test_the_cloud_adapts_its_teacher_and_ships_edge_norm_parameters(cloud_models):
    teacher = TinyTeacher(cloud_models.class_vectors.shape[1])
    before = teacher.norm.weight.detach().clone()
    cloud = CemaCloud(cloud_models, teacher, CemaSettings(batch=8, replay_after=24))
    rng = np.random.default_rng(0)
    upload = make_upload(cloud_models, 0, rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8), rng)
    assert cloud.ingest("d", upload) is None  # 6 < a cloud batch of 8
    assert cloud.idle() is None  # no replay before the history holds replay_after samples
    shipped = None
    for i in range(1, 5):
        images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
        with torch.enable_grad():
            shipped = cloud.ingest("d", make_upload(cloud_models, i, images, rng)) or shipped
    assert shipped is not None
    parts, version = shipped
    assert set(parts) == {"norm_affine"}
    assert parts["norm_affine"].shape == (2, cloud_models.running_stats.shape[1])
    assert np.isfinite(parts["norm_affine"]).all()
    assert np.abs(parts["norm_affine"]).max() > 0
    assert version == cloud.steps
    assert not torch.equal(teacher.norm.weight, before)
    with torch.enable_grad():
        assert cloud.idle() is not None  # now the history is long enough to replay


def test_the_edge_replays_each_uploads_own_statistics(cloud_models):
    cloud = CemaCloud(cloud_models, TinyTeacher(cloud_models.class_vectors.shape[1]))
    rng = np.random.default_rng(1)
    first = make_upload(cloud_models, 0, rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8), rng)
    second = make_upload(cloud_models, 1, rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8), rng)
    cloud.ingest("d", first)
    cloud.ingest("d", second)
    samples = list(cloud.history)
    mixed = cloud._edge_logits([samples[0], samples[3], samples[1]])
    alone = cloud._edge_logits([samples[0], samples[1]])
    torch.testing.assert_close(mixed[[0, 2]], alone)


@pytest.mark.parametrize(
    ("cema_cloud", "cema_filter"), [(True, True), (True, False), (False, True)]
)
def test_cema_parts_plug_into_the_onnx_device(cloud_models, cema_cloud, cema_filter):
    vectors = cloud_models.class_vectors
    cloud = (
        CemaCloud(cloud_models, TinyTeacher(vectors.shape[1]), CemaSettings(batch=8))
        if cema_cloud
        else None
    )
    channels = int(cloud_models.served.manifest.norm_layers[0]["channels"])
    sampler = CemaSampler(ADAPTATION.device, channels, budget=0.25) if cema_filter else None
    method = FleetMethod("cema", cloud_models, ADAPTATION, cloud=cloud, sampler=sampler)
    for pixels in batches(6):
        assert method.step(pixels).shape == (32, len(vectors))
    costs = method.costs()
    assert 0 < costs["upload_fraction"] <= 0.25 + 1 / 32
    assert costs["device_backwards_per_frame"] == 0
    assert not method.wants_labels


def test_cema_settings_from_the_command_line_reach_every_cema_row():
    from protocol.errors import ConfigError
    from simulations.methods import cema_settings

    assert cema_settings({"lr_scale": 1}).lr_scale == 1
    with pytest.raises(ConfigError, match="cema has no setting"):
        cema_settings({"edge_learning_rate": 1})


def test_an_adapting_teacher_answers_first_and_learns_per_full_batch():
    from simulations.peers.cema.teacher import AdaptingTeacher

    vectors = torch.nn.functional.normalize(torch.randn(4, 16), dim=-1)
    module = TinyTeacher(16)
    teacher = AdaptingTeacher(module, vectors, lr=0.5, batch=8)
    pixels = torch.rand(6, 3, 32, 32)
    before = module.norm.weight.detach().clone()
    first = teacher(pixels)
    assert teacher.steps == 0  # 6 < 8: nothing learned yet
    torch.testing.assert_close(first, teacher.logits(pixels))
    teacher(pixels)
    assert teacher.steps == 1
    assert not torch.equal(module.norm.weight, before)

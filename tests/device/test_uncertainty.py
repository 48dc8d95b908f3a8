import numpy as np
import pytest
import torch

from cloud.adaptation import uncertainty as cloud_unc
from device import uncertainty as device_unc


@pytest.fixture
def logits():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(64, 10)) * rng.uniform(0.1, 10, size=(64, 1))).astype(np.float32)


@pytest.mark.parametrize("name", ["entropy", "margin"])
def test_numpy_and_torch_scores_agree(logits, name):
    ours = getattr(device_unc, name)(logits)
    theirs = getattr(cloud_unc, name)(torch.from_numpy(logits)).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_disagreement_parity_and_zero_when_views_agree(logits):
    views = [logits, logits * 0.5, logits[:, ::-1].copy()]
    np.testing.assert_allclose(
        device_unc.disagreement(views),
        cloud_unc.disagreement([torch.from_numpy(v) for v in views]).numpy(),
        atol=1e-6,
    )
    assert np.allclose(device_unc.disagreement([logits, logits]), 0.0)


def test_scores_rank_confident_below_uncertain():
    confident = np.array([[10.0, 0, 0, 0]], np.float32)
    uniform = np.zeros((1, 4), np.float32)
    for score in (device_unc.entropy, device_unc.margin):
        assert score(confident)[0] < 0.05
        assert score(uniform)[0] == pytest.approx(1.0)


def test_perturbed_views_are_uint8_mirror_and_noise():
    images = np.random.default_rng(1).integers(0, 255, (3, 8, 8, 3), dtype=np.uint8)
    mirror, noisy = device_unc.perturbed_views(images, 0.02, np.random.default_rng(2))
    np.testing.assert_array_equal(mirror, images[:, :, ::-1])
    assert noisy.dtype == np.uint8
    assert 0 < np.abs(noisy.astype(int) - images).mean() < 10

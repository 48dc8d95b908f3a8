"""The device's uncertainty scores against their textbook definitions (SciPy)."""

import numpy as np
import pytest
from scipy.special import softmax
from scipy.stats import entropy

from device import uncertainty as device_unc


@pytest.fixture
def logits():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(64, 10)) * rng.uniform(0.1, 10, size=(64, 1))).astype(np.float32)


def test_scores_match_their_definitions(logits):
    probs = softmax(logits.astype(np.float64), axis=1)
    top2 = np.sort(probs, axis=1)[:, -2:]
    np.testing.assert_allclose(
        device_unc.entropy(logits), entropy(probs, axis=1) / np.log(10), atol=1e-6
    )
    np.testing.assert_allclose(device_unc.margin(logits), 1 - (top2[:, 1] - top2[:, 0]), atol=1e-6)


def test_disagreement_is_the_variance_across_views_and_zero_when_they_agree(logits):
    views = [logits, logits * 0.5, logits[:, ::-1].copy()]
    probs = np.stack([softmax(v.astype(np.float64), axis=1) for v in views])
    np.testing.assert_allclose(
        device_unc.disagreement(views), probs.var(axis=0).sum(axis=1), atol=1e-6
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

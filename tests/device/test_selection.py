import numpy as np
import pytest

from device.selection import BudgetSelector, class_balanced, top_k
from device.shift import ShiftDetector, batch_signature
from protocol.errors import ConfigError


def test_top_k_and_class_balance():
    scores = np.array([0.1, 0.9, 0.8, 0.7, 0.2])
    assert top_k(scores, 2).tolist() == [1, 2]
    predictions = np.array([0, 0, 0, 1, 1])
    assert sorted(class_balanced(scores, predictions, 2).tolist()) == [1, 3]


def test_budget_is_never_exceeded_and_prefers_uncertain_frames():
    rng = np.random.default_rng(0)
    selector = BudgetSelector(budget=0.1)
    picked_scores = []
    for _ in range(50):
        scores = rng.random(64)
        picked = selector.select(scores)
        assert selector.selected <= 0.1 * selector.seen + 1e-9
        picked_scores.extend(scores[picked])
    assert selector.uploaded_fraction == pytest.approx(0.1, abs=0.01)
    assert np.mean(picked_scores) > 0.8


def test_random_share_takes_some_confident_frames():
    rng = np.random.default_rng(1)
    selector = BudgetSelector(budget=0.2, random_fraction=0.5, seed=0)
    low = []
    for _ in range(30):
        scores = rng.random(50)
        low.extend(scores[selector.select(scores)] < 0.5)
    assert 0.1 < np.mean(low) < 0.5


def test_bad_budget_is_refused():
    with pytest.raises(ConfigError, match="budget"):
        BudgetSelector(budget=0)


def test_shift_detector_fires_at_a_change_and_not_within_an_environment():
    rng = np.random.default_rng(2)
    detector = ShiftDetector()
    centre_a, centre_b = rng.normal(size=(2, 16)), rng.normal(size=(2, 16))
    fired = []
    for batch in range(40):
        centre = centre_a if batch < 20 else centre_b
        noisy = centre + 0.02 * rng.normal(size=(2, 16))
        stats = np.stack([noisy[0], np.exp(noisy[1])])  # mean, variance
        fired.append(detector.update(batch_signature(stats, 8)))
    assert fired.index(True) == 20
    assert sum(fired) == 1


def test_signature_is_first_channels_mean_and_log_std():
    stats = np.stack([np.arange(6.0), np.full(6, np.e**2)])
    np.testing.assert_allclose(batch_signature(stats, 3), [0, 1, 2, 1, 1, 1])


def test_detector_config_is_checked():
    with pytest.raises(ConfigError, match="ShiftDetector"):
        ShiftDetector(warmup=1)

import numpy as np
import pytest

from device.selection import BudgetSelector, class_balanced, top_k
from device.shift import ShiftDetector
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
    centre_a, centre_b = rng.normal(size=16), rng.normal(size=16)
    fired = []
    for batch in range(40):
        centre = centre_a if batch < 20 else centre_b
        embedding = centre + 0.3 * rng.normal(size=(64, 16))
        entropy = np.full(64, 0.2 if batch < 20 else 0.5)
        fired.append(detector.update(embedding, entropy))
    assert fired.index(True) in (20, 21)
    assert sum(fired) == 1

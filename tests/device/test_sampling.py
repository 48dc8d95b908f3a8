import numpy as np
import pytest

from device.sampling import UncertaintySampler
from protocol.config.adaptation import DeviceSettings as SamplingConfig
from protocol.errors import ConfigError


def stream(rng, batches, shift_at=None, n=64, classes=10, channels=32):
    centre = rng.normal(size=(2, channels))
    for b in range(batches):
        if b == shift_at:
            centre = rng.normal(size=(2, channels))
        noisy = centre + 0.02 * rng.normal(size=(2, channels))
        yield rng.normal(size=(n, classes)) * 3, np.stack([noisy[0], np.exp(noisy[1])])


@pytest.mark.parametrize("score", ["entropy", "margin", "disagreement", "random"])
def test_never_uploads_more_than_the_budget(rng, score):
    sampler = UncertaintySampler(SamplingConfig(budget=0.1, score=score))
    picked = 0
    for logits, embedding in stream(rng, 30):
        views = [logits + rng.normal(size=logits.shape)] if score == "disagreement" else []
        decision = sampler.decide(logits, embedding, views)
        picked += len(decision.indices)
        assert len(decision.scores) == len(decision.indices)
        assert np.all((decision.scores >= 0) & (decision.scores <= 1))
    assert 0 < picked <= 0.1 * 30 * 64
    assert sampler.uploaded_fraction == pytest.approx(picked / (30 * 64))


def test_uncertainty_scoring_prefers_uncertain_frames(rng):
    sampler = UncertaintySampler(
        SamplingConfig(budget=0.1, random_fraction=0.0, class_balance=False)
    )
    logits = np.zeros((64, 10))
    logits[:, 0] = np.linspace(10, 0, 64)  # later frames are less confident
    decision = sampler.decide(logits, np.ones((2, 32)))
    assert decision.indices.min() >= 64 - len(decision.indices) - 1


def test_a_jump_in_the_embeddings_is_reported_as_a_shift(rng):
    sampler = UncertaintySampler()
    flags = [sampler.decide(logits, stats).shift for logits, stats in stream(rng, 12, shift_at=6)]
    assert flags.index(True) == 6
    assert sum(flags) == 1


def test_unknown_score_is_refused():
    with pytest.raises(ConfigError, match="entropy"):
        SamplingConfig(score="vibes")


def test_new_settings_mid_stream_keep_the_budget_count_and_the_shift_detector(rng):
    sampler = UncertaintySampler(SamplingConfig(budget=0.1))
    for logits, stats in stream(rng, 5):
        sampler.decide(logits, stats)
    detector, seen = sampler.detector, sampler.selector.seen
    sampler.reconfigure(SamplingConfig(budget=0.5, score="random"))
    assert (sampler.detector, sampler.selector.seen) == (detector, seen)
    assert (sampler.selector.budget, sampler.selector.random_fraction) == (0.5, 1.0)
    sampler.reconfigure(SamplingConfig(shift_sensitivity=3.0))
    assert sampler.detector is detector
    assert detector.sensitivity == 3.0
    sampler.reconfigure(SamplingConfig(detect_shifts=False))
    assert sampler.detector is None


def test_disagreement_picks_frames_whose_answer_moves_under_perturbation(rng):
    sampler = UncertaintySampler(
        SamplingConfig(
            budget=0.1,
            score="disagreement",
            random_fraction=0.0,
            class_balance=False,
            detect_shifts=False,
        )
    )
    stable = np.eye(10)[rng.integers(0, 10, 64)] * 5
    moved = stable.copy()
    flaky = np.arange(0, 64, 8)
    moved[flaky] = np.roll(moved[flaky], 3, axis=1)  # these frames change class in the view
    chosen = set()
    for _ in range(20):
        chosen |= set(sampler.decide(stable, np.ones((2, 32)), [moved]).indices.tolist())
    assert chosen
    assert chosen <= set(flaky.tolist())
    with pytest.raises(ConfigError, match="perturbed views"):
        sampler.decide(stable, np.ones((2, 32)))

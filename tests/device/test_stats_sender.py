"""A device sends its batch statistics only when the cloud does not already hold close ones."""

import numpy as np

from device.stats_sender import REFRESH_EVERY, StatsSender, stats_distance


def stats(shift_mean=0.0, var_scale=1.0, k=32, seed=0):
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=k) + shift_mean
    var = rng.uniform(0.5, 2.0, size=k) * var_scale
    return np.stack([mean, var]).astype(np.float32)


def test_distance_is_zero_for_the_same_statistics_and_grows_with_the_move():
    base = stats()
    assert stats_distance(base, base) == 0
    near, far = stats(shift_mean=0.02), stats(shift_mean=0.5, var_scale=1.5)
    assert 0 < stats_distance(near, base) < 0.05 < stats_distance(far, base)


def test_sent_first_then_only_when_moved_on_a_shift_or_to_refresh():
    sender = StatsSender(resend_distance=0.15)
    base = stats()
    assert sender.include(base, shift=False)  # the cloud holds nothing yet
    sender.acknowledged(base, included=True)
    assert not sender.include(stats(shift_mean=0.02), shift=False)
    assert sender.include(stats(shift_mean=0.02), shift=True)
    assert sender.include(stats(shift_mean=1.0), shift=False)
    for _ in range(REFRESH_EVERY):
        assert not sender.include(base, shift=False)
        sender.acknowledged(base, included=False)
    assert sender.include(base, shift=False)  # held too long without a refresh


def test_forgetting_or_a_zero_distance_sends_every_time():
    sender = StatsSender(resend_distance=0.15)
    sender.acknowledged(stats(), included=True)
    sender.forget()
    assert sender.include(stats(), shift=False)
    always = StatsSender(resend_distance=0.0)
    always.acknowledged(stats(), included=True)
    assert always.include(stats(shift_mean=1e-3), shift=False)

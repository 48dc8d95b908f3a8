import math

import pytest

from cloud.watchdog import PATIENCE_STEPS, TrainingFailed, TrainingWatch


def run(watch, epochs, steps, loss):
    for epoch in range(epochs):
        for _ in range(steps):
            watch.step(loss)
        watch.end_epoch(epoch)


def test_a_nan_loss_stops_the_run_at_once_with_the_hint():
    watch = TrainingWatch("the teacher", 10, warmup_steps=5, hint="Try a lower --lr.")
    watch.step(2.0)
    with pytest.raises(TrainingFailed, match="diverged.*step 2. Try a lower --lr"):
        watch.step(float("nan"))


def test_a_run_at_chance_after_the_warm_up_is_stopped():
    watch = TrainingWatch("the teacher", 10, warmup_steps=50, hint="Try X.")
    with pytest.raises(TrainingFailed, match=r"not learning.*2\.30.*ln 10.*Try X"):
        run(watch, 10, PATIENCE_STEPS, math.log(10))


def test_chance_during_the_warm_up_a_short_run_or_a_learning_run_is_left_alone():
    warm = TrainingWatch("t", 10, warmup_steps=10_000, hint="")
    run(warm, 5, PATIENCE_STEPS, math.log(10))  # still warming up
    short = TrainingWatch("t", 3, warmup_steps=1, hint="")
    run(short, 3, 3, math.log(3))  # 9 steps: too short to judge
    learning = TrainingWatch("t", 10, warmup_steps=0, hint="")
    run(learning, 5, PATIENCE_STEPS, 0.5 * math.log(10))

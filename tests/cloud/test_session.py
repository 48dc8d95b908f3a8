import pytest
import torch

from cloud.adaptation.session import SessionConfig, UploadBatch
from protocol.errors import ConfigError, DataError


def batch(session, n, shift=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    stats = session.vplu.running_stats.clone()
    return UploadBatch(
        torch.rand(n, 3, 32, 32, generator=g), torch.rand(n, generator=g), stats, shift
    )


def test_no_update_until_the_buffer_is_big_enough_then_prompts_come_back(session):
    assert session.ingest(batch(session, 2)) is None
    assert session.updates == 0
    prompt = None
    for seed in range(1, 4):
        prompt = session.ingest(batch(session, 3, seed=seed)) or prompt
    assert session.updates >= 1
    assert session.uploads == 11
    assert len(session.buffer) == 8  # capped: only the most recent uploads stay
    if session.shipped:
        assert prompt is not None
        assert set(prompt) == set(session.vplu.neutral_prompt())


def test_a_reported_shift_restarts_the_environment_and_ships_the_shared_prompt(session):
    for seed in range(3):
        session.ingest(batch(session, 3, seed=seed))
    prompt = session.ingest(batch(session, 0, shift=True))
    assert prompt is not None
    assert session.shifts == 1
    assert len(session.buffer) == 0
    assert session.bank.environments == 2


def test_a_batch_taken_without_a_fit_is_buffered_and_still_restarts_on_a_shift(session):
    for seed in range(3):
        assert session.ingest(batch(session, 3, seed=seed), fit=False) is None
    assert (session.updates, session.uploads, len(session.buffer)) == (0, 9, 8)
    assert session.ingest(batch(session, 2, shift=True), fit=False) is not None  # the restart
    assert (session.shifts, session.updates, len(session.buffer)) == (1, 0, 2)
    session.ingest(batch(session, 3, seed=4))  # the newest batch fits on all that waited
    assert session.updates == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: UploadBatch(b.pixels[:, :1], b.uncertainty, b.batch_stats), "(n, 3, H, W)"),
        (lambda b: UploadBatch(b.pixels, b.uncertainty[:1], b.batch_stats), "uncertainty"),
        (lambda b: UploadBatch(b.pixels, b.uncertainty, b.batch_stats[:, :5]), "batch_stats must"),
        (lambda b: UploadBatch(b.pixels * float("nan"), b.uncertainty, b.batch_stats), "NaN"),
    ],
)
def test_malformed_uploads_are_refused_and_cost_nothing(session, change, message):
    session.ingest(batch(session, 2))
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        session.ingest(change(batch(session, 3, seed=5)))
    assert len(session.buffer) == 2
    assert session.uploads == 2


def test_session_config_is_checked():
    with pytest.raises(ConfigError):
        SessionConfig(buffer_size=4, min_uploads=8)


def test_a_synthetic_renderer_adds_rendered_clean_images_to_every_fit(session, monkeypatch):
    import numpy as np

    from cloud.adaptation.synthetic import EnvironmentRenderer, SyntheticConfig
    from cloud.data.labelled import LabelledImages

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    clean = LabelledImages(images, rng.integers(0, 4, 20), ("a", "b", "c", "d"), "clean")
    session.synthetic = EnvironmentRenderer(clean, 4, SyntheticConfig(count=6))
    seen = []
    update_many = session.vplu.update_many
    monkeypatch.setattr(
        session.vplu,
        "update_many",
        lambda requests: seen.extend(r.extra for r in requests) or update_many(requests),
    )
    for seed in range(3):
        session.ingest(batch(session, 3, seed=seed))
    assert session.updates == len(seen) >= 1
    x, target = seen[0]
    assert x.shape == (6, 3, 32, 32)
    assert target.shape == (6, 4)
    assert x.min() >= -1
    assert x.max() <= 1

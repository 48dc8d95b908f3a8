"""The adaptation core against a hostile device: absurd statistics, bad fits, one loud device."""

import numpy as np
import pytest
import torch

from cloud.adaptation.aggregate import robust_mean_prompt
from cloud.adaptation.environments import EnvironmentBank, PooledUploads
from cloud.adaptation.guard import PROMPT_LIMIT, prompt_problem, stats_problem
from cloud.adaptation.session import UploadBatch
from cloud.adaptation.vplu import UpdateResult
from protocol.config.adaptation import EnvironmentBankConfig
from protocol.errors import DataError

RUNNING = torch.tensor([[0.0, 1.0, -2.0], [1.0, 0.25, 4.0]])  # (2, K): means, variances


def test_statistics_an_honest_device_could_send_pass():
    honest = RUNNING.clone()
    honest[0] += 3 * RUNNING[1].sqrt()  # three standard deviations off
    honest[1] *= torch.tensor([0.01, 20.0, 0.0])  # a flat channel has variance 0
    assert stats_problem(honest, RUNNING) is None


@pytest.mark.parametrize(
    ("change", "word"),
    [
        (lambda s: s[0].add_(1e6), "means"),  # huge but finite: the poisoning of issue 34
        (lambda s: s[1].mul_(1e9), "variances"),
        (lambda s: s[1].sub_(10), "variances"),  # negative
        (lambda s: s[0].fill_(float("nan")), "NaN"),
        (lambda s: s[1].fill_(float("inf")), "NaN"),
    ],
)
def test_absurd_statistics_are_refused(change, word):
    stats = RUNNING.clone()
    change(stats)
    assert word in stats_problem(stats, RUNNING)
    assert "batch_stats must be" in stats_problem(RUNNING[:, :2], RUNNING)


def test_a_prompt_must_have_the_models_parts_and_be_finite_and_bounded():
    neutral = {"norm_affine": torch.zeros(2, 3)}
    assert prompt_problem({"norm_affine": torch.full((2, 3), 0.5)}, neutral) is None
    bad = {
        "NaN": {"norm_affine": torch.full((2, 3), float("nan"))},
        "over": {"norm_affine": torch.full((2, 3), PROMPT_LIMIT * 2)},
        "is (": {"norm_affine": torch.zeros(2, 4)},
        "not the model's": {"other": torch.zeros(2, 3)},
    }
    for word, prompt in bad.items():
        assert word in prompt_problem(prompt, neutral), word


def test_one_device_cannot_pull_the_shared_prompt_far():
    neutral = {"p": torch.zeros(4)}
    honest = [({"p": torch.full((4,), 0.1 + 0.01 * i)}, 3.0) for i in range(4)]
    alone = robust_mean_prompt(honest, neutral, max_weight=8)
    loud = ({"p": torch.full((4,), 50.0)}, 1e6)  # huge delta, huge claimed weight
    poisoned = robust_mean_prompt([*honest, loud], neutral, max_weight=8)
    nan = ({"p": torch.full((4,), float("nan"))}, 3.0)
    assert torch.isfinite(robust_mean_prompt([*honest, nan], neutral, 8)["p"]).all()
    # capped weight (8 of 20) and clipped to twice the median norm: at most ~0.1 of movement
    assert (poisoned["p"] - alone["p"]).abs().max() < 0.15
    assert robust_mean_prompt([], neutral, 8)["p"].eq(0).all()


def upload(session, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    stats = session.vplu.running_stats.clone()
    return UploadBatch(torch.rand(n, 3, 32, 32, generator=g), torch.rand(n, generator=g), stats)


def test_a_fit_that_returns_nan_is_rejected_and_the_device_keeps_its_prompt(session, monkeypatch):
    before = {k: v.clone() for k, v in session.bank.current().items()}

    def nan_fit(requests):
        poisoned = {k: torch.full_like(v, float("nan")) for k, v in requests[0].shipped.items()}
        return [UpdateResult(True, poisoned, 0.5, 0.9, 0.5)]

    monkeypatch.setattr(session.vplu, "update_many", nan_fit)
    assert session.ingest(upload(session, 6)) is None
    assert session.rejected_fits == 1
    assert all(torch.equal(session.bank.current()[k], before[k]) for k in before)


def test_absurd_statistics_never_reach_the_buffer(session):
    batch = upload(session, 4)
    stats = batch.batch_stats.clone()
    stats[0] += 1e7
    with pytest.raises(DataError, match="means"):
        session.ingest(UploadBatch(batch.pixels, batch.uncertainty, stats))
    assert len(session.buffer) == 0


def pool(n):
    return PooledUploads(
        torch.zeros(n, 3, 2, 2, dtype=torch.uint8),
        torch.zeros(n, 3),
        torch.zeros(n),
        torch.zeros(n, 2, 3),
    )


def test_forgetting_a_device_takes_back_what_it_put_in_the_environment_bank():
    bank = EnvironmentBank(EnvironmentBankConfig(min_evidence=2, pooled_uploads=8))
    prompt = {"p": torch.ones(2)}
    bank.record(np.zeros(2), prompt, 5, pool(3), device_id="mallory")  # only mallory here
    bank.record(np.ones(2), prompt, 5, pool(3), device_id="honest")
    bank.record(np.full(2, 1.01), {"p": torch.full((2,), 9.0)}, 9, pool(2), device_id="mallory")
    assert len(bank.entries) == 2
    assert bank.entries[1].prompt_from == "mallory"  # the longer stay's prompt won
    assert bank.forget("mallory") == 2
    (left,) = bank.entries
    assert left.prompt is None
    assert left.uploads is None
    assert left.evidence == 5
    assert np.allclose(left.signature, 1.0)
    assert list(left.contributors) == ["honest"]

import numpy as np
import pytest
import torch

from cloud.adaptation.environments import EnvironmentBank, PooledUploads
from cloud.adaptation.fleet import FleetCloud
from cloud.adaptation.session import SessionConfig, UploadBatch
from cloud.adaptation.vplu import VPLU, VPLUConfig
from cloud.export.device_model import DeviceModel
from protocol.config.adaptation import (
    AdaptationConfig,
    EnvironmentBankConfig,
    SharingConfig,
    SyntheticConfig,
)
from protocol.errors import ConfigError, DataError


def sharing(bank=None, **flags):
    """What devices share, and when environments match (the rest: defaults, no synthetic)."""
    return AdaptationConfig(
        session=SessionConfig(8, 4),
        sharing=SharingConfig(**flags),
        environment_bank=bank or EnvironmentBankConfig(),
        synthetic=SyntheticConfig(count=0),
    )


def prompt(value):
    return {"norm_affine": torch.full((2, 3), float(value))}


def test_bank_matches_only_close_signatures_and_needs_evidence():
    bank = EnvironmentBank(EnvironmentBankConfig(match_distance=0.1, min_evidence=10))
    bank.record(np.zeros(4), prompt(1), evidence=5)  # too little learned: not kept
    assert bank.entries == []
    bank.record(np.zeros(4), prompt(1), evidence=20)
    assert bank.match(np.full(4, 0.05)).prompt["norm_affine"][0, 0] == 1
    assert bank.match(np.full(4, 0.5)) is None
    assert (bank.lookups, bank.hits) == (2, 1)


def test_revisiting_keeps_the_better_taught_prompt_and_averages_the_signature():
    bank = EnvironmentBank(EnvironmentBankConfig(match_distance=0.1, min_evidence=1))
    bank.record(np.zeros(2), prompt(1), evidence=30)
    bank.record(np.full(2, 0.06), prompt(2), evidence=10)  # shorter stay: prompt kept
    bank.record(np.full(2, 0.02), prompt(3), evidence=50)  # longer stay: prompt replaced
    [entry] = bank.entries
    assert entry.prompt["norm_affine"][0, 0] == 3
    assert entry.evidence == 90
    assert entry.visits == 3
    np.testing.assert_allclose(entry.signature, (0 * 30 + 0.06 * 10 + 0.02 * 50) / 90)


def test_bank_config_is_checked():
    with pytest.raises(ConfigError):
        EnvironmentBankConfig(match_distance=0)
    with pytest.raises(ConfigError):
        EnvironmentBankConfig(pooled_uploads=-1)


def pooled(n, first):
    """n pooled uploads whose uncertainty counts up from ``first`` (to tell them apart)."""
    return PooledUploads(
        torch.zeros(n, 3, 4, 4, dtype=torch.uint8),
        torch.zeros(n, 10),
        torch.arange(first, first + n, dtype=torch.float32),
        torch.zeros(n, 2, 5),
    )


def test_an_environment_pools_the_most_recent_uploads_of_every_stay():
    bank = EnvironmentBank(EnvironmentBankConfig(min_evidence=1, pooled_uploads=5))
    bank.record(np.zeros(2), prompt(1), evidence=3, uploads=pooled(3, 0))
    bank.record(np.zeros(2), prompt(2), evidence=4, uploads=pooled(4, 10))  # same environment
    bank.record(np.ones(2), prompt(3), evidence=2, uploads=None)  # another, nothing to pool
    first, second = bank.entries
    assert first.uploads.uncertainty.tolist() == [1, 2, 10, 11, 12, 13][-5:]
    assert second.uploads is None
    off = EnvironmentBank(EnvironmentBankConfig(min_evidence=1, pooled_uploads=0))
    off.record(np.zeros(2), prompt(1), evidence=3, uploads=pooled(3, 0))
    assert off.entries[0].uploads is None


def test_short_stays_pool_their_uploads_without_keeping_their_prompts():
    bank = EnvironmentBank(EnvironmentBankConfig(min_evidence=10, pooled_uploads=8))
    bank.record(np.zeros(2), prompt(1), evidence=3, uploads=pooled(3, 0))  # passing through
    bank.record(np.zeros(2), prompt(2), evidence=4, uploads=pooled(4, 10))
    [entry] = bank.entries
    assert entry.prompt is None  # neither stay taught enough for its prompt to count
    assert len(entry.uploads) == 7  # but together they left 7 uploads
    bank.record(np.zeros(2), prompt(3), evidence=12, uploads=pooled(2, 20))
    assert entry.prompt["norm_affine"][0, 0] == 3
    bank.record(np.ones(2), prompt(4), evidence=3, uploads=None)  # short, nothing to pool
    assert len(bank.entries) == 1


@pytest.fixture
def fleet(distilled):
    student, vectors, _ = distilled
    model = DeviceModel(student)
    vplu = VPLU(model, vectors, VPLUConfig(steps=2, precision="fp32"))

    def teacher(pixels):
        inputs = model.neutral_inputs(vectors, batch=len(pixels))
        return 3 * model(**{**inputs, "x": pixels * 2 - 1})[0]

    def make(config, **extra):
        return FleetCloud(vplu, teacher, lambda p: p * 2 - 1, config, **extra)

    return make


def upload(cloud, n, stats_shift=0.0, shift=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    stats = cloud.vplu.running_stats.clone()
    stats[0, :4] += stats_shift  # the signature the bank matches on
    return UploadBatch(
        torch.rand(n, 3, 32, 32, generator=g), torch.rand(n, generator=g), stats, shift
    )


def walk(cloud, device, environment, batches=4, first=False):
    """One stay: a shift report (unless first), then uploads from the same environment."""
    out = cloud.ingest(device, upload(cloud, 3, environment, shift=not first, seed=99))
    for seed in range(batches):
        cloud.ingest(device, upload(cloud, 3, environment, seed=seed))
    return out


def test_a_device_entering_an_environment_another_device_left_starts_from_its_prompt(fleet):
    cloud = fleet(sharing(EnvironmentBankConfig(min_evidence=4)))  # no pooling
    walk(cloud, "a", 0.0, first=True)
    walk(cloud, "a", 1.0)  # device a leaves environment 0.0: remembered
    learned = cloud.environments.entries[0].prompt
    walk(cloud, "b", 3.0, first=True)
    start = walk(cloud, "b", 0.0, batches=0)  # b enters 0.0: starts from a's prompt
    assert cloud.starts["bank"] == 1
    torch.testing.assert_close(start["norm_affine"], learned["norm_affine"])
    assert cloud.stats()["bank_hits"] == 1


def test_the_next_device_in_an_environment_fits_on_the_uploads_made_there_before(fleet):
    cloud = fleet(
        sharing(EnvironmentBankConfig(min_evidence=4, pooled_uploads=6), pool_uploads=True)
    )
    walk(cloud, "a", 0.0, first=True)
    a_uploads = cloud.sessions["a"].stay_uploads()
    walk(cloud, "a", 1.0)  # a leaves 0.0 with 8 uploads buffered: the 6 latest are pooled
    pool = cloud.environments.entries[0].uploads
    torch.testing.assert_close(pool.pixels, a_uploads.pixels[-6:])
    torch.testing.assert_close(pool.teacher_logits, a_uploads.teacher_logits[-6:])
    walk(cloud, "b", 3.0, first=True)
    start = walk(cloud, "b", 0.0, batches=0)  # b enters 0.0 with 3 uploads of its own
    session = cloud.sessions["b"]
    assert [s.pooled for s in session.buffer] == [True] * 5 + [False] * 3  # buffer holds 8
    assert session.updates > 0  # enough evidence to refit at once
    assert start is not None
    assert len(session.stay_uploads()) == 3  # only b's own uploads go back to the pool
    # a's pooled frames went in as it sent them: the cloud's input is their normalisation
    torch.testing.assert_close(session.buffer[0].x, pool.pixels[1].float() / 255 * 2 - 1)


def test_pooled_uploads_must_fit_the_device_model(fleet):
    cloud = fleet(sharing())
    session = cloud.session("a")
    session.ingest(upload(cloud, 3))
    with pytest.raises(DataError, match="pooled uploads"):
        session.ingest(upload(cloud, 3, shift=True), pooled=pooled(2, 0))
    assert len(session.buffer) == 3  # nothing changed
    assert session.bank.environments == 1


def test_devices_passing_through_briefly_give_the_next_one_enough_evidence_to_fit(fleet):
    # stays of 3 uploads, under min_uploads 4 and min_evidence 4: alone, nothing is learned
    cloud = fleet(
        sharing(EnvironmentBankConfig(min_evidence=4, pooled_uploads=6), pool_uploads=True)
    )
    for device in ("a", "b"):
        walk(cloud, device, 0.0, batches=0, first=True)
        walk(cloud, device, 1.0, batches=0)  # leaves 0.0 after 3 uploads
    assert cloud.stats()["updates"] == 0
    assert len(cloud.environments.entries[0].uploads) == 6
    start = walk(cloud, "c", 3.0, batches=0, first=True)
    start = walk(cloud, "c", 0.0, batches=0)  # 6 pooled + 3 own: the cloud fits at once
    assert cloud.sessions["c"].updates == 1
    assert start is not None


def test_without_the_bank_a_new_environment_starts_from_the_shared_prompt(fleet):
    cloud = fleet(sharing(environment_bank=False, share_across_devices=False))
    walk(cloud, "a", 0.0, first=True)
    walk(cloud, "a", 1.0)
    walk(cloud, "b", 0.0, first=True)
    walk(cloud, "b", 1.0)
    assert cloud.starts == {"bank": 0, "fleet_shared": 0, "own_shared": 2}
    assert cloud.environments.entries == []


def test_the_fleet_shared_prompt_weighs_devices_by_environments_learned(fleet):
    cloud = fleet(sharing(environment_bank=False))
    walk(cloud, "a", 0.0, first=True)
    walk(cloud, "a", 1.0)
    walk(cloud, "a", 2.0)  # a has finished 2 environments, b none
    cloud.session("b")
    shared = cloud.shared_prompt()
    own = cloud.sessions["a"].bank
    expected = own.neutral["norm_affine"] + own.shared["norm_affine"]
    torch.testing.assert_close(shared["norm_affine"], expected)


def test_every_device_fits_on_synthetic_samples_from_the_fleet_renderer(fleet, monkeypatch):
    from cloud.adaptation.synthetic import EnvironmentRenderer
    from cloud.data.labelled import LabelledImages

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    clean = LabelledImages(images, rng.integers(0, 4, 20), ("a", "b", "c", "d"), "clean")
    renderer = EnvironmentRenderer(clean, 4, SyntheticConfig(count=5))
    cloud = fleet(sharing(), synthetic=renderer)
    extras = []
    update_many = cloud.vplu.update_many
    monkeypatch.setattr(
        cloud.vplu,
        "update_many",
        lambda requests: extras.extend(r.extra for r in requests) or update_many(requests),
    )
    walk(cloud, "a", 0.0, first=True)
    walk(cloud, "b", 2.0, first=True)
    assert cloud.sessions["a"].synthetic is renderer is cloud.sessions["b"].synthetic
    assert len(extras) >= 2
    assert all(x.shape == (5, 3, 32, 32) and target.shape == (5, 4) for x, target in extras)
    assert cloud.stats()["synthetic_samples"] == 5 * len(extras)
    assert fleet(sharing()).session("c").synthetic is None  # uploads only by default


def test_many_devices_ingested_at_once_get_what_each_gets_alone_and_a_bad_batch_only_itself(
    fleet,
):
    from cloud.adaptation.fleet import DeviceBatch

    alone, together = fleet(sharing()), fleet(sharing())
    devices = {"a": 0.0, "b": 1.0, "c": 2.0}
    for seed in range(3):  # fill the buffers the same way
        for device, env in devices.items():
            alone.ingest(device, upload(alone, 3, env, seed=seed))
            together.ingest(device, upload(together, 3, env, seed=seed))
    bad = upload(together, 3, 0.0, seed=5)
    bad = UploadBatch(bad.pixels, bad.uncertainty + 2, bad.batch_stats)  # scores outside [0, 1]
    batches = [DeviceBatch(d, upload(together, 3, env, seed=7)) for d, env in devices.items()]
    outcomes = together.ingest_many([*batches, DeviceBatch("d", bad)])
    assert isinstance(outcomes[-1], DataError)
    assert len(together.sessions["d"].buffer) == 0  # the refused batch changed nothing
    fits_before = together.fits
    for item, outcome in zip(batches, outcomes, strict=False):
        expected = alone.ingest(item.device_id, item.upload)
        assert (outcome is None) == (expected is None)
        session, reference = together.sessions[item.device_id], alone.sessions[item.device_id]
        assert session.updates == reference.updates
        torch.testing.assert_close(
            session.bank.current()["norm_affine"], reference.bank.current()["norm_affine"]
        )
    assert fits_before == alone.fits - 3 + 1  # one pass fitted the three devices
    with pytest.raises(ValueError, match="one batch per device"):
        together.ingest_many([batches[0], batches[0]])

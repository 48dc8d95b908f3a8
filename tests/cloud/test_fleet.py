import numpy as np
import pytest
import torch

from cloud.adaptation.environments import EnvironmentBank, EnvironmentBankConfig
from cloud.adaptation.fleet import FleetCloud, FleetConfig
from cloud.adaptation.session import SessionConfig, UploadBatch
from cloud.adaptation.vplu import VPLU, VPLUConfig
from cloud.export.device_model import DeviceModel
from protocol.errors import ConfigError


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


@pytest.fixture
def fleet(distilled):
    student, vectors, _ = distilled
    model = DeviceModel(student)
    vplu = VPLU(model, vectors, VPLUConfig(steps=2))

    def teacher(pixels):
        inputs = model.neutral_inputs(vectors, batch=len(pixels))
        return 3 * model(**{**inputs, "x": pixels * 2 - 1})[0]

    def make(config):
        return FleetCloud(vplu, teacher, lambda p: p * 2 - 1, SessionConfig(8, 4), fleet=config,
                          signature_channels=4)  # fmt: skip

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
    cloud = fleet(FleetConfig(bank=EnvironmentBankConfig(min_evidence=4)))
    walk(cloud, "a", 0.0, first=True)
    walk(cloud, "a", 1.0)  # device a leaves environment 0.0: remembered
    learned = cloud.environments.entries[0].prompt
    walk(cloud, "b", 3.0, first=True)
    start = walk(cloud, "b", 0.0, batches=0)  # b enters 0.0: starts from a's prompt
    assert cloud.starts["bank"] == 1
    torch.testing.assert_close(start["norm_affine"], learned["norm_affine"])
    assert cloud.stats()["bank_hits"] == 1


def test_without_the_bank_a_new_environment_starts_from_the_shared_prompt(fleet):
    cloud = fleet(FleetConfig(environment_bank=False, share_across_devices=False))
    walk(cloud, "a", 0.0, first=True)
    walk(cloud, "a", 1.0)
    walk(cloud, "b", 0.0, first=True)
    walk(cloud, "b", 1.0)
    assert cloud.starts == {"bank": 0, "fleet_shared": 0, "own_shared": 2}
    assert cloud.environments.entries == []


def test_the_fleet_shared_prompt_weighs_devices_by_environments_learned(fleet):
    cloud = fleet(FleetConfig(environment_bank=False))
    walk(cloud, "a", 0.0, first=True)
    walk(cloud, "a", 1.0)
    walk(cloud, "a", 2.0)  # a has finished 2 environments, b none
    cloud.session("b")
    shared = cloud.shared_prompt()
    own = cloud.sessions["a"].bank
    expected = own.neutral["norm_affine"] + own.shared["norm_affine"]
    torch.testing.assert_close(shared["norm_affine"], expected)

import sqlite3

import numpy as np
import pytest
import torch

from cloud.adaptation.environments import EnvironmentBank, PooledUploads
from cloud.adaptation.prompt_bank import PromptBank
from cloud.server.registry import DeviceRegistry, check_device_id
from cloud.server.storage import (
    Inbox,
    IngestLedger,
    StoredBatch,
    load_bank,
    load_environments,
    save_bank,
    save_environments,
)
from protocol.config.adaptation import EnvironmentBankConfig
from protocol.errors import ConfigError, DataError


def test_registry_keeps_only_token_hashes_and_checks_them(tmp_path):
    registry = DeviceRegistry(tmp_path / "r.sqlite")
    token = registry.enrol("cam-1")
    assert registry.authenticate("cam-1", token)
    assert not registry.authenticate("cam-1", token + "x")
    assert not registry.authenticate("cam-2", token)
    registry.close()
    dump = "\n".join(sqlite3.connect(tmp_path / "r.sqlite").iterdump())
    assert token not in dump


def test_registry_counts_frames_across_device_restarts(tmp_path):
    registry = DeviceRegistry(tmp_path / "r.sqlite")
    registry.enrol("cam-1", "t")
    registry.count_upload("cam-1", 640, 60, 0)
    registry.count_upload("cam-1", 128, 10, 2)  # the device restarted and counts from 0 again
    record = registry.record("cam-1")
    assert (record.frames_seen, record.accepted, record.refused) == (768, 70, 2)
    assert [registry.next_prompt_version("cam-1") for _ in range(2)] == [1, 2]


@pytest.mark.parametrize("bad", ["", "shared", "../etc", "a" * 65, "-x"])
def test_device_ids_are_short_safe_names(bad):
    with pytest.raises(ConfigError):
        check_device_id(bad)


def test_inbox_round_trip_and_stale_temporaries(tmp_path):
    inbox = Inbox(tmp_path)
    batch = StoredBatch(
        "cam-1",
        3,
        np.zeros((2, 32, 32, 3), np.uint8),
        np.ones(2, np.float32),
        np.ones((2, 8), np.float32),
        True,
        640,
    )
    first, second = inbox.put(batch), inbox.put(batch)
    (tmp_path / "000000000009-cam-1.npz.tmp").write_bytes(b"half")
    again = Inbox(tmp_path)  # a restart: temporaries go, order stays
    assert again.pending() == [first, second]
    loaded = again.load(first)
    assert (loaded.device_id, loaded.batch_id, loaded.shift, loaded.frames_seen) == (
        "cam-1",
        3,
        True,
        640,
    )
    again.done(first)
    third = again.put(batch)
    assert third.name > second.name
    assert Inbox.device_of(third) == "cam-1"
    for path in again.pending():
        again.done(path)
    assert Inbox(tmp_path).put(batch).name > third.name  # an empty inbox never reuses a name
    first.write_bytes(b"garbage")
    with pytest.raises(DataError):
        again.load(first)


def test_prompt_bank_survives_a_save_and_refuses_another_model(tmp_path):
    neutral = {"norm_affine": torch.zeros(2, 6)}
    bank = PromptBank(neutral)
    bank.accept({"norm_affine": torch.ones(2, 6)})
    bank.new_environment()
    bank.accept({"norm_affine": torch.full((2, 6), 3.0)})
    save_bank(tmp_path / "b.safetensors", bank, version=7)
    restored, version = load_bank(tmp_path / "b.safetensors", neutral)
    assert version == 7
    assert restored.environments == 2
    assert torch.equal(restored.current()["norm_affine"], bank.current()["norm_affine"])
    with pytest.raises(DataError, match="does not fit"):
        load_bank(tmp_path / "b.safetensors", {"norm_affine": torch.zeros(2, 9)})
    assert load_bank(tmp_path / "none.safetensors", neutral)[1] == 0


def test_ingest_ledger_counts_each_file_once_and_skips_a_torn_line(tmp_path):
    ledger = IngestLedger(tmp_path / "ingested.log")
    assert ledger.files("cam-0") == {}
    ledger.record(tmp_path / "000000000001-cam-0.npz", "cam-0", 6)
    ledger.record(tmp_path / "000000000002-cam-1.npz", "cam-1", 5)
    ledger.record(tmp_path / "000000000001-cam-0.npz", "cam-0", 6)  # re-ingested after a crash
    with open(ledger.path, "a") as handle:
        handle.write("000000000003-cam-0.npz cam-0 1")  # the crash cut "12 ok" short
    ledger.record(tmp_path / "000000000004-cam-0.npz", "cam-0", 7)  # starts on a line of its own
    assert ledger.files("cam-0") == {"000000000001-cam-0.npz": 6, "000000000004-cam-0.npz": 7}
    assert ledger.files("cam-1") == {"000000000002-cam-1.npz": 5}


def test_environment_bank_survives_a_save_and_refuses_another_model(tmp_path):
    neutral = {"norm_affine": torch.zeros(2, 6)}
    bank = EnvironmentBank(EnvironmentBankConfig(min_evidence=1))
    bank.record(np.full(4, 0.5), {"norm_affine": torch.ones(2, 6)}, evidence=30)
    bank.record(np.full(4, 3.0), {"norm_affine": -torch.ones(2, 6)}, evidence=40)
    bank.record(np.full(4, 3.01), {"norm_affine": torch.zeros(2, 6)}, evidence=10)  # a revisit
    pool = PooledUploads(
        torch.randint(0, 255, (5, 3, 4, 4), dtype=torch.uint8),
        torch.randn(5, 10),
        torch.rand(5),
        torch.randn(5, 2, 6),
    )
    bank.record(np.full(4, 0.5), {"norm_affine": torch.ones(2, 6)}, evidence=5, uploads=pool)
    path = tmp_path / "environments.safetensors"
    save_environments(path, bank)
    again = EnvironmentBank(EnvironmentBankConfig(min_evidence=1))
    assert load_environments(tmp_path / "missing.safetensors", again, neutral) == 0
    assert load_environments(path, again, neutral) == 2
    for ours, theirs in zip(bank.entries, again.entries, strict=True):
        np.testing.assert_allclose(ours.signature, theirs.signature)
        torch.testing.assert_close(ours.prompt["norm_affine"], theirs.prompt["norm_affine"])
        assert (ours.evidence, ours.visits) == (theirs.evidence, theirs.visits)
    assert again.entries[1].uploads is None
    for ours, theirs in zip(pool.tensors(), again.entries[0].uploads.tensors(), strict=True):
        torch.testing.assert_close(ours, theirs)  # the pool comes back as it was
    assert again.match(np.full(4, 3.0)).prompt["norm_affine"][0, 0] == -1
    with pytest.raises(DataError, match="move it away"):
        load_environments(path, EnvironmentBank(), {"norm_affine": torch.zeros(2, 7)})
    path.write_bytes(b"not safetensors")
    with pytest.raises(DataError, match="move it away"):
        load_environments(path, EnvironmentBank(), neutral)

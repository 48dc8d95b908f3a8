import logging
import time

import numpy as np

from cloud.server.storage import Inbox, IngestLedger, StoredBatch
from protocol.messages import decode_prompt
from protocol.v1 import cdca_pb2
from tests.system.conftest import start_server, tiny_world
from tests.system.test_wire_errors import K, good_chunks, upload


def upload_three_batches(server):
    """Enough uploads (24 over 3 batches) for the tiny server's first VPLU update."""
    for batch in range(3):
        upload(server, good_chunks(n=8, batch_id=batch, frames_seen=1000 * (batch + 1), seed=batch))


def stored_batch(batch_id, frames_seen, rng):
    """cam-a's 8 random uploads as the server stored them: what a restart finds in the inbox."""
    return StoredBatch(
        "cam-a",
        batch_id,
        rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
        np.full(8, 0.5, np.float32),
        np.abs(rng.normal(size=(2, K))).astype(np.float32),
        False,
        frames_seen,
    )


def wait_until_ingested(state_dir, timeout=30):
    deadline = time.monotonic() + timeout
    while Inbox(state_dir / "inbox").pending() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Inbox(state_dir / "inbox").pending(), "uploads left in the inbox"


def wait_for_prompt(server, known=0, timeout=30):
    stub = server.stub()
    request = cdca_pb2.PromptRequest(device_id="cam-a", known_version=known)
    for prompt in stub.WatchPrompts(request, metadata=server.metadata(), timeout=timeout):
        return prompt
    raise AssertionError("no prompt pushed")


def test_uploads_turn_into_a_pushed_prompt_that_fits_the_model(live_server):
    upload_three_batches(live_server)
    prompt = wait_for_prompt(live_server)
    decoded = decode_prompt(prompt, {"norm_affine": (2, K)})
    assert prompt.version >= 1
    assert prompt.scope == "device"
    assert prompt.created_unix_ms > 0
    assert np.isfinite(decoded.parts["norm_affine"]).all()
    polled = live_server.stub().GetPrompt(
        cdca_pb2.PromptRequest(device_id="cam-a"), metadata=live_server.metadata(), timeout=5
    )
    assert polled.version >= prompt.version
    newer_only = live_server.stub().GetPrompt(
        cdca_pb2.PromptRequest(device_id="cam-a", known_version=polled.version),
        metadata=live_server.metadata(),
        timeout=5,
    )
    assert newer_only.version == 0


def test_a_restart_restores_prompts_and_ingests_uploads_left_on_disk(
    live_server, exported, distilled
):
    upload_three_batches(live_server)
    wait_for_prompt(live_server)
    wait_until_ingested(live_server.state_dir)
    before = live_server.stub().GetPrompt(
        cdca_pb2.PromptRequest(device_id="cam-a"), metadata=live_server.metadata(), timeout=5
    )
    live_server.stop()
    address, shutdown = start_server(tiny_world(exported, distilled), live_server.state_dir)
    try:
        live_server.address = address
        after = live_server.stub().GetPrompt(
            cdca_pb2.PromptRequest(device_id="cam-a"), metadata=live_server.metadata(), timeout=5
        )
    finally:
        shutdown()
    assert after.version == before.version  # nothing new was uploaded: this is the saved bank
    assert after.parts["norm_affine"].data == before.parts["norm_affine"].data
    # an upload that was acknowledged but never ingested (the server died in between)
    Inbox(live_server.state_dir / "inbox").put(stored_batch(9, 5000, np.random.default_rng(5)))
    address, shutdown = start_server(tiny_world(exported, distilled), live_server.state_dir)
    try:
        wait_until_ingested(live_server.state_dir)
    finally:
        shutdown()


def test_a_shift_folds_the_environment_into_the_shared_prompt(
    live_server, exported, distilled, caplog
):
    caplog.set_level(logging.INFO, logger="cdca.cloud")
    upload_three_batches(live_server)
    first = wait_for_prompt(live_server)
    shifted = good_chunks(n=8, batch_id=3, frames_seen=4000, seed=3)
    shifted[0].shift = True
    upload(live_server, shifted)
    wait_until_ingested(live_server.state_dir)
    stub = live_server.stub()
    shared = stub.GetPrompt(
        cdca_pb2.PromptRequest(device_id="shared"),
        metadata=live_server.metadata("cam-b"),
        timeout=5,
    )
    assert shared.scope == "shared"
    assert shared.version == 1  # one environment folded in, from one device
    restarted = stub.GetPrompt(
        cdca_pb2.PromptRequest(device_id="cam-a", known_version=first.version),
        metadata=live_server.metadata(),
        timeout=5,
    )
    assert restarted.environment_id == "env-2"
    # the environment cam-a left is remembered for the fleet, and survives a restart
    assert (live_server.state_dir / "environments.safetensors").is_file()
    live_server.stop()
    address, shutdown = start_server(tiny_world(exported, distilled), live_server.state_dir)
    shutdown()
    assert "restored 1 remembered environments" in caplog.text


def test_a_server_behind_its_device_fits_on_the_newest_waiting_batch_or_after_eight(
    exported, distilled, tmp_path, caplog, monkeypatch
):
    """12 batches queued at start-up (a cloud that fell behind): 2 fits, on batches 8 and 11.

    Batch 8 fits though newer ones wait: a server behind for good would otherwise never fit.
    """
    from cloud.adaptation.vplu import VPLU
    from cloud.server.worker import MAX_BUFFERED_WITHOUT_FIT

    fits = []
    real_update = VPLU.update_many
    monkeypatch.setattr(
        VPLU,
        "update_many",
        lambda self, requests: fits.extend(requests) or real_update(self, requests),
    )
    caplog.set_level(logging.INFO, logger="cdca.cloud")
    state_dir, rng = tmp_path / "state", np.random.default_rng(7)
    inbox = Inbox(state_dir / "inbox")
    for batch_id in range(12):  # 8 uploads each; the tiny cloud fits from 4 buffered uploads
        inbox.put(stored_batch(batch_id, 1000 * (batch_id + 1), rng))
    _, shutdown = start_server(tiny_world(exported, distilled), state_dir)
    try:
        wait_until_ingested(state_dir)
    finally:
        shutdown()
    assert MAX_BUFFERED_WITHOUT_FIT == 8
    assert len(fits) == 2  # one at a time, it would have fitted on every batch
    assert (
        "cam-a: catching up, 8 waiting batches buffered and fitted once on batch 8 (3 newer "
        "still queued)" in caplog.text
    )
    assert (
        "cam-a: catching up, 2 waiting batches buffered and fitted once on batch 11 (0 newer "
        "still queued)" in caplog.text
    )
    assert len(IngestLedger(state_dir / "ingested.log").files("cam-a")) == 12  # none lost


def hold_the_worker(monkeypatch):
    """Every fit pass waits for ``release``; ``entered`` is set once one is waiting."""
    import threading

    from cloud.adaptation.fleet import FleetCloud

    release, entered = threading.Event(), threading.Event()
    real = FleetCloud.ingest_many

    def held(self, batches):
        entered.set()
        release.wait(10)
        return real(self, batches)

    monkeypatch.setattr(FleetCloud, "ingest_many", held)
    return release, entered


def test_a_device_whose_batch_still_waits_is_told_to_hold_back_and_every_batch_is_ingested(
    live_server, monkeypatch
):
    """Back-pressure: while a pass runs, a device's second waiting batch is answered with a pause."""
    release, entered = hold_the_worker(monkeypatch)
    first = upload(live_server, good_chunks(n=8, batch_id=0, frames_seen=1000))
    assert first.upload_pause_ms == 0  # nothing of this device waited
    assert entered.wait(10)  # the worker holds batch 0 in a pass
    second = upload(live_server, good_chunks(n=8, batch_id=1, frames_seen=2000, seed=1))
    third = upload(live_server, good_chunks(n=8, batch_id=2, frames_seen=3000, seed=2))
    assert second.upload_pause_ms == 0  # one batch waiting is normal while a pass runs
    assert third.upload_pause_ms > 0  # two: this device is getting ahead of the cloud
    release.set()
    wait_until_ingested(live_server.state_dir)
    ledger = IngestLedger(live_server.state_dir / "ingested.log").files("cam-a")
    assert sum(ledger.values()) == 24  # every batch ingested


def test_the_device_link_holds_back_uploads_when_the_cloud_asks(live_server, monkeypatch, tmp_path):
    from device.link import CloudLink, LinkConfig, encode_upload
    from device.spool import UploadQueue
    from protocol.upload import Upload
    from tests.system.conftest import TOKENS

    release, entered = hold_the_worker(monkeypatch)
    config = LinkConfig(live_server.address, "cam-a", TOKENS["cam-a"], live_server.manifest_sha256)
    link = CloudLink(config, UploadQueue(tmp_path / "q"), {"norm_affine": (2, K)}, lambda p: None)
    rng = np.random.default_rng(0)

    def queue(batch_id):
        link.queue.put(
            encode_upload(
                Upload(
                    batch_id=batch_id,
                    images=rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8),
                    uncertainty=np.full(4, 0.5, np.float32),
                    frame_ids=np.arange(4) + 64 * batch_id,
                    predicted=np.zeros(4, np.int64),
                    batch_stats=np.abs(rng.normal(size=(2, K))).astype(np.float32),
                    shift=False,
                    frames_seen=1000 * (batch_id + 1),
                )
            )
        )

    queue(0)
    link.start()
    try:
        assert entered.wait(10)  # the worker holds batch 0 in a pass ...
        time.sleep(1.0)  # ... that has run for a second when batches 1 and 2 arrive
        assert not link.holding_back()
        queue(1)
        queue(2)
        assert link.drain(10)
        assert link.stats.pauses == 1  # after batch 2: two of its batches waited
        assert link.holding_back()  # asked to wait about as long as the pass has run
    finally:
        release.set()
        link.close()

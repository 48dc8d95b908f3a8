"""A device with a valid token that is buggy or hostile, against a real server on loopback.

Each class of attack of the untrusted-device threat model: poisoning through absurd
statistics, budget bypass by claimed frame counts, overflow, half-finished and resent
uploads, shift floods, floods that would starve other devices, sizes a client controls,
undecodable bytes, and the authentication details (one answer for unknown and wrong,
strict ``Bearer``, revocation with everything the device contributed).
"""

import threading
import time

import grpc
import numpy as np
import pytest

from cloud.server.registry import DeviceRegistry
from cloud.server.serve import registry_path
from protocol.config.server import LimitsConfig
from protocol.images import UploadEncoding
from protocol.messages import DEVICE_METADATA, TOKEN_METADATA, call_metadata, upload_chunks
from protocol.v1 import cdca_pb2
from tests.system.conftest import TOKENS, registered_server
from tests.system.test_wire_errors import K, good_chunks, status_of, upload


def server_with(exported, distilled, tmp_path, **limits):
    return registered_server(exported, distilled, tmp_path / "state", limits=LimitsConfig(**limits))


def stored_batches(server, device_id):
    """Batches of ``device_id`` the server stored: ingested (ledger) or still in its inbox."""
    ledger = server.state_dir / "ingested.log"
    lines = ledger.read_text().splitlines() if ledger.is_file() else []
    ingested = {line.split()[0] for line in lines if line.split()[1:2] == [device_id]}
    waiting = {p.name for p in (server.state_dir / "inbox").glob(f"*-{device_id}.npz")}
    return ingested | waiting


def wait_until(condition, seconds=30.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_huge_but_finite_statistics_are_refused_before_they_reach_a_fit(live_server):
    chunks = good_chunks()
    stats = np.abs(np.random.default_rng(0).normal(size=(2, K))).astype(np.float32)
    stats[0] += 3e38  # finite float32
    poisoned = upload_chunks(
        "cam-a",
        0,
        np.zeros((4, 32, 32, 3), np.uint8),
        np.full(4, 0.5, np.float32),
        np.arange(4),
        np.zeros(4, np.int64),
        stats,
        shift=True,
        frames_seen=1000,
    )
    code, details = status_of(lambda: upload(live_server, poisoned))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "means" in details
    assert not stored_batches(live_server, "cam-a")
    assert upload(live_server, chunks).accepted == 4  # the device itself still works


def test_claimed_frame_counts_cannot_buy_samples_or_overflow_anything(
    exported, distilled, tmp_path
):
    server = server_with(exported, distilled, tmp_path, sample_burst=40, samples_per_second=1)
    first = upload(server, good_chunks(n=30, frames_seen=2**63 - 1))
    second = upload(server, good_chunks(n=30, batch_id=1, frames_seen=2**64 - 1))
    assert (first.accepted, second.accepted) == (30, 10)  # the server's bucket, not the claim
    with pytest.raises(grpc.RpcError) as caught:  # the bucket is empty: refused before decoding
        upload(server, good_chunks(n=30, batch_id=2, frames_seen=5))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert int(dict(caught.value.trailing_metadata())["retry-after-ms"]) >= 1
    record = DeviceRegistry(registry_path(server.state_dir)).record("cam-a")
    assert record.frames_seen <= 2**62
    assert record.accepted == 40
    server.stop()


def test_a_resent_batch_is_acknowledged_once_and_stored_once(live_server):
    chunks = good_chunks(n=5, frames_seen=1000)
    first, again = upload(live_server, chunks), upload(live_server, chunks)
    assert (first.accepted, again.accepted) == (5, 5)
    assert (first.stored_before, again.stored_before) == (False, True)
    assert len(stored_batches(live_server, "cam-a")) == 1
    record = DeviceRegistry(registry_path(live_server.state_dir)).record("cam-a")
    assert record.accepted == 5


def test_an_upload_without_statistics_uses_the_held_ones_or_is_asked_for_them(live_server):
    bare = good_chunks(n=3, batch_id=5)
    bare[0].ClearField("batch_stats")
    code, details = status_of(lambda: upload(live_server, bare))
    assert code == grpc.StatusCode.ABORTED  # nothing held: the device resends with them
    assert "send them" in details
    assert not stored_batches(live_server, "cam-a")
    assert upload(live_server, good_chunks(n=3, batch_id=6)).accepted == 3
    assert upload(live_server, bare).accepted == 3  # now the held statistics serve
    assert len(stored_batches(live_server, "cam-a")) == 2


def test_a_batch_resent_in_another_encoding_is_still_stored_once(live_server):
    first = upload(live_server, good_chunks(n=5, encoding=UploadEncoding("png")))
    raw = good_chunks(n=5)
    raw[0].ClearField("batch_stats")  # and the held statistics this time
    again = upload(live_server, raw)
    assert (first.stored_before, again.stored_before) == (False, True)
    assert len(stored_batches(live_server, "cam-a")) == 1


def split_chunks(n=4):
    """One batch of ``n`` samples in ``n`` chunks (the last marked last)."""
    (whole,) = good_chunks(n=n)
    stats = np.frombuffer(whole.batch_stats.data, np.float32).reshape(2, K)
    images = np.stack(
        [np.frombuffer(s.image.data, np.uint8).reshape(32, 32, 3) for s in whole.samples]
    )
    return upload_chunks(
        "cam-a",
        0,
        images,
        np.full(n, 0.5, np.float32),
        np.arange(n),
        np.zeros(n, np.int64),
        stats,
        shift=False,
        frames_seen=1000,
        max_chunk_bytes=images[0].nbytes,
    )


def test_a_stream_that_ends_without_its_last_chunk_stores_nothing(live_server):
    chunks = split_chunks()
    assert len(chunks) == 4
    assert chunks[-1].last
    assert not chunks[0].last
    code, details = status_of(lambda: upload(live_server, chunks[:3]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "last" in details
    assert not stored_batches(live_server, "cam-a")
    assert upload(live_server, chunks).accepted == 4


def test_a_stream_cut_off_midway_stores_nothing(live_server):
    release = threading.Event()
    chunks = split_chunks()

    def cut_off_stream():
        yield chunks[0]
        release.wait(10)  # the device "dies" before the stream completes

    future = live_server.stub().Upload.future(
        cut_off_stream(), metadata=live_server.metadata(), timeout=10
    )
    time.sleep(0.5)
    future.cancel()
    release.set()
    time.sleep(0.5)
    assert not stored_batches(live_server, "cam-a")
    assert DeviceRegistry(registry_path(live_server.state_dir)).record("cam-a").accepted == 0


def test_a_shift_flood_is_taken_as_ordinary_uploads_beyond_the_shift_allowance(live_server):
    for batch_id in range(30):  # empty uploads that each claim a new environment
        chunks = upload_chunks(
            "cam-a",
            batch_id,
            np.zeros((0, 32, 32, 3), np.uint8),
            np.zeros(0, np.float32),
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
            np.abs(np.ones((2, K), np.float32)),
            shift=True,
            frames_seen=batch_id,
        )
        upload(live_server, chunks)
    assert len(stored_batches(live_server, "cam-a")) <= LimitsConfig().shift_burst + 1


def test_a_flood_from_one_device_does_not_delay_another_devices_prompt(
    exported, distilled, tmp_path
):
    server = server_with(exported, distilled, tmp_path, samples_per_second=1e6, sample_burst=10**6)
    stub = server.stub()
    flood = [  # cam-b floods first, all at once
        stub.Upload.future(
            iter(good_chunks("cam-b", n=64, batch_id=b, frames_seen=10**6, seed=b)),
            metadata=server.metadata("cam-b"),
            timeout=30,
        )
        for b in range(40)
    ]
    for call in flood:
        call.result()
    served_before = len(ledger(server))
    upload(server, good_chunks("cam-a", n=16, frames_seen=1000))
    assert wait_until(lambda: "cam-a" in ledger(server))
    order = ledger(server)
    server.stop()
    # in the worker's own order: cam-a's batch came after at most a couple of cam-b's, not
    # after the whole flood (in arrival order it would have waited for all that was left)
    assert order.index("cam-a") - served_before <= 2


def ledger(server):
    """The devices of the batches the worker finished, in its order (its ingest ledger)."""
    path = server.state_dir / "ingested.log"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [line.split()[1] for line in lines if len(line.split()) == 4]


def test_a_full_inbox_says_resource_exhausted_with_a_retry_hint(exported, distilled, tmp_path):
    server = server_with(exported, distilled, tmp_path, inbox_bytes_per_device=1024)
    with pytest.raises(grpc.RpcError) as caught:
        upload(server, good_chunks(n=4))
    err = caught.value
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "retry in" in err.details()
    assert dict(err.trailing_metadata())["retry-after-ms"] == "5000"
    assert not stored_batches(server, "cam-a")
    server.stop()


def test_sizes_a_client_controls_are_bounded(live_server):
    empty = cdca_pb2.UploadChunk(device_id="cam-a", batch_id=0, frames_seen=1)
    empty.batch_stats.CopyFrom(good_chunks()[0].batch_stats)
    chunks = [empty] + [cdca_pb2.UploadChunk(device_id="cam-a", batch_id=0)] * 300
    code, details = status_of(lambda: upload(live_server, chunks))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "chunks" in details
    long_id = "x" * 10_000
    code, details = status_of(lambda: upload(live_server, good_chunks(device_id=long_id)))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert len(details) < 300
    # under gRPC's own metadata limit (8 KiB, beyond which it refuses calls at random itself)
    metadata = ((DEVICE_METADATA, long_id[:4000]), (TOKEN_METADATA, "Bearer x"))
    code, details = status_of(lambda: upload(live_server, good_chunks(), metadata))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert long_id[:100] not in details


def test_undecodable_bytes_get_invalid_argument(live_server):
    channel = grpc.insecure_channel(live_server.address)
    for method in ("Register", "GetPrompt"):
        call = channel.unary_unary(f"/cdca.v1.CloudAdaptation/{method}")
        code, details = status_of(
            lambda c=call: c(b"\xff\xff\xff", metadata=live_server.metadata(), timeout=5)
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (method, details)
    stream = channel.stream_unary("/cdca.v1.CloudAdaptation/Upload")
    code, _ = status_of(
        lambda: stream(iter([b"\x0a\xff"]), metadata=live_server.metadata(), timeout=5)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_device_and_wrong_token_get_the_same_answer_and_bearer_is_strict(live_server):
    request = cdca_pb2.PromptRequest(device_id="cam-a")
    stub = live_server.stub()
    answers = [
        status_of(lambda m=m: stub.GetPrompt(request, metadata=m, timeout=5))
        for m in (
            ((DEVICE_METADATA, "cam-z"), (TOKEN_METADATA, "Bearer x")),
            ((DEVICE_METADATA, "cam-a"), (TOKEN_METADATA, "Bearer x")),
            ((DEVICE_METADATA, "cam-a"), (TOKEN_METADATA, TOKENS["cam-a"])),
        )  # no "Bearer "
    ]
    assert {code for code, _ in answers} == {grpc.StatusCode.UNAUTHENTICATED}
    assert answers[0][1] == answers[1][1]
    assert "Bearer" in answers[2][1]


def test_a_revoked_device_is_refused_and_forgotten_with_all_it_contributed(live_server):
    for batch_id in range(3):
        upload(live_server, good_chunks(n=8, batch_id=batch_id, seed=batch_id))
    bank = live_server.state_dir / "prompts" / "cam-a.safetensors"
    assert wait_until(bank.is_file)
    registry = DeviceRegistry(registry_path(live_server.state_dir))
    registry.revoke("cam-a", forget=True)
    code, _ = status_of(lambda: upload(live_server, good_chunks(batch_id=9)))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert wait_until(lambda: not bank.exists() and not registry.pending_forgets())
    assert upload(live_server, good_chunks("cam-b"), live_server.metadata("cam-b")).accepted == 4


def test_an_expired_token_gets_the_same_answer_as_a_wrong_one(live_server):
    registry = DeviceRegistry(registry_path(live_server.state_dir))
    registry.enrol("cam-old", "token-old", ttl_days=1e-9)  # expired at once
    request = cdca_pb2.PromptRequest(device_id="cam-old")
    stub = live_server.stub()
    expired = status_of(
        lambda: stub.GetPrompt(request, metadata=call_metadata("cam-old", "token-old"), timeout=5)
    )
    wrong = status_of(
        lambda: stub.GetPrompt(request, metadata=call_metadata("cam-a", "nope"), timeout=5)
    )
    assert expired == wrong
    assert expired[0] == grpc.StatusCode.UNAUTHENTICATED

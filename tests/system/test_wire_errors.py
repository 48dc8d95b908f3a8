import grpc
import numpy as np
import pytest

from protocol.images import UploadEncoding
from protocol.messages import call_metadata, upload_chunks
from protocol.tensors import encode
from protocol.v1 import cdca_pb2

K = 352  # normalisation channels of the tiny exported student


RAW = UploadEncoding("raw", stats_dtype="float32")  # tests below read the pixels back


def good_chunks(device_id="cam-a", n=4, batch_id=0, frames_seen=1000, seed=0, encoding=RAW):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    stats = np.abs(rng.normal(size=(2, K))).astype(np.float32)
    return upload_chunks(
        device_id,
        batch_id,
        images,
        np.full(n, 0.5, np.float32),
        np.arange(n),
        np.zeros(n, np.int64),
        stats,
        shift=False,
        frames_seen=frames_seen,
        encoding=encoding,
    )


def status_of(call):
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


def upload(server, chunks, metadata=None):
    return server.stub().Upload(iter(chunks), metadata=metadata or server.metadata(), timeout=10)


def test_bad_uploads_get_invalid_argument_and_the_server_keeps_serving(live_server):
    wrong_dtype = good_chunks()
    wrong_dtype[0].samples[0].image.CopyFrom(encode(np.zeros((32, 32, 3), np.float32)))
    wrong_shape = good_chunks()
    wrong_shape[0].samples[1].image.CopyFrom(encode(np.zeros((28, 28, 3), np.uint8)))
    short_data = good_chunks()
    short_data[0].samples[0].image.data = b"\0" * 10
    nan_stats = good_chunks()
    nan_stats[0].batch_stats.CopyFrom(encode(np.full((2, K), np.nan, np.float32)))
    bad_score = good_chunks()
    bad_score[0].samples[0].uncertainty = float("nan")
    cases = {
        "dtype": wrong_dtype,
        "shape": wrong_shape,
        "bytes": short_data,
        "NaN": nan_stats,
        "uncertainty": bad_score,
    }
    for word, chunks in cases.items():
        code, details = status_of(lambda chunks=chunks: upload(live_server, chunks))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (word, details)
        assert details
    summary = upload(live_server, good_chunks("cam-b"), live_server.metadata("cam-b"))
    assert summary.accepted == 4


def test_identity_is_checked_on_every_call(live_server):
    stub = live_server.stub()
    request = cdca_pb2.RegisterRequest(
        device_id="cam-a", protocol_version=1, model_sha256=live_server.manifest_sha256
    )
    cases = {
        "unknown device": (
            call_metadata("cam-z", "x"),
            grpc.StatusCode.UNAUTHENTICATED,
            "not accepted",
        ),
        "bad token": (
            call_metadata("cam-a", "wrong"),
            grpc.StatusCode.UNAUTHENTICATED,
            "not accepted",
        ),
        "no metadata": ((), grpc.StatusCode.UNAUTHENTICATED, "metadata"),
        "someone else": (live_server.metadata("cam-b"), grpc.StatusCode.PERMISSION_DENIED, "cam-a"),
    }
    for name, (metadata, expected, word) in cases.items():
        code, details = status_of(lambda m=metadata: stub.Register(request, metadata=m, timeout=5))
        assert code == expected, name
        assert word in details, (name, details)
    assert stub.Register(request, metadata=live_server.metadata(), timeout=5).protocol_version == 1


def test_version_and_model_mismatch_are_failed_precondition(live_server):
    stub = live_server.stub()
    old = cdca_pb2.RegisterRequest(
        device_id="cam-a", protocol_version=7, model_sha256=live_server.manifest_sha256
    )
    code, details = status_of(
        lambda: stub.Register(old, metadata=live_server.metadata(), timeout=5)
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "protocol version 7" in details
    other_model = cdca_pb2.RegisterRequest(
        device_id="cam-a", protocol_version=1, model_sha256="ab" * 32
    )
    code, details = status_of(
        lambda: stub.Register(other_model, metadata=live_server.metadata(), timeout=5)
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "download" in details


def test_oversize_messages_are_refused_by_grpc(live_server):
    chunks = good_chunks(n=4)
    chunks[0].samples[0].image.data = b"\0" * (5 * 1024 * 1024)  # over the 4 MiB default cap
    code, _ = status_of(lambda: upload(live_server, chunks))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert upload(live_server, good_chunks()).accepted == 4


def test_uploads_need_a_registration_with_the_served_model(live_server):
    bad = cdca_pb2.RegisterRequest(device_id="cam-a", protocol_version=1, model_sha256="ab" * 32)
    with pytest.raises(grpc.RpcError):
        live_server.stub().Register(bad, metadata=live_server.metadata(), timeout=5)
    assert upload(live_server, good_chunks()).accepted == 4  # the refused call changed nothing
    from cloud.server.registry import DeviceRegistry

    registry = DeviceRegistry(live_server.state_dir / "registry.sqlite")
    registry.enrol("cam-c", "token-c")
    registry.close()
    code, details = status_of(
        lambda: upload(live_server, good_chunks("cam-c"), call_metadata("cam-c", "token-c"))
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "register" in details


def test_uploads_cannot_name_another_device_or_mix_batches(live_server):
    code, _ = status_of(lambda: upload(live_server, good_chunks("cam-b")))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    first, second = good_chunks(batch_id=1)[0], good_chunks(batch_id=2)[0]
    first.last = False
    code, details = status_of(lambda: upload(live_server, [first, second]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "batch_id" in details
    code, details = status_of(lambda: upload(live_server, good_chunks(batch_id=3) * 2))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "after the one marked last" in details


def test_a_device_reads_only_its_own_and_the_shared_prompts(live_server):
    stub = live_server.stub()
    request = cdca_pb2.PromptRequest(device_id="cam-b")
    code, _ = status_of(lambda: stub.GetPrompt(request, metadata=live_server.metadata(), timeout=5))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    watch = stub.WatchPrompts(request, metadata=live_server.metadata(), timeout=5)
    code, _ = status_of(lambda: next(iter(watch)))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    shared = stub.GetPrompt(
        cdca_pb2.PromptRequest(device_id="shared"), metadata=live_server.metadata(), timeout=5
    )
    assert shared.version == 0  # nothing learned yet: no newer shared prompt than "none"


def test_the_upload_budget_is_enforced_by_the_server(live_server):
    # 100 frames seen at a 0.1 budget + 16 slack: 26 uploads at most
    first = upload(live_server, good_chunks(n=20, frames_seen=100))
    second = upload(live_server, good_chunks(n=20, batch_id=1, frames_seen=100))
    assert (first.accepted, first.refused_over_budget) == (20, 0)
    assert (second.accepted, second.refused_over_budget) == (6, 14)

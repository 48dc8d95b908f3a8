"""Property-based fuzzing of every RPC and of the model manifest (hypothesis, 1,000 cases each).

Every case must end in OK or a deliberate status (never UNKNOWN or INTERNAL, which mean an
unhandled exception) with details of bounded length, the server must keep serving after
each, and no caller may read another device's prompt. The cases reach the server's limits:
ids of 10,000 characters, frame counts up to 2^64-1, huge but finite statistics, streams
with and without their last chunk, and bytes that are no message at all. Manifest text,
whatever it is, loads or raises ``CdcaError``.
"""

import contextlib
import json

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.errors import CdcaError
from protocol.messages import call_metadata
from protocol.v1 import cdca_pb2
from tests.system.conftest import TOKENS

CASES = settings(
    max_examples=1000,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
DELIBERATE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED,  # an upload without statistics the server does not hold
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    "client refused",
}

device_ids = st.sampled_from(
    ["cam-a", "cam-b", "cam-z", "", "shared", "../etc", "cam-a\x00", "x" * 10_000]
)
identities = st.one_of(
    st.tuples(st.sampled_from(list(TOKENS)), st.just(None)),  # a real device, its own token
    st.tuples(device_ids, st.text(max_size=12)),  # anyone with any token
    st.just(None),  # no metadata at all
)
dtypes = st.sampled_from(["uint8", "float32", "float16", "int64", "complex128", "", "object"])
tensors = st.builds(
    lambda dtype, shape, data: cdca_pb2.Tensor(dtype=dtype, shape=shape, data=data),
    dtypes,
    st.lists(st.integers(-2, 600), max_size=4),
    st.binary(max_size=4096),
)
good_image = cdca_pb2.Tensor(dtype="uint8", shape=[32, 32, 3], data=bytes(32 * 32 * 3))
K = 352  # normalisation channels of the tiny student
statistics = st.builds(  # the right shape and dtype, any finite or non-finite values
    lambda value: cdca_pb2.Tensor(
        dtype="float32", shape=[2, K], data=np.full((2, K), value, np.float32).tobytes()
    ),
    st.floats(width=32, allow_nan=True, allow_infinity=True),
)
samples = st.builds(
    lambda image, score, frame, cls: cdca_pb2.Sample(
        image=image, uncertainty=score, frame_id=frame, predicted_class=cls
    ),
    st.one_of(st.just(good_image), tensors),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.integers(0, 2**64 - 1),
    st.integers(-(2**31), 2**31 - 1),
)
chunks = st.builds(
    lambda device, batch, sample_list, stats, shift, seen, last: cdca_pb2.UploadChunk(
        device_id=device,
        batch_id=batch,
        samples=sample_list,
        shift=shift,
        frames_seen=seen,
        last=last,
        **({"batch_stats": stats} if stats is not None else {}),
    ),
    device_ids,
    st.integers(0, 2**64 - 1),
    st.lists(samples, max_size=3),
    st.one_of(st.none(), tensors, statistics),
    st.booleans(),
    st.integers(0, 2**64 - 1),
    st.booleans(),
)


def metadata(identity):
    if identity is None:
        return ()
    device, token = identity
    return call_metadata(device, TOKENS[device] if token is None else token)


CLIENT_REFUSED = "client refused"  # gRPC's client would not even send it (e.g. NUL in metadata)


def outcome(call):
    try:
        return grpc.StatusCode.OK, call()
    except grpc.RpcError as err:
        failure = err
    except ValueError:
        return CLIENT_REFUSED, None
    details = failure.details() or ""
    if failure.code() == grpc.StatusCode.INTERNAL and "metadata" in details.lower():
        return CLIENT_REFUSED, None
    assert len(details) < 1000, "an error echoes a client's value unbounded"
    return failure.code(), None


def assert_still_serving(server):
    request = cdca_pb2.PromptRequest(device_id="cam-b")
    server.stub().GetPrompt(request, metadata=server.metadata("cam-b"), timeout=10)


@CASES
@given(
    identity=identities,
    device=device_ids,
    version=st.integers(0, 2**32 - 1),
    sha=st.text(max_size=70),
    labels=st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
)
def test_fuzz_register(live_server, identity, device, version, sha, labels):
    request = cdca_pb2.RegisterRequest(
        device_id=device, protocol_version=version, model_sha256=sha, labels=labels
    )
    code, _ = outcome(
        lambda: live_server.stub().Register(request, metadata=metadata(identity), timeout=10)
    )
    assert code in DELIBERATE


@CASES
@given(identity=identities, parts=st.lists(chunks, min_size=1, max_size=3))
def test_fuzz_upload(live_server, identity, parts):
    code, _ = outcome(
        lambda: live_server.stub().Upload(iter(parts), metadata=metadata(identity), timeout=10)
    )
    assert code in DELIBERATE
    if code == grpc.StatusCode.OK:
        assert identity is not None
        assert all(
            p.device_id in ("", identity[0]) for p in parts
        )  # nobody uploads as someone else


@CASES
@given(identity=identities, device=device_ids, known=st.integers(0, 2**64 - 1))
def test_fuzz_get_prompt_never_leaks_another_devices_prompt(live_server, identity, device, known):
    request = cdca_pb2.PromptRequest(device_id=device, known_version=known)
    code, prompt = outcome(
        lambda: live_server.stub().GetPrompt(request, metadata=metadata(identity), timeout=10)
    )
    assert code in DELIBERATE
    if code == grpc.StatusCode.OK:
        assert device in (
            "",
            identity[0],
            "shared",
        )  # your own ("" = the caller), or the shared one
        assert prompt.scope in ("", "device", "shared")


@CASES
@given(identity=identities, device=device_ids, known=st.integers(0, 2**64 - 1))
def test_fuzz_watch_prompts(live_server, identity, device, known):
    request = cdca_pb2.PromptRequest(device_id=device, known_version=known)

    def first_message():
        stream = live_server.stub().WatchPrompts(request, metadata=metadata(identity), timeout=0.2)
        return next(iter(stream), None)

    code, _ = outcome(first_message)
    assert code in DELIBERATE
    if code == grpc.StatusCode.OK:
        assert device in ("", identity[0], "shared")


@CASES
@given(identity=identities, device=device_ids)
def test_fuzz_download_model(live_server, identity, device):
    request = cdca_pb2.ModelRequest(device_id=device)

    def first_chunk():
        return next(
            iter(live_server.stub().DownloadModel(request, metadata=metadata(identity), timeout=10))
        )

    code, chunk = outcome(first_chunk)
    assert code in DELIBERATE
    if code == grpc.StatusCode.OK:
        assert identity is not None
        assert device in ("", identity[0])
        assert "/" not in chunk.file_name


@CASES
@given(
    identity=identities,
    method=st.sampled_from(["Register", "GetPrompt", "Upload"]),
    data=st.binary(max_size=64),
)
def test_fuzz_raw_bytes_get_a_deliberate_status(live_server, identity, method, data):
    channel = grpc.insecure_channel(live_server.address)
    path = f"/cdca.v1.CloudAdaptation/{method}"
    if method == "Upload":
        call = channel.stream_unary(path)
        code, _ = outcome(lambda: call(iter([data]), metadata=metadata(identity), timeout=10))
    else:
        code, _ = outcome(
            lambda: channel.unary_unary(path)(data, metadata=metadata(identity), timeout=10)
        )
    channel.close()
    assert code in DELIBERATE


def test_the_server_still_serves_after_every_fuzz_case(live_server):
    # the fuzz tests above each share one server across 1,000 cases; here, after a burst of
    # the worst ones, a well-formed call still gets its answer
    for _ in range(50):
        outcome(
            lambda: live_server.stub().Upload(
                iter([cdca_pb2.UploadChunk(device_id="cam-a")]),
                metadata=live_server.metadata(),
                timeout=10,
            )
        )
    assert_still_serving(live_server)


manifest_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=20,
)


@CASES
@given(
    data=st.one_of(
        st.binary(max_size=300),
        manifest_values.map(lambda v: json.dumps(v).encode()),
        st.dictionaries(
            st.sampled_from(
                [
                    "format",
                    "model_file",
                    "sha256",
                    "inputs",
                    "outputs",
                    "preprocess",
                    "class_names",
                    "norm_layers",
                    "defaults_file",
                ]
            ),
            manifest_values,
            max_size=9,
        ).map(lambda v: json.dumps(v).encode()),
    )
)
def test_fuzz_manifest_loads_or_gives_a_clean_error(tmp_path_factory, data):
    from protocol.manifest import load_manifest

    path = tmp_path_factory.mktemp("manifest") / "student.manifest.json"
    path.write_bytes(data)
    with contextlib.suppress(CdcaError):  # a clean, explained refusal is fine; anything else fails
        load_manifest(path)


def test_a_tampered_model_file_is_refused(exported, tmp_path):
    import shutil

    from device.runtime import DeviceRuntime

    folder = tmp_path / "model"
    shutil.copytree(exported.model.parent, folder)
    model = folder / exported.model.name
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(CdcaError, match="SHA-256|sha256|hash"):
        DeviceRuntime.load(folder / exported.manifest.name)

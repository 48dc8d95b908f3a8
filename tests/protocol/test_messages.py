import numpy as np
import pytest

from protocol.images import UploadEncoding
from protocol.messages import (
    PROTOCOL_VERSION,
    ProtocolError,
    check_protocol_version,
    decode_prompt,
    prompt_message,
)
from protocol.tensors import TensorError, encode

SHAPES = {"norm_affine": (2, 8), "prompt": (1, 3, 4, 4)}


def test_prompt_round_trip():
    parts = {"norm_affine": np.linspace(-1, 1, 16, dtype=np.float32).reshape(2, 8)}
    decoded = decode_prompt(prompt_message(parts, version=7, environment_id="fog"), SHAPES)
    assert decoded.version == 7
    assert decoded.environment_id == "fog"
    np.testing.assert_array_equal(decoded.parts["norm_affine"], parts["norm_affine"])


@pytest.mark.parametrize(
    ("parts", "error", "match"),
    [
        ({"norm_affine": np.full((2, 8), np.nan, np.float32)}, TensorError, "NaN"),
        ({"norm_affine": np.zeros((2, 9), np.float32)}, TensorError, "expected shape"),
        ({"temperature": np.zeros(1, np.float32)}, ProtocolError, "not a model input"),
    ],
)
def test_bad_prompts_are_refused(parts, error, match):
    with pytest.raises(error, match=match):
        decode_prompt(prompt_message(parts, version=1), SHAPES)


def test_prompt_parts_must_be_float32():
    message = prompt_message({}, version=1)
    message.parts["norm_affine"].CopyFrom(encode(np.zeros((2, 8), np.uint8)))
    with pytest.raises(TensorError, match="float32"):
        decode_prompt(message, SHAPES)


def test_other_protocol_versions_are_refused_with_a_hint():
    check_protocol_version(PROTOCOL_VERSION)
    with pytest.raises(ProtocolError, match="upgrade"):
        check_protocol_version(PROTOCOL_VERSION + 1)


def upload(n=5, **kwargs):
    from protocol.messages import upload_chunks

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, 8, 8, 3), dtype=np.uint8)
    chunks = upload_chunks(
        "cam-1",
        3,
        images,
        np.linspace(0, 1, n, dtype=np.float32),
        np.arange(n),
        np.zeros(n, int),
        np.ones((2, 6), np.float32),
        shift=True,
        frames_seen=640,
        **kwargs,
    )
    return images, chunks


def test_large_batches_are_chunked_and_reassemble():
    from protocol.messages import decode_upload

    images, chunks = upload(n=5, max_chunk_bytes=2 * 8 * 8 * 3)
    assert len(chunks) == 3
    decoded = [decode_upload(c, (8, 8, 3), (2, 6)) for c in chunks]
    np.testing.assert_array_equal(np.concatenate([d.images for d in decoded]), images)
    assert decoded[0].batch_stats is not None
    assert decoded[1].batch_stats is None
    assert all(d.shift and d.frames_seen == 640 and d.device_id == "cam-1" for d in decoded)


@pytest.mark.parametrize(
    ("spoil", "match"),
    [
        (
            lambda c: c.samples[0].image.CopyFrom(encode(np.zeros((4, 4, 3), np.uint8))),
            "expected shape",
        ),
        (lambda c: setattr(c.samples[1], "uncertainty", float("nan")), "finite"),
        (
            lambda c: c.batch_stats.CopyFrom(encode(np.full((2, 6), np.inf, np.float32))),
            "NaN or Inf",
        ),
    ],
)
def test_bad_uploads_are_refused(spoil, match):
    from protocol.messages import decode_upload

    _, chunks = upload(encoding=UploadEncoding("raw", stats_dtype="float32"))
    spoil(chunks[0])
    with pytest.raises((TensorError, ProtocolError), match=match):
        decode_upload(chunks[0], (8, 8, 3), (2, 6))

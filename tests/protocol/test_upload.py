"""The typed upload: one value for the gRPC chunks, the device's queue and Flower's records."""

import numpy as np
import pytest

from protocol.messages import ProtocolError, decode_upload
from protocol.upload import Upload


def an_upload(n: int = 3) -> Upload:
    rng = np.random.default_rng(0)
    return Upload(
        batch_id=7,
        images=rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8),
        uncertainty=rng.random(n).astype(np.float32),
        frame_ids=np.arange(n, dtype=np.int64) + 100,
        predicted=np.arange(n, dtype=np.int64) % 2,
        batch_stats=rng.random((2, 5)).astype(np.float32),
        shift=True,
        frames_seen=128,
    )


def test_arrays_round_trip_every_field():
    upload = an_upload()
    again = Upload.from_arrays(upload.arrays())
    assert (again.batch_id, again.shift, again.frames_seen) == (7, True, 128)
    for name in ("images", "uncertainty", "frame_ids", "predicted", "batch_stats"):
        np.testing.assert_array_equal(getattr(again, name), getattr(upload, name))


def test_chunks_decode_to_the_same_upload_and_count_their_bytes():
    upload = an_upload()
    chunks = upload.chunks("d1", max_chunk_bytes=2 * 8 * 8 * 3)
    assert [chunk.last for chunk in chunks] == [False, True]
    first = decode_upload(chunks[0], (8, 8, 3), (2, 5))
    np.testing.assert_array_equal(first.images, upload.images[:2])
    np.testing.assert_allclose(first.batch_stats, upload.batch_stats, rtol=1e-3)  # float16
    assert upload.wire_bytes("d1") == sum(c.ByteSize() for c in upload.chunks("d1"))


def test_an_upload_missing_a_field_says_which():
    arrays = an_upload().arrays()
    del arrays["frames_seen"], arrays["images"]
    with pytest.raises(ProtocolError, match="images, frames_seen"):
        Upload.from_arrays(arrays)

"""Uploaded frames as image files and statistics in float16: exact where promised, refused when hostile."""

import io

import numpy as np
import pytest
from PIL import Image

from protocol.config.adaptation import DeviceSettings
from protocol.config.wire import encoding_from_wire, settings_from_wire, settings_to_wire
from protocol.images import UploadEncoding, decode_image, encode_image
from protocol.messages import ProtocolError, decode_upload, upload_chunks
from protocol.tensors import TensorError
from protocol.upload import Upload
from protocol.v1 import cdca_pb2

SHAPE = (32, 32, 3)


def frames(grey: bool, n: int = 4) -> np.ndarray:
    rng = np.random.default_rng(1)
    smooth = np.linspace(0, 255, 32)[None, :, None] * np.ones((n, 32, 1, 1)) * 0.5
    noisy = np.clip(smooth + rng.normal(0, 20, (n, 32, 32, 1 if grey else 3)), 0, 255)
    return np.broadcast_to(noisy, (n, 32, 32, 3)).astype(np.uint8).copy()


@pytest.mark.parametrize("grey", [True, False])
def test_png_gives_the_cloud_exactly_the_device_pixels(grey):
    for frame in frames(grey):
        message = encode_image(frame, UploadEncoding("png"))
        np.testing.assert_array_equal(decode_image(message, SHAPE), frame)
        assert len(message.data) < frame.nbytes


def test_a_grey_frame_travels_as_one_channel():
    grey = frames(grey=True)[0]
    coloured = grey.copy()
    coloured[0, 0, 0] ^= 1  # one channel differs in one pixel: stored as RGB
    as_grey = encode_image(grey, UploadEncoding("png"))
    as_rgb = encode_image(coloured, UploadEncoding("png"))
    assert Image.open(io.BytesIO(as_grey.data)).mode == "L"
    assert len(as_grey.data) < 0.6 * len(as_rgb.data)


def test_webp_is_close_and_smaller_the_lower_its_quality():
    frame = frames(grey=False)[0]
    sizes = []
    for quality in (95, 75, 40):
        message = encode_image(frame, UploadEncoding("webp", quality))
        decoded = decode_image(message, SHAPE)
        assert np.abs(decoded.astype(int) - frame).mean() < 20
        sizes.append(len(message.data))
    assert sizes[0] > sizes[1] > sizes[2]


def png_of(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("1", size).save(buffer, "PNG")  # one bit per pixel: a large image in few bytes
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (cdca_pb2.ImageFile(format="gif", data=b"GIF89a"), "not one of png, webp"),
        (cdca_pb2.ImageFile(format="png", data=b"\0" * 20_000), "exceed the cap"),
        (cdca_pb2.ImageFile(format="png", data=png_of((6000, 6000))), "expected one 32x32"),
        (cdca_pb2.ImageFile(format="png", data=png_of((32, 31))), "expected one 32x32"),
        (cdca_pb2.ImageFile(format="png", data=b"\x89PNG\r\n\x1a\n garbage"), "not a readable png"),
        (cdca_pb2.ImageFile(format="webp", data=png_of((32, 32))), "not a readable webp"),
    ],
)
def test_hostile_image_files_are_refused_before_decoding(message, match):
    with pytest.raises(TensorError, match=match):
        decode_image(message, SHAPE)


def test_a_sample_with_both_or_no_image_is_refused():
    chunk = upload_chunks(
        "cam", 1, frames(True, 1), np.zeros(1, np.float32), np.arange(1), np.zeros(1, int),
        np.ones((2, 4), np.float32), shift=False, frames_seen=64,
    )[0]  # fmt: skip
    chunk.samples[0].image.CopyFrom(cdca_pb2.Tensor(dtype="uint8"))
    with pytest.raises(ProtocolError, match="either image or image_file"):
        decode_upload(chunk, SHAPE, (2, 4))
    chunk.samples[0].ClearField("image")
    chunk.samples[0].ClearField("image_file")
    with pytest.raises(ProtocolError, match="either image or image_file"):
        decode_upload(chunk, SHAPE, (2, 4))


def stats_chunk(stats: np.ndarray, encoding: UploadEncoding) -> cdca_pb2.UploadChunk:
    images = frames(True, 1)
    return upload_chunks(
        "cam", 1, images, np.zeros(1, np.float32), np.arange(1), np.zeros(1, int), stats,
        shift=False, frames_seen=64, encoding=encoding,
    )[0]  # fmt: skip


def test_statistics_travel_in_float16_and_arrive_as_float32():
    stats = np.random.default_rng(0).normal(0, 3, (2, 40)).astype(np.float32)
    chunk = stats_chunk(stats, UploadEncoding())
    assert chunk.batch_stats.dtype == "float16"
    decoded = decode_upload(chunk, SHAPE, (2, 40)).batch_stats
    assert decoded.dtype == np.float32
    np.testing.assert_allclose(decoded, stats, rtol=1e-3, atol=1e-4)
    huge = stats.copy()
    huge[1, 0] = 1e6  # beyond float16: sent as float32 rather than as Inf
    assert stats_chunk(huge, UploadEncoding()).batch_stats.dtype == "float32"


def test_statistics_of_other_dtypes_or_not_finite_are_refused():
    chunk = stats_chunk(np.ones((2, 4), np.float32), UploadEncoding())
    chunk.batch_stats.data = np.full((2, 4), np.inf, np.float16).tobytes()
    with pytest.raises(TensorError, match="NaN or Inf"):
        decode_upload(chunk, SHAPE, (2, 4))
    chunk.batch_stats.dtype = "uint8"
    with pytest.raises(ProtocolError, match="float32 or float16"):
        decode_upload(chunk, SHAPE, (2, 4))


def test_an_upload_as_received_is_exact_when_lossless_and_smaller_when_lossy():
    images = frames(grey=False, n=6)
    upload = Upload(
        batch_id=2, images=images, uncertainty=np.full(6, 0.5, np.float32),
        frame_ids=np.arange(6), predicted=np.zeros(6, np.int64),
        batch_stats=np.ones((2, 4), np.float32), shift=False, frames_seen=128,
    )  # fmt: skip
    raw, raw_bytes = upload.as_received("cam", UploadEncoding("raw", stats_dtype="float32"))
    png, png_bytes = upload.as_received("cam", UploadEncoding("png"))
    webp, webp_bytes = upload.as_received("cam", UploadEncoding("webp", 75))
    np.testing.assert_array_equal(raw.images, images)
    np.testing.assert_array_equal(png.images, images)
    assert not np.array_equal(webp.images, images)
    assert webp_bytes < png_bytes < raw_bytes
    assert png.batch_stats.dtype == np.float32


def test_a_device_sends_raw_to_a_cloud_that_names_no_encoding():
    assert encoding_from_wire({}).image_format == "raw"
    older = {"budget": "0.1", "gate": '"off"'}  # an older cloud's settings
    settings, _ = settings_from_wire(older)
    assert (settings.image_format, settings.stats_dtype) == ("raw", "float32")
    assert settings.stats_resend_distance == 0  # an older cloud needs them with every upload
    assert encoding_from_wire(older) == UploadEncoding(
        "raw", stats_dtype="float32", stats_resend_distance=0
    )
    current = settings_to_wire(DeviceSettings(image_format="webp", image_quality=60))
    assert encoding_from_wire(current) == UploadEncoding("webp", 60)
    assert encoding_from_wire({"image_format": '"gif"'}).image_format == "raw"

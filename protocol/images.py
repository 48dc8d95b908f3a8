"""Uploaded frames as image files: how a device encodes them and how the cloud checks and decodes them.

A raw 32x32 RGB frame is 3,072 bytes on the wire. ``png`` is lossless and stores a grey
frame (all three channels equal, as a monochrome camera gives) as one channel, so the
cloud sees exactly the device's pixels; ``webp`` is lossy at a ``quality`` from 1 to 100.
Both come from Pillow (libpng, libwebp), already a dependency of both sides.

The cloud never trusts a file: the format must be one it accepts, the payload must be
under a cap, and the header must give exactly the model's input size before a single pixel
is decoded, so a device cannot make the server decode a large or malformed image. Every
refusal is a ``TensorError`` naming the rule.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal

import numpy as np

from protocol.tensors import TensorError
from protocol.v1 import cdca_pb2

ImageFormat = Literal["raw", "png", "webp"]
FILE_FORMATS = {"png": "PNG", "webp": "WEBP"}  # wire name -> Pillow's format name
# bytes an image file may exceed the raw pixels by (headers, incompressible noise)
HEADER_SLACK = 4096


@dataclass(frozen=True)
class UploadEncoding:
    """How a device's uploads travel: image format and quality, and its statistics.

    Their precision, and how far they move before they are sent again (0: with every
    upload; ``device.stats_sender``).
    """

    image_format: ImageFormat = "png"
    image_quality: int = 90  # webp only
    stats_dtype: Literal["float16", "float32"] = "float16"
    stats_resend_distance: float = 0.15


DEFAULT_ENCODING = UploadEncoding()


def encode_image(frame: np.ndarray, encoding: UploadEncoding) -> cdca_pb2.ImageFile:
    """An (H, W, 3) uint8 frame -> an ImageFile message (``png`` or ``webp``)."""
    from PIL import Image

    if encoding.image_format not in FILE_FORMATS:
        raise ValueError(f"{encoding.image_format!r} is not an image file format")
    grey = bool((frame[..., 0] == frame[..., 1]).all() and (frame[..., 1] == frame[..., 2]).all())
    buffer = io.BytesIO()
    if encoding.image_format == "png":
        image = Image.fromarray(frame[..., 0] if grey else frame, "L" if grey else "RGB")
        image.save(buffer, "PNG")
    else:
        Image.fromarray(frame, "RGB").save(buffer, "WEBP", quality=encoding.image_quality)
    return cdca_pb2.ImageFile(format=encoding.image_format, data=buffer.getvalue())


def decode_image(
    message: cdca_pb2.ImageFile, shape: tuple[int, int, int], name: str = "image"
) -> np.ndarray:
    """Check, then decode an ImageFile into a read-only (H, W, 3) uint8 array of ``shape``.

    Raises:
        TensorError: an unknown format, a payload over the cap, a header of another size or
            format, or a file Pillow cannot decode.
    """
    from PIL import Image, UnidentifiedImageError

    if message.format not in FILE_FORMATS:
        raise TensorError(
            f"{name}: image format {message.format!r} is not one of {', '.join(FILE_FORMATS)}"
        )
    height, width, _ = shape
    cap = height * width * 3 + HEADER_SLACK
    if len(message.data) > cap:
        raise TensorError(f"{name}: {len(message.data)} bytes exceed the cap of {cap}")
    try:
        with Image.open(io.BytesIO(message.data), formats=[FILE_FORMATS[message.format]]) as image:
            if image.size != (width, height) or getattr(image, "n_frames", 1) != 1:
                raise TensorError(
                    f"{name}: a {image.size[0]}x{image.size[1]} image file, "
                    f"expected one {width}x{height} frame"
                )
            pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise TensorError(f"{name}: not a readable {message.format} file ({err})") from err
    pixels.setflags(write=False)
    return pixels

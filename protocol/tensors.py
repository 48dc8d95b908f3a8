"""Tensors on the wire: numpy arrays to ``cdca.v1.Tensor`` messages and back, checked first.

Nothing is decoded before it is validated: the dtype must be on the allow-list, the shape
non-negative and small enough, the byte count must match shape times item size, the payload
must fit the cap, and tensors that steer a model (prompts) must be finite. Every refusal is
a ``TensorError`` whose message says which rule failed; servers map it to
``INVALID_ARGUMENT``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from protocol.errors import DataError
from protocol.v1 import cdca_pb2

ALLOWED_DTYPES = {
    "float32": np.float32,
    "float16": np.float16,
    "uint8": np.uint8,
    "int64": np.int64,
}
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
MAX_DIMS = 8


class TensorError(DataError):
    """A tensor message that must not be decoded: wrong dtype, shape, size or values."""


def encode(array: np.ndarray) -> cdca_pb2.Tensor:
    """A numpy array (allowed dtype) -> Tensor message, little-endian, C order."""
    name = str(array.dtype)
    if name not in ALLOWED_DTYPES:
        raise TensorError(f"dtype {name} cannot be sent; allowed: {', '.join(ALLOWED_DTYPES)}")
    data = np.ascontiguousarray(array, dtype=np.dtype(ALLOWED_DTYPES[name]).newbyteorder("<"))
    return cdca_pb2.Tensor(dtype=name, shape=list(array.shape), data=data.tobytes())


def decode(
    message: cdca_pb2.Tensor,
    *,
    name: str = "tensor",
    dtype: str | None = None,
    shape: Sequence[int | None] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    finite: bool = False,
) -> np.ndarray:
    """Validate, then decode a Tensor message into a read-only numpy array.

    Args:
        message: the Tensor.
        name: what it is, for messages ("prompt part 'norm_affine'").
        dtype: required dtype, if any.
        shape: required shape; ``None`` entries match any size (e.g. a batch axis).
        max_bytes: payload cap.
        finite: refuse NaN and Inf (prompts, statistics).

    Raises:
        TensorError: naming the rule that failed.
    """
    if message.dtype not in ALLOWED_DTYPES:
        raise TensorError(
            f"{name}: dtype {message.dtype!r} is not one of {', '.join(ALLOWED_DTYPES)}"
        )
    if dtype is not None and message.dtype != dtype:
        raise TensorError(f"{name}: expected dtype {dtype}, got {message.dtype}")
    dims = list(message.shape)
    _check_shape(name, dims, shape)
    item = np.dtype(ALLOWED_DTYPES[message.dtype]).itemsize
    expected = item * math.prod(dims)  # Python ints: a forged shape cannot overflow
    # An empty shape's other dimensions count too: numpy refuses [0, 10**9, 10**9] outright
    bound = item * math.prod(d or 1 for d in dims)
    if bound > max_bytes or len(message.data) > max_bytes:
        raise TensorError(
            f"{name}: {max(bound, len(message.data))} bytes exceed the cap of {max_bytes}"
        )
    if len(message.data) != expected:
        raise TensorError(
            f"{name}: shape {tuple(dims)} of {message.dtype} needs {expected} bytes, got {len(message.data)}"
        )
    little = np.dtype(ALLOWED_DTYPES[message.dtype]).newbyteorder("<")
    array = np.frombuffer(message.data, dtype=little).reshape(dims).astype(little.newbyteorder("="))
    if finite and array.dtype.kind == "f" and not np.isfinite(array).all():
        raise TensorError(f"{name}: contains NaN or Inf")
    array.setflags(write=False)
    return array


def _check_shape(name: str, dims: list[int], required: Sequence[int | None] | None) -> None:
    if len(dims) > MAX_DIMS or any(d < 0 for d in dims):
        raise TensorError(f"{name}: shape {tuple(dims)} is not a valid array shape")
    if required is None:
        return
    fits = len(dims) == len(required) and all(
        r is None or d == r for d, r in zip(dims, required, strict=True)
    )
    if not fits:
        wanted = tuple("any" if r is None else r for r in required)
        raise TensorError(f"{name}: expected shape {wanted}, got {tuple(dims)}")

"""Building and checking cdca.v1 messages, shared by the cloud server and the device client.

Prompts are the one thing a device applies without question, so decoding one refuses
anything that is not finite float32; uploads are checked sample by sample against the
shapes the device's manifest promises. Errors are ``TensorError``/``ProtocolError`` with a
message meant for the other side's log.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from protocol.errors import CdcaError
from protocol.tensors import DEFAULT_MAX_BYTES, decode, encode
from protocol.v1 import cdca_pb2

PROTOCOL_VERSION = 1


class ProtocolError(CdcaError):
    """A message that is well-formed protobuf but breaks the cdca protocol (version, ids)."""


def check_protocol_version(version: int) -> None:
    """Refuse a peer that speaks another protocol version, saying which one to use."""
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {version} is not supported; this side speaks {PROTOCOL_VERSION} "
            "(upgrade the older of cloud and device)"
        )


def prompt_message(
    parts: Mapping[str, np.ndarray], *, version: int, scope: str = "device",
    environment_id: str = "", learned_from_batch: int = 0,
) -> cdca_pb2.Prompt:  # fmt: skip
    """Prompt parts (float32 arrays by ONNX input name) -> a Prompt message."""
    return cdca_pb2.Prompt(
        version=version, scope=scope, environment_id=environment_id,
        learned_from_batch=learned_from_batch,
        parts={name: encode(np.asarray(value, np.float32)) for name, value in parts.items()},
    )  # fmt: skip


@dataclass(frozen=True)
class DecodedPrompt:
    """A prompt that passed every check."""

    version: int
    scope: str
    environment_id: str
    parts: dict[str, np.ndarray]


def decode_prompt(
    message: cdca_pb2.Prompt,
    expected_shapes: Mapping[str, tuple[int, ...]],
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> DecodedPrompt:
    """Check every part against the model's input shapes; float32 and finite only.

    Raises:
        TensorError: a part with the wrong dtype, shape or size, or NaN/Inf values.
        ProtocolError: a part the model has no input for.
    """
    parts: dict[str, np.ndarray] = {}
    for name, tensor in message.parts.items():
        if name not in expected_shapes:
            raise ProtocolError(
                f"prompt part {name!r} is not a model input; known: {', '.join(sorted(expected_shapes))}"
            )
        parts[name] = decode(
            tensor, name=f"prompt part {name!r}", dtype="float32",
            shape=expected_shapes[name], max_bytes=max_bytes, finite=True,
        )  # fmt: skip
    return DecodedPrompt(message.version, message.scope, message.environment_id, parts)

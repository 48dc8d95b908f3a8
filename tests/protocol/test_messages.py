import numpy as np
import pytest

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

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.tensors import ALLOWED_DTYPES, TensorError, decode, encode
from protocol.v1 import cdca_pb2


@pytest.mark.parametrize("dtype", list(ALLOWED_DTYPES))
def test_round_trip_keeps_values_shape_and_dtype(dtype):
    array = (np.arange(24) % 7).astype(dtype).reshape(2, 3, 4)
    back = decode(encode(array), dtype=dtype, shape=(None, 3, 4))
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)
    assert not back.flags.writeable


@pytest.mark.parametrize(
    ("message", "kwargs", "match"),
    [
        (cdca_pb2.Tensor(dtype="float64", shape=[1], data=b"\0" * 8), {}, "not one of"),
        (encode(np.zeros(3, np.float32)), {"dtype": "uint8"}, "expected dtype uint8"),
        (encode(np.zeros((2, 3), np.float32)), {"shape": (2, 4)}, "expected shape"),
        (cdca_pb2.Tensor(dtype="float32", shape=[4], data=b"\0" * 12), {}, "needs 16 bytes"),
        (cdca_pb2.Tensor(dtype="uint8", shape=[2**40, 2**40], data=b""), {}, "exceed the cap"),
        (cdca_pb2.Tensor(dtype="uint8", shape=[-1], data=b""), {}, "not a valid"),
        (encode(np.array([1.0, np.nan], np.float32)), {"finite": True}, "NaN"),
        (encode(np.zeros(100, np.uint8)), {"max_bytes": 10}, "exceed the cap"),
    ],
)
def test_bad_tensors_are_refused_with_the_rule_that_failed(message, kwargs, match):
    with pytest.raises(TensorError, match=match):
        decode(message, **kwargs)


def test_an_empty_shape_with_huge_dimensions_is_refused_cleanly():
    message = cdca_pb2.Tensor(dtype="float32", shape=[0, 953, 1627, 2030, 12856, 56984], data=b"")
    with pytest.raises(TensorError, match="exceed the cap"):
        decode(message, max_bytes=1024)
    assert decode(cdca_pb2.Tensor(dtype="float32", shape=[0, 4], data=b"")).shape == (0, 4)


def test_unsendable_dtype_is_refused():
    with pytest.raises(TensorError, match="cannot be sent"):
        encode(np.zeros(2, np.complex64))


@settings(max_examples=1000, deadline=None)
@given(
    dtype=st.sampled_from([*ALLOWED_DTYPES, "float64", "", "int8"]),
    shape=st.lists(st.integers(-3, 2**33), max_size=10),
    data=st.binary(max_size=256),
    finite=st.booleans(),
)
def test_any_message_decodes_or_raises_tensor_error(dtype, shape, data, finite):
    message = cdca_pb2.Tensor(dtype=dtype, shape=shape, data=data)
    try:
        array = decode(message, finite=finite, max_bytes=1024)
    except TensorError:
        return
    assert array.nbytes == len(data)

"""compat.tensors against TensorFlow itself as the oracle.

``tf.io.parse_tensor`` runs the C++ ``Tensor::FromProto`` that TF Serving uses, ``tf.make_ndarray``
is the Python decoder clients use, ``tf.make_tensor_proto`` / ``tf.io.serialize_tensor`` are the
encoders clients and TF write.
"""

from __future__ import annotations

import math
import os

import ml_dtypes
import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf

from compat import tensors
from compat.protos import tensor_pb2, types_pb2

ALL_DTYPES = [
    types_pb2.DT_FLOAT,
    types_pb2.DT_DOUBLE,
    types_pb2.DT_HALF,
    types_pb2.DT_BFLOAT16,
    types_pb2.DT_INT8,
    types_pb2.DT_INT16,
    types_pb2.DT_INT32,
    types_pb2.DT_INT64,
    types_pb2.DT_UINT8,
    types_pb2.DT_UINT16,
    types_pb2.DT_UINT32,
    types_pb2.DT_UINT64,
    types_pb2.DT_BOOL,
    types_pb2.DT_STRING,
    types_pb2.DT_COMPLEX64,
    types_pb2.DT_COMPLEX128,
]
SHAPES = {"scalar": (), "empty": (0, 3), "matrix": (2, 3)}
NAMES = {dt: types_pb2.DataType.Name(dt) for dt in ALL_DTYPES}

_FLOATS = [1.5, -2.25, 0.0, -0.0, np.inf, np.nan, 3.0]
_STRINGS = [b"hello", b"", b"\xff\x00bin", "héllo".encode(), b"x" * 200, b"tf"]


def sample(dt: int, shape: tuple[int, ...]) -> np.ndarray:
    """Values that stress each dtype: extremes, signed zero, NaN/Inf, non-UTF-8 bytes."""
    npd = tensors.NUMPY_DTYPES[dt]
    n = math.prod(shape)
    if dt == types_pb2.DT_STRING:
        flat = np.empty(n, dtype=object)
        flat[:] = [_STRINGS[i % len(_STRINGS)] for i in range(n)]
    elif dt == types_pb2.DT_BOOL:
        flat = np.array([i % 3 == 0 for i in range(n)], dtype=bool)
    elif npd.kind == "c":
        re = np.array([_FLOATS[i % len(_FLOATS)] for i in range(n)])
        flat = np.empty(n, dtype=npd)
        flat.real, flat.imag = re, -re[::-1]
    elif npd.kind in "iu":
        info = np.iinfo(npd)
        pool = [info.min, info.max, 0, 1, info.max // 3]
        flat = np.array([pool[i % len(pool)] for i in range(n)], dtype=npd)
    else:
        flat = np.array([_FLOATS[i % len(_FLOATS)] for i in range(n)]).astype(npd)
    return flat.reshape(shape)


def assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    """Same dtype, shape and bits (so -0.0, NaN payloads and bfloat16 compare exactly)."""
    actual = np.asarray(actual)
    assert actual.shape == expected.shape
    if expected.dtype.kind == "O":
        assert [bytes(v) for v in actual.ravel()] == list(expected.ravel())
        return
    assert actual.dtype == expected.dtype
    assert np.ascontiguousarray(actual).tobytes() == np.ascontiguousarray(expected).tobytes()


def tf_parse(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """Decode with TF's C++ Tensor::FromProto, as TF Serving does."""
    return tf.io.parse_tensor(proto.SerializeToString(), tf.dtypes.as_dtype(proto.dtype)).numpy()


def as_tf_bytes(value: object) -> np.ndarray:
    """TF returns strings as ``S`` arrays or bare ``bytes``; compare them as object arrays."""
    array = np.asarray(value)
    return array.astype(object) if array.dtype.kind in "SO" else array


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("tensor_content", [False, True], ids=["typed", "content"])
@pytest.mark.parametrize("dt", ALL_DTYPES, ids=NAMES.values())
def test_round_trip_against_tensorflow(dt: int, tensor_content: bool, shape: tuple) -> None:
    x = sample(dt, shape)
    proto = tensors.from_numpy(x, tensor_content=tensor_content)
    assert proto.dtype == dt
    assert [d.size for d in proto.tensor_shape.dim] == list(shape)
    field = getattr(proto, tensors._CODECS[dt].field)
    if tensor_content and dt != types_pb2.DT_STRING:
        assert len(field) == 0
        assert len(proto.tensor_content) == x.size * x.dtype.itemsize
    else:
        assert not proto.tensor_content
        assert len(field) == x.size * (2 if x.dtype.kind == "c" else 1)

    # Ours -> TF's C++ decoder, TF's Python decoder, and our own decoder.
    assert_same(as_tf_bytes(tf_parse(proto)), x)
    assert_same(as_tf_bytes(tf.make_ndarray(proto)), x)
    assert_same(tensors.to_numpy(proto), x)

    # TF's encoders -> ours: serialize_tensor (C++) and make_tensor_proto (Python).
    tf_proto = tensor_pb2.TensorProto.FromString(tf.io.serialize_tensor(tf.constant(x)).numpy())
    assert tf_proto.dtype == dt
    assert_same(tensors.to_numpy(tf_proto), x)
    made = tf.make_tensor_proto(x)
    assert_same(tensors.to_numpy(made), x)
    if made.tensor_content and tensor_content:
        assert proto.tensor_content == made.tensor_content
    if not made.tensor_content and not tensor_content and x.size:
        assert proto == made  # byte-identical typed encoding, half_val bit patterns included


@pytest.mark.parametrize("dt", ALL_DTYPES, ids=NAMES.values())
def test_typed_field_broadcast_rule(dt: int) -> None:
    x = sample(dt, (2,))
    codec = tensors._CODECS[dt]
    one = tensors.from_numpy(x[:1])
    field_values = list(getattr(one, codec.field))
    for count, shape in [(1, [2, 3]), (2, [5])]:
        proto = tensor_pb2.TensorProto(dtype=dt)
        for size in shape:
            proto.tensor_shape.dim.add(size=size)
        values = list(getattr(tensors.from_numpy(x[:count]), codec.field))
        getattr(proto, codec.field).extend(values)
        expected = np.concatenate(
            [x[:count], np.repeat(x[count - 1 : count], math.prod(shape) - count)]
        )
        expected = expected.reshape(shape)
        assert_same(tensors.to_numpy(proto), expected)
        assert_same(as_tf_bytes(tf_parse(proto)), expected)
    # No values at all: zeros (empty strings), as TF fills.
    empty = tensor_pb2.TensorProto(dtype=dt)
    empty.tensor_shape.dim.add(size=4)
    zeros = np.zeros(4, dtype=codec.dtype) if codec.dtype.kind != "O" else np.full(4, b"", object)
    assert_same(tensors.to_numpy(empty), zeros)
    assert_same(as_tf_bytes(tf_parse(empty)), zeros)
    assert field_values  # the encoder wrote the single value


def test_make_tensor_proto_scalar_broadcast() -> None:
    proto = tf.make_tensor_proto(1.5, shape=[2, 3])
    assert list(proto.float_val) == [1.5]
    assert_same(tensors.to_numpy(proto), np.full((2, 3), 1.5, np.float32))


def test_tf_serving_predict_request_tensor() -> None:
    # tensorflow_model_server_test.py: x float_val [2.0] shape [1].
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[2.0])
    proto.tensor_shape.dim.add(size=1)
    assert_same(tensors.to_numpy(proto), np.array([2.0], np.float32))
    out = tensors.from_numpy(np.array([3.0], np.float32))
    assert list(out.float_val) == [3.0] and len(out.float_val) == 1


def test_int_val_values_wrap_like_static_cast() -> None:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT8, int_val=[300, -1])
    proto.tensor_shape.dim.add(size=2)
    assert_same(tensors.to_numpy(proto), tf_parse(proto))


def test_string_tensor_content_varint_list() -> None:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING)
    proto.tensor_shape.dim.add(size=2)
    proto.tensor_content = bytes([1, 200, 1]) + b"a" + b"b" * 200
    expected = np.array([b"a", b"b" * 200], dtype=object)
    assert_same(tensors.to_numpy(proto), expected)
    assert_same(tf_parse(proto).astype(object), expected)


def test_content_wins_over_typed_fields_and_is_read_only_view() -> None:
    proto = tensors.from_numpy(np.arange(4, dtype=np.int32), tensor_content=True)
    proto.int_val.extend([9])
    out = tensors.to_numpy(proto)
    assert_same(out, np.arange(4, dtype=np.int32))
    assert not out.flags.writeable


def test_dtype_override_and_strings() -> None:
    forced = tensors.from_numpy(np.array([1, 2]), types_pb2.DT_FLOAT)
    assert forced.dtype == types_pb2.DT_FLOAT and list(forced.float_val) == [1.0, 2.0]
    strings = tensors.from_numpy(["a", b"b", "é"], types_pb2.DT_STRING)
    assert list(strings.string_val) == [b"a", b"b", "é".encode()]
    unicode_array = tensors.from_numpy(np.array(["xy", "z"]))
    assert unicode_array.dtype == types_pb2.DT_STRING
    assert list(unicode_array.string_val) == [b"xy", b"z"]
    assert tensors.from_numpy(np.array([b"q"])).string_val == [b"q"]
    scalar = tensors.from_numpy(np.float64(2.5))
    assert scalar.dtype == types_pb2.DT_DOUBLE and not scalar.tensor_shape.dim


def test_tables_are_inverse() -> None:
    assert set(tensors.NUMPY_DTYPES) == set(ALL_DTYPES)
    assert {tensors.DT_OF[v]: v for v in tensors.NUMPY_DTYPES.values()} == tensors.NUMPY_DTYPES
    assert tensors.NUMPY_DTYPES[types_pb2.DT_BFLOAT16] == np.dtype(ml_dtypes.bfloat16)
    for dt in ALL_DTYPES:
        if dt != types_pb2.DT_STRING:
            assert tf.dtypes.as_dtype(dt).as_numpy_dtype == tensors.NUMPY_DTYPES[dt]


def _proto(dt: int, shape: list[int], **fields) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=dt, **fields)
    for size in shape:
        proto.tensor_shape.dim.add(size=size)
    return proto


MALFORMED = {
    "content_too_short": _proto(types_pb2.DT_FLOAT, [2, 3], tensor_content=b"\0" * 20),
    "content_too_long": _proto(types_pb2.DT_INT64, [1], tensor_content=b"\0" * 9),
    "negative_dim": _proto(types_pb2.DT_FLOAT, [-1], float_val=[1.0]),
    "string_content_truncated": _proto(
        types_pb2.DT_STRING, [2], tensor_content=bytes([1, 5, 0x61])
    ),
    "string_content_overlong": _proto(types_pb2.DT_STRING, [1], tensor_content=bytes([1]) + b"ab"),
    "unsupported_resource": _proto(types_pb2.DT_RESOURCE, [1]),
    "unsupported_variant": _proto(types_pb2.DT_VARIANT, [1]),
    "unsupported_qint8": _proto(types_pb2.DT_QINT8, [1], int_val=[1]),
    "invalid_dtype": _proto(types_pb2.DT_INVALID, [1]),
}
STRICTER_THAN_TF = {
    # TF's C++ decoder silently ignores the surplus (Python's make_ndarray raises): reject it.
    "more_values_than_elements": _proto(types_pb2.DT_FLOAT, [2], float_val=[1, 2, 3]),
    "content_for_empty": _proto(types_pb2.DT_INT32, [0], tensor_content=b"\0" * 4),
    "values_for_empty": _proto(types_pb2.DT_STRING, [0, 2], string_val=[b"a"]),
    "odd_complex_values": _proto(types_pb2.DT_COMPLEX64, [1], scomplex_val=[1, 2, 3]),
}


@pytest.mark.parametrize("proto", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_raises_value_error_like_tensorflow(proto: tensor_pb2.TensorProto) -> None:
    with pytest.raises(ValueError):
        tensors.to_numpy(proto)
    if proto.dtype in tensors.NUMPY_DTYPES:
        with pytest.raises(tf.errors.InvalidArgumentError):
            tf_parse(proto)


@pytest.mark.parametrize("proto", STRICTER_THAN_TF.values(), ids=STRICTER_THAN_TF.keys())
def test_surplus_values_raise_value_error(proto: tensor_pb2.TensorProto) -> None:
    with pytest.raises(ValueError):
        tensors.to_numpy(proto)


def test_from_numpy_rejects_what_it_cannot_encode() -> None:
    with pytest.raises(ValueError):
        tensors.from_numpy(np.array([1 + 2j], dtype=np.complex256))
    with pytest.raises(ValueError):
        tensors.from_numpy(np.array([object()], dtype=object))
    with pytest.raises(ValueError):
        tensors.from_numpy(np.array([1.0]), types_pb2.DT_RESOURCE)


# --- typed fields written packed by numpy: the same bytes protobuf would write ------------------


def _values(dtype: np.dtype, n: int, rng: np.random.Generator) -> np.ndarray:
    if dtype.kind == "b":
        return rng.integers(0, 2, n).astype(bool)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = rng.integers(info.min, info.max, n, dtype=dtype, endpoint=True)
        values[:4] = [info.min, info.max, 0, 1]  # both ends: negative int32s take 10 bytes
        return values
    if dtype.kind == "c":
        return (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(dtype)
    values = rng.standard_normal(n).astype(dtype)
    values[:3] = [np.inf, -np.inf, np.nan]
    return values


@pytest.mark.parametrize("n", [64, 1000])
@pytest.mark.parametrize(
    "dt", [dt for dt, dtype in tensors.NUMPY_DTYPES.items() if dtype.kind != "O"]
)
def test_packed_typed_fields_are_what_protobuf_writes(
    dt: int, n: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = _values(tensors.NUMPY_DTYPES[dt], n, np.random.default_rng(dt))
    packed = tensors.from_numpy(values)
    monkeypatch.setattr(tensors, "_PACK_FROM", 10**9)  # protobuf's own extend()
    expected = tensors.from_numpy(values)
    assert packed.SerializeToString() == expected.SerializeToString()
    assert packed == expected
    decoded = tensors.to_numpy(packed)
    assert decoded.dtype == values.dtype
    assert decoded.tobytes() == values.tobytes()  # bit for bit, NaNs included


def test_varints_at_every_length() -> None:
    values = np.array([0, 1, 127, 128, 300, 2**32 - 1, 2**63, 2**64 - 1], np.uint64)
    expected = b""
    for v in values.tolist():
        while True:
            byte, v = v & 0x7F, v >> 7
            expected += bytes([byte | (0x80 if v else 0)])
            if not v:
                break
    assert tensors.varints(values) == expected


# --- tensor_bytes: the message from_numpy builds, written without building it -------------------

TENSOR_SHAPES = {**SHAPES, "zero-dims": (0,), "deeplab map": (1, 128, 128), "long": (300,)}


@pytest.mark.parametrize("shape", TENSOR_SHAPES.values(), ids=TENSOR_SHAPES.keys())
@pytest.mark.parametrize("dt", ALL_DTYPES, ids=NAMES.values())
def test_tensor_bytes_is_from_numpy_serialized(dt: int, shape: tuple) -> None:
    x = sample(dt, shape)
    written = tensor_pb2.TensorProto.FromString(tensors.tensor_bytes(x))
    built = tensors.from_numpy(x)
    # Compared serialized (deterministically), as NaN != NaN in a message comparison.
    assert written.SerializeToString(deterministic=True) == built.SerializeToString(
        deterministic=True
    )
    assert written.HasField("tensor_shape")
    assert_same(as_tf_bytes(tf_parse(written)), x)


@pytest.mark.parametrize("shape", TENSOR_SHAPES.values(), ids=TENSOR_SHAPES.keys())
@pytest.mark.parametrize("dt", ALL_DTYPES, ids=NAMES.values())
def test_tensor_bytes_as_tensor_content_is_from_numpys(dt: int, shape: tuple) -> None:
    """--enable_serialization_as_tensor_content: numeric values as raw bytes in
    ``tensor_content`` (strings stay in ``string_val``), read back by TF as the same tensor."""
    x = sample(dt, shape)
    written = tensor_pb2.TensorProto.FromString(tensors.tensor_bytes(x, tensor_content=True))
    built = tensors.from_numpy(x, tensor_content=True)
    assert written.SerializeToString(deterministic=True) == built.SerializeToString(
        deterministic=True
    )
    if x.size and x.dtype != object:
        present = {f.name for f, _ in written.ListFields()}
        assert present == {"dtype", "tensor_shape", "tensor_content"}
    assert_same(as_tf_bytes(tf_parse(written)), x)


def test_tensor_bytes_negative_and_wide_integers() -> None:
    for dtype in (np.int32, np.int64, np.uint32, np.uint64, np.int8):
        info = np.iinfo(dtype)
        x = np.array(
            [info.min, -1 if info.min else 0, 0, 1, 127, min(128, info.max), info.max], dtype
        )
        written = tensor_pb2.TensorProto.FromString(tensors.tensor_bytes(x))
        assert written == tensors.from_numpy(x)
        assert tensors.to_numpy(written).tolist() == x.tolist()


def test_varint_scalars() -> None:
    for value in (0, 1, 127, 128, 300, 2**32 - 1, 2**63 - 1):
        assert tensors.varint(value) == tensors.varints(np.array([value], np.uint64))
    assert tensors.varint(-1) == b"\xff" * 9 + b"\x01"  # int64 -1, ten bytes

"""TensorProto <-> numpy, the way TensorFlow's ``Tensor::FromProto`` / ``AsProtoField`` do it.

Pure numpy + protobuf (no TensorFlow calls), so it is cheap enough for every request:

* ``tensor_content`` is little-endian raw bytes, decoded with ``np.frombuffer`` (zero-copy, so
  the array returned is read-only) and encoded with ``tobytes``;
* typed ``*_val`` fields are read with ``np.array(field)`` and written as one packed field
  that numpy serializes (``packed_field``; ``extend`` for a few values).

One table drives both directions: for each ``DataType`` the numpy dtype, the typed field and the
*carrier*, the numpy dtype the field's values are reinterpreted through (``half_val`` holds the
uint16 bit patterns of half and bfloat16 in int32s; complex values are interleaved real, imag).
Strings are numpy ``object`` arrays of ``bytes``.

Assumes a little-endian host (x86-64, aarch64), as TensorFlow's wire format is little-endian.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import ml_dtypes
import numpy as np

from compat.limits import MAX_GROWTH_BYTES, element_count
from compat.protos import tensor_pb2, types_pb2

#: TensorShape's rank limit (tensor_shape.h ``MaxDimensions``).
MAX_RANK = 254


class _Codec(NamedTuple):
    dtype: np.dtype
    """The numpy dtype of the decoded array."""
    field: str
    """The typed ``TensorProto`` field holding the values."""
    carrier: np.dtype
    """What the field's values are cast to before being viewed as ``dtype``."""


def _codec(dtype: type | np.dtype, field: str, carrier: type | np.dtype | None = None) -> _Codec:
    np_dtype = np.dtype(dtype)
    return _Codec(np_dtype, field, np.dtype(carrier) if carrier is not None else np_dtype)


_CODECS: dict[int, _Codec] = {
    types_pb2.DT_FLOAT: _codec(np.float32, "float_val"),
    types_pb2.DT_DOUBLE: _codec(np.float64, "double_val"),
    types_pb2.DT_HALF: _codec(np.float16, "half_val", np.uint16),
    types_pb2.DT_BFLOAT16: _codec(ml_dtypes.bfloat16, "half_val", np.uint16),
    types_pb2.DT_INT8: _codec(np.int8, "int_val"),
    types_pb2.DT_INT16: _codec(np.int16, "int_val"),
    types_pb2.DT_INT32: _codec(np.int32, "int_val"),
    types_pb2.DT_INT64: _codec(np.int64, "int64_val"),
    types_pb2.DT_UINT8: _codec(np.uint8, "int_val"),
    types_pb2.DT_UINT16: _codec(np.uint16, "int_val"),
    types_pb2.DT_UINT32: _codec(np.uint32, "uint32_val"),
    types_pb2.DT_UINT64: _codec(np.uint64, "uint64_val"),
    types_pb2.DT_BOOL: _codec(np.bool_, "bool_val"),
    types_pb2.DT_STRING: _codec(np.object_, "string_val"),
    types_pb2.DT_COMPLEX64: _codec(np.complex64, "scomplex_val", np.float32),
    types_pb2.DT_COMPLEX128: _codec(np.complex128, "dcomplex_val", np.float64),
}

#: The numpy dtype of each field's values as protobuf stores them.
_FIELD_DTYPES: dict[str, np.dtype] = {
    "float_val": np.dtype(np.float32),
    "double_val": np.dtype(np.float64),
    "half_val": np.dtype(np.int32),
    "int_val": np.dtype(np.int32),
    "int64_val": np.dtype(np.int64),
    "uint32_val": np.dtype(np.uint32),
    "uint64_val": np.dtype(np.uint64),
    "bool_val": np.dtype(np.bool_),
    "scomplex_val": np.dtype(np.float32),
    "dcomplex_val": np.dtype(np.float64),
}

#: DataType -> numpy dtype (DT_STRING -> object, holding ``bytes``).
NUMPY_DTYPES: dict[int, np.dtype] = {dt: c.dtype for dt, c in _CODECS.items()}
#: numpy dtype -> DataType; ``bytes``/``str`` arrays (kinds S, U) also map to DT_STRING.
DT_OF: dict[np.dtype, int] = {c.dtype: dt for dt, c in _CODECS.items()}

_STRING_KINDS = frozenset("SUO")


def dtype_name(dtype: int) -> str:
    """``DT_FLOAT`` style name of a DataType value, for messages."""
    try:
        return types_pb2.DataType.Name(dtype)
    except ValueError:
        return str(dtype)


def shape_of(proto: tensor_pb2.TensorProto) -> tuple[int, ...]:
    """The dims of a TensorProto; ``ValueError`` for a negative dim, too many dims or more
    elements than an int64 counts."""
    dims = tuple(d.size for d in proto.tensor_shape.dim)
    if len(dims) > MAX_RANK:
        raise ValueError(f"shape has {len(dims)} dimensions, more than {MAX_RANK}")
    element_count(dims)
    return dims


def to_numpy(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """Decode a TensorProto as TensorFlow's ``Tensor::FromProto`` does.

    ``tensor_content`` must hold exactly the elements' bytes (strings: TF's varint-prefixed
    string list). Typed fields may hold fewer values than elements: the last value is repeated
    (``make_tensor_proto(1.0, shape=[2, 3])`` writes one ``float_val``), none at all means zeros.
    More values than elements, a negative dim or an unsupported dtype raise ``ValueError``.
    Numeric arrays decoded from ``tensor_content`` are read-only views of the bytes.
    """
    codec = _CODECS.get(proto.dtype)
    if codec is None:
        raise ValueError(f"unsupported dtype {dtype_name(proto.dtype)}")
    shape = shape_of(proto)
    count = math.prod(shape)
    content = proto.tensor_content  # each read copies the bytes out of the message
    if content:
        return _from_content(content, codec, count).reshape(shape)
    return _from_field(getattr(proto, codec.field), codec, count).reshape(shape)


def _from_content(content: bytes, codec: _Codec, count: int) -> np.ndarray:
    if codec.dtype.kind == "O":
        return _decode_string_list(content, count)
    if len(content) != count * codec.dtype.itemsize:
        raise ValueError(
            f"tensor_content holds {len(content)} bytes, "
            f"expected {count} x {codec.dtype.itemsize} bytes"
        )
    return np.frombuffer(content, dtype=codec.dtype)


def _from_field(values: Sequence, codec: _Codec, count: int) -> np.ndarray:
    if codec.dtype.kind == "O":
        flat = np.empty(len(values), dtype=object)
        flat[:] = list(values)
    else:
        raw = np.array(values, dtype=_FIELD_DTYPES[codec.field])
        if raw.size % (codec.dtype.itemsize // codec.carrier.itemsize):
            raise ValueError(f"{codec.field} holds an odd number of values")
        flat = raw.astype(codec.carrier, copy=False).view(codec.dtype)
    return _fill(flat, count, codec.dtype)


MAX_FILL_BYTES = MAX_GROWTH_BYTES
"""The most a tensor may grow beyond the values it carries (TF's repeat-the-last-value rule):
a request can never make the server allocate far beyond its own size. ``make_tensor_proto(0.0,
shape=[1, 2048, 2048, 3])`` (48 MiB from one value) passes; a declared shape of 10^12 elements
with one value is refused before anything is allocated."""


def _fill(flat: np.ndarray, count: int, dtype: np.dtype) -> np.ndarray:
    """TF's FromProtoField: repeat the last value, or zeros when there are none."""
    size = flat.size
    if size == count:
        return flat
    if size > count:
        raise ValueError(f"{size} values for a tensor of {count} elements")
    itemsize = 8 if dtype.kind == "O" else dtype.itemsize
    if (count - size) * itemsize > MAX_FILL_BYTES:
        raise ValueError(
            f"{size} values for a tensor of {count} elements: it would grow beyond "
            f"{MAX_FILL_BYTES} bytes"
        )
    if size == 0:
        return np.full(count, b"", dtype=object) if dtype.kind == "O" else np.zeros(count, dtype)
    out = np.empty(count, dtype=dtype)
    out[:size] = flat
    out[size:] = flat[-1]
    return out


def _decode_string_list(content: bytes, count: int) -> np.ndarray:
    """TF's ``port::DecodeStringList``: ``count`` varint32 lengths, then the bytes."""
    if count > len(content):  # each length takes a byte at least: refused before any work
        raise ValueError("truncated string tensor_content")
    lengths = []
    pos = 0
    for _ in range(count):
        length = shift = 0
        while True:
            if pos >= len(content) or shift > 28:
                raise ValueError("truncated string tensor_content")
            byte = content[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        lengths.append(length)
    if pos + sum(lengths) != len(content):
        raise ValueError("string tensor_content length does not match its lengths")
    out = np.empty(count, dtype=object)
    for i, length in enumerate(lengths):
        out[i] = content[pos : pos + length]
        pos += length
    return out


def infer_dtype(array: np.ndarray) -> int:
    """The DataType for a numpy array (``bytes``/``str``/object arrays are DT_STRING)."""
    dt = DT_OF.get(array.dtype)
    if dt is None and array.dtype.kind in _STRING_KINDS:
        return types_pb2.DT_STRING
    if dt is None:
        raise ValueError(f"no TensorFlow dtype for numpy dtype {array.dtype}")
    return dt


def from_numpy(
    array: np.ndarray | object, dtype: int | None = None, *, tensor_content: bool = False
) -> tensor_pb2.TensorProto:
    """Encode an array as a TensorProto.

    By default values go into the typed ``*_val`` field, as TF Serving's Predict responses do
    (``Tensor::AsProtoField``); ``tensor_content=True`` packs numeric tensors as raw bytes
    (strings always use ``string_val``, which every client can read). ``dtype`` overrides the
    DataType inferred from the array (the array is cast to it). Strings may be ``bytes`` or
    ``str`` (encoded as UTF-8).
    """
    arr = np.asarray(array)
    dt = infer_dtype(arr) if dtype is None else dtype
    codec = _CODECS.get(dt)
    if codec is None:
        raise ValueError(f"unsupported dtype {dtype_name(dt)}")
    proto = tensor_pb2.TensorProto(dtype=dt)
    proto.tensor_shape.SetInParent()  # present even for scalars, as TF's AsProtoField writes it
    dims = proto.tensor_shape.dim
    for size in arr.shape:
        dims.add(size=size)
    if codec.dtype.kind == "O":
        proto.string_val.extend([_to_bytes(v) for v in arr.ravel().tolist()])
        return proto
    arr = np.ascontiguousarray(arr, dtype=codec.dtype).reshape(-1)
    if tensor_content:
        proto.tensor_content = arr.tobytes()
    elif arr.size < _PACK_FROM:
        getattr(proto, codec.field).extend(arr.view(codec.carrier).tolist())
    else:  # the same field, serialized by numpy and merged in: no Python int per value
        proto.MergeFromString(packed_field(codec.field, arr.view(codec.carrier)))
    return proto


_PACK_FROM = 64
"""From this many values on, ``from_numpy`` writes a typed field with ``packed_field``."""

#: Typed field -> (field number, wire kind): little-endian fixed-width bytes, or varints.
_PACKED: dict[str, tuple[int, str]] = {
    "float_val": (5, "<f4"),
    "scomplex_val": (9, "<f4"),
    "double_val": (6, "<f8"),
    "dcomplex_val": (12, "<f8"),
    "half_val": (13, "varint"),
    "int_val": (7, "varint"),
    "int64_val": (10, "varint"),
    "bool_val": (11, "varint"),
    "uint32_val": (16, "varint"),
    "uint64_val": (17, "varint"),
}


def packed_field(field: str, values: np.ndarray) -> bytes:
    """A packed repeated ``TensorProto`` field as protobuf serializes it (tag, length, values):
    fixed-width values as raw little-endian bytes, integers as varints (negative ones as 10-byte
    two's complement, as protobuf encodes int32 and int64)."""
    number, kind = _PACKED[field]
    if kind == "varint":
        payload = varints(values.astype(np.int64, copy=False).view(np.uint64))
    else:
        payload = values.astype(kind, copy=False).tobytes()
    return length_delimited(number, payload)


def tensor_bytes(array: np.ndarray | object, *, tensor_content: bool = False) -> bytes:
    """``from_numpy(array, tensor_content=...).SerializeToString()``'s message, written without
    building it for a numeric array: its dtype, its shape and one packed typed field (or, with
    ``tensor_content``, the raw bytes) straight from numpy, so that a big output costs about
    its ``tobytes``, not a message built and then serialized. Strings go through
    ``from_numpy``."""
    arr = np.asarray(array)
    dt = infer_dtype(arr)
    codec = _CODECS[dt]
    if codec.dtype.kind == "O":
        return from_numpy(arr, dt).SerializeToString()
    dims = b"".join(
        length_delimited(2, b"\x08" + varint(size) if size else b"") for size in arr.shape
    )
    flat = np.ascontiguousarray(arr, dtype=codec.dtype).reshape(-1)
    if not flat.size:
        values = b""
    elif tensor_content:
        values = length_delimited(4, flat.tobytes())
    else:
        values = packed_field(codec.field, flat.view(codec.carrier))
    return b"\x08" + varint(dt) + length_delimited(2, dims) + values


def varint(value: int) -> bytes:
    """One base-128 varint; a negative value as its 64-bit two's complement, as protobuf writes
    int32 and int64."""
    value &= 0xFFFF_FFFF_FFFF_FFFF
    if value < 0x80:
        return _BYTES[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_BYTES = [bytes([b]) for b in range(0x80)]


def length_delimited(number: int, payload: bytes) -> bytes:
    """Field ``number`` holding ``payload`` (a message, string or packed field): tag, length,
    payload."""
    return varint((number << 3) | 2) + varint(len(payload)) + payload


def varints(values: np.ndarray) -> bytes:
    """Base-128 varints of unsigned 64-bit values, vectorized."""
    if values.size == 0:
        return b""
    if int(values.max()) < 0x80:  # one byte each: the common case of small labels and counts
        return values.astype(np.uint8).tobytes()
    lengths = np.ones(values.shape, np.int64)
    for k in range(1, 10):
        lengths += values >= np.uint64(1 << (7 * k))
    starts = np.cumsum(lengths) - lengths
    out = np.empty(int(lengths.sum()), np.uint8)
    rest = values.copy()
    for k in range(int(lengths.max())):
        live = lengths > k
        byte = (rest & np.uint64(0x7F)).astype(np.uint8) | ((lengths > k + 1) << 7).astype(np.uint8)
        out[starts[live] + k] = byte[live]
        rest >>= np.uint64(7)
    return out.tobytes()


def _to_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise ValueError(f"string tensors hold bytes or str, not {type(value).__name__}")

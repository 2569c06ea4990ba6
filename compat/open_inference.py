"""KServe's Open Inference Protocol (V2) as a codec over the data plane's numpy tensors.

The messages are the protocol's own, from the Open Inference Protocol working group's
``open-inference-grpc`` package (proto package ``inference``). One table maps each V2 datatype
onto its TensorFlow DataType, numpy dtype and typed ``InferTensorContents`` field (FP16 and BF16
have none: they travel raw only). Tensors arrive either typed (``contents``) or raw
(``raw_input_contents``: little-endian bytes, BYTES as 4-byte little-endian lengths each followed
by its bytes); a response answers raw when the request came raw (or when an output has no typed
field), typed otherwise. Errors are INVALID_ARGUMENT with a message naming the input.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np
from open_inference.grpc import protocol as pb

from compat.errors import InvalidArgument
from compat.limits import element_count
from compat.protos import types_pb2
from compat.signatures import Signature, TensorSpec

PLATFORM = "tensorflow_savedmodel"
SIGNATURE_PARAMETER = "signature_name"
"""The request parameter naming the signature to run (default ``serving_default``)."""


class Datatype(NamedTuple):
    name: str
    """The protocol's datatype name."""
    dtype: int
    """TensorFlow's DataType."""
    numpy: np.dtype
    contents: str | None
    """The ``InferTensorContents`` field that holds it typed; None: raw only."""


DATATYPES: tuple[Datatype, ...] = (
    Datatype("BOOL", types_pb2.DT_BOOL, np.dtype(np.bool_), "bool_contents"),
    Datatype("UINT8", types_pb2.DT_UINT8, np.dtype(np.uint8), "uint_contents"),
    Datatype("UINT16", types_pb2.DT_UINT16, np.dtype(np.uint16), "uint_contents"),
    Datatype("UINT32", types_pb2.DT_UINT32, np.dtype(np.uint32), "uint_contents"),
    Datatype("UINT64", types_pb2.DT_UINT64, np.dtype(np.uint64), "uint64_contents"),
    Datatype("INT8", types_pb2.DT_INT8, np.dtype(np.int8), "int_contents"),
    Datatype("INT16", types_pb2.DT_INT16, np.dtype(np.int16), "int_contents"),
    Datatype("INT32", types_pb2.DT_INT32, np.dtype(np.int32), "int_contents"),
    Datatype("INT64", types_pb2.DT_INT64, np.dtype(np.int64), "int64_contents"),
    Datatype("FP16", types_pb2.DT_HALF, np.dtype(np.float16), None),
    Datatype("FP32", types_pb2.DT_FLOAT, np.dtype(np.float32), "fp32_contents"),
    Datatype("FP64", types_pb2.DT_DOUBLE, np.dtype(np.float64), "fp64_contents"),
    Datatype("BF16", types_pb2.DT_BFLOAT16, np.dtype(ml_dtypes.bfloat16), None),
    Datatype("BYTES", types_pb2.DT_STRING, np.dtype(np.object_), "bytes_contents"),
)
BY_NAME = {d.name: d for d in DATATYPES}
BY_DTYPE = {d.dtype: d for d in DATATYPES}
BY_NUMPY = {d.numpy: d for d in DATATYPES}


def datatype_of(dtype: int) -> str:
    """The V2 name of a TF DataType (``""`` for one the protocol has no name for)."""
    found = BY_DTYPE.get(dtype)
    return found.name if found else ""


def datatype(name: object, what: str) -> Datatype:
    """The table's entry for a datatype name, or INVALID_ARGUMENT naming ``what`` has it."""
    found = BY_NAME.get(name) if isinstance(name, str) else None
    if found is None:
        raise InvalidArgument(
            f"{what} has datatype '{name}', which is not one of {', '.join(BY_NAME)}"
        )
    return found


def count_elements(shape: Iterable[int], what: str) -> int:
    """The elements of ``what``'s shape, or INVALID_ARGUMENT for a negative dimension or more
    than an int64 counts."""
    dims = list(shape)
    if any(d < 0 for d in dims):
        raise InvalidArgument(f"{what} has a negative dimension in its shape {dims}")
    try:
        return element_count(dims)
    except ValueError as e:
        raise InvalidArgument(f"{what}: {e}") from None


def _reshape(flat: np.ndarray, shape: list[int], what: str) -> np.ndarray:
    """``flat`` as ``shape`` (already checked to hold its elements): numpy refuses a shape of
    no elements whose other dims overflow its index type."""
    try:
        return flat.reshape(shape)
    except ValueError as e:
        raise InvalidArgument(f"{what}: shape {shape}: {e}") from None


# --- BYTES: 4-byte little-endian lengths, each followed by its bytes -------------------------


def pack_bytes(values: Iterable[Any]) -> bytes:
    parts = []
    for v in values:
        b = v if isinstance(v, bytes) else str(v).encode()
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)


def unpack_bytes(raw: bytes, count: int, what: str) -> np.ndarray:
    """``count`` length-prefixed strings; a count the bytes cannot hold (4 bytes of length
    each) is refused before anything is allocated."""
    if count > len(raw) // 4:
        raise InvalidArgument(f"{what}: raw BYTES hold fewer than {count} elements")
    out = np.empty(count, dtype=object)
    view = memoryview(raw)
    offset = 0
    for i in range(count):
        if offset + 4 > len(raw):
            raise InvalidArgument(f"{what}: raw BYTES hold fewer than {count} elements")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise InvalidArgument(f"{what}: raw BYTES element {i} runs past the data")
        out[i] = bytes(view[offset : offset + size])
        offset += size
    if offset != len(raw):
        raise InvalidArgument(f"{what}: raw BYTES hold more than {count} elements")
    return out


def from_raw(raw: bytes, datatype: Datatype, shape: list[int], what: str) -> np.ndarray:
    """Raw little-endian bytes (BYTES: length-prefixed) -> an array of ``shape``."""
    count = count_elements(shape, what)
    if datatype.name == "BYTES":
        return _reshape(unpack_bytes(raw, count, what), shape, what)
    expected = count * datatype.numpy.itemsize
    if len(raw) != expected:
        raise InvalidArgument(
            f"{what}: {len(raw)} bytes of raw data, but shape {shape} of {datatype.name} "
            f"needs {expected}"
        )
    return _reshape(np.frombuffer(raw, dtype=datatype.numpy), shape, what)


def to_raw(array: np.ndarray) -> bytes:
    if array.dtype == object:
        return pack_bytes(array.ravel())
    return np.ascontiguousarray(array).tobytes()


# --- requests ----------------------------------------------------------------------------


def decode_inputs(request: pb.ModelInferRequest) -> dict[str, np.ndarray]:
    """The request's input tensors, typed or raw, checked against their shapes."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(
            f"raw_input_contents holds {len(raw)} tensors for {len(request.inputs)} inputs"
        )
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        what = f"input '{tensor.name}'"
        if tensor.name in inputs:
            raise InvalidArgument(f"{what} is given more than once")
        kind = datatype(tensor.datatype, what)
        shape = list(tensor.shape)
        if raw:
            if tensor.HasField("contents"):
                raise InvalidArgument(f"{what} has contents as well as raw_input_contents")
            inputs[tensor.name] = from_raw(raw[i], kind, shape, what)
            continue
        if kind.contents is None:
            raise InvalidArgument(
                f"{what} is {kind.name}, which has no typed contents: send it in raw_input_contents"
            )
        values = getattr(tensor.contents, kind.contents)
        count = count_elements(shape, what)
        if len(values) != count:
            raise InvalidArgument(
                f"{what} has {len(values)} values in {kind.contents}, but shape {shape} "
                f"holds {count}"
            )
        if kind.name == "BYTES":
            array = np.empty(count, dtype=object)
            array[:] = list(values)
        else:
            array = np.array(values, dtype=kind.numpy)
        inputs[tensor.name] = _reshape(array, shape, what)
    return inputs


def check_dtypes(inputs: Mapping[str, np.ndarray], signature: Signature) -> None:
    """Each input's datatype is the one the signature takes (names are checked by the data
    plane, with TF Serving's message)."""
    for name, array in inputs.items():
        spec = signature.inputs.get(name)
        if spec is None:
            continue
        given = BY_NUMPY[array.dtype].name
        wanted = datatype_of(spec.dtype) or spec.dtype_name
        if given != wanted:
            raise InvalidArgument(
                f"input '{name}' has datatype {given}, but signature '{signature.key}' takes "
                f"{wanted}"
            )


def signature_name(request: pb.ModelInferRequest) -> str:
    """The signature the request asks for (``parameters.signature_name``), "" for the default."""
    if SIGNATURE_PARAMETER not in request.parameters:
        return ""
    parameter = request.parameters[SIGNATURE_PARAMETER]
    if parameter.WhichOneof("parameter_choice") != "string_param":
        raise InvalidArgument(f"parameter '{SIGNATURE_PARAMETER}' must be a string")
    return str(parameter.string_param)


def output_names(request: pb.ModelInferRequest) -> list[str]:
    return [o.name for o in request.outputs]


# --- responses ---------------------------------------------------------------------------


def encode_outputs(
    response: pb.ModelInferResponse, outputs: Mapping[str, np.ndarray], raw: bool
) -> None:
    """Outputs into ``response``: raw when asked, or when one has no typed field (the
    protocol allows raw for all outputs or for none)."""
    kinds = {name: BY_NUMPY.get(array.dtype) for name, array in outputs.items()}
    for name, kind in kinds.items():
        if kind is None:
            raise InvalidArgument(f"output '{name}' has a dtype the protocol cannot carry")
    raw = raw or any(k.contents is None for k in kinds.values() if k is not None)
    for name, array in outputs.items():
        kind = kinds[name]
        assert kind is not None
        tensor = response.outputs.add(name=name, datatype=kind.name, shape=array.shape)
        if raw:
            response.raw_output_contents.append(to_raw(array))
        elif kind.name == "BYTES":
            tensor.contents.bytes_contents.extend(
                v if isinstance(v, bytes) else str(v).encode() for v in array.ravel()
            )
        else:
            field = getattr(tensor.contents, kind.contents or "")
            field.extend(array.ravel().tolist())


def tensor_metadata(name: str, spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    shape = [-1] if spec.shape is None else [d if d >= 0 else -1 for d in spec.shape]
    return pb.ModelMetadataResponse.TensorMetadata(
        name=name, datatype=datatype_of(spec.dtype) or spec.dtype_name.upper(), shape=shape
    )


def model_metadata(
    name: str, versions: Iterable[int], signature: Signature
) -> pb.ModelMetadataResponse:
    """ModelMetadata: the signature's inputs and outputs, sorted by name, -1 where dynamic."""
    return pb.ModelMetadataResponse(
        name=name,
        versions=[str(v) for v in sorted(versions)],
        platform=PLATFORM,
        inputs=[tensor_metadata(n, s) for n, s in sorted(signature.inputs.items())],
        outputs=[tensor_metadata(n, s) for n, s in sorted(signature.outputs.items())],
    )


def parse_version(text: str) -> int | str | None:
    """A V2 ``model_version``: "" is the latest, ASCII digits a version number (an int64, as
    TF Serving reads versions), anything else one of the model's version labels (TF Serving's
    ``version_labels``: ``stable``, ``canary``; ``²`` is a label, which no model has)."""
    if not text:
        return None
    if text.isascii() and text.isdigit():
        if int(text) > 2**63 - 1:
            raise InvalidArgument(f"model version '{text}' is beyond int64")
        return int(text)
    return text

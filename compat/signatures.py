"""Plain, picklable views of a SavedModel's SignatureDefs, shared by codecs and the data plane."""

from __future__ import annotations

from dataclasses import dataclass, field

from compat.protos import meta_graph_pb2, types_pb2

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
DEFAULT_SIGNATURE = "serving_default"


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a signature."""

    name: str
    """Graph tensor name, e.g. ``x:0``."""
    dtype: int
    """``types_pb2.DataType`` value."""
    shape: tuple[int, ...] | None
    """Dimensions with -1 for unknown; ``None`` for unknown rank."""

    @property
    def dtype_name(self) -> str:
        """TF's short name for the dtype (``float``, ``int64``...), as its error messages use."""
        return DTYPE_SHORT_NAMES.get(self.dtype, types_pb2.DataType.Name(self.dtype))


@dataclass(frozen=True)
class Signature:
    """A SignatureDef: method name and aliased inputs/outputs."""

    key: str
    method_name: str
    inputs: dict[str, TensorSpec] = field(default_factory=dict)
    outputs: dict[str, TensorSpec] = field(default_factory=dict)

    @classmethod
    def from_proto(cls, key: str, sig: meta_graph_pb2.SignatureDef) -> Signature:
        return cls(
            key=key,
            method_name=sig.method_name,
            inputs={a: _spec(t) for a, t in sig.inputs.items()},
            outputs={a: _spec(t) for a, t in sig.outputs.items()},
        )


def _spec(info: meta_graph_pb2.TensorInfo) -> TensorSpec:
    shape = None
    if not info.tensor_shape.unknown_rank and info.HasField("tensor_shape"):
        shape = tuple(d.size for d in info.tensor_shape.dim)
    return TensorSpec(name=info.name, dtype=info.dtype, shape=shape)


def signatures_of(meta_graph: meta_graph_pb2.MetaGraphDef) -> dict[str, Signature]:
    """All signatures of a meta graph, keyed by signature key."""
    return {k: Signature.from_proto(k, s) for k, s in meta_graph.signature_def.items()}


#: TF's DataTypeString() names, which TF Serving's messages print.
DTYPE_SHORT_NAMES: dict[int, str] = {
    types_pb2.DT_FLOAT: "float",
    types_pb2.DT_DOUBLE: "double",
    types_pb2.DT_HALF: "half",
    types_pb2.DT_BFLOAT16: "bfloat16",
    types_pb2.DT_INT8: "int8",
    types_pb2.DT_INT16: "int16",
    types_pb2.DT_INT32: "int32",
    types_pb2.DT_INT64: "int64",
    types_pb2.DT_UINT8: "uint8",
    types_pb2.DT_UINT16: "uint16",
    types_pb2.DT_UINT32: "uint32",
    types_pb2.DT_UINT64: "uint64",
    types_pb2.DT_BOOL: "bool",
    types_pb2.DT_STRING: "string",
    types_pb2.DT_COMPLEX64: "complex64",
    types_pb2.DT_COMPLEX128: "complex128",
}

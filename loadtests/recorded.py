"""Recorded requests for the load tests, decoded with TensorFlow's own functions (never the
server's codec, which they test): a ``PredictRequest`` file and its REST twin (columnar JSON,
through ``tf.make_ndarray``), or a TF Serving REST body and its gRPC twin (``tf.make_tensor_proto``
at the dtypes of the signature that the server's GetModelMetadata reports).

The JSON is read as TF Serving's REST API reads it: row format (``instances``: one value per
example, or one object of named inputs per example, stacked along a new first dimension) or
columnar (``inputs``: one value, or an object of named inputs); unnamed values need a signature
with one input; ``{"b64": ...}`` is a binary string, a plain string its UTF-8 bytes.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import numpy as np
from google.protobuf import text_format
from google.protobuf.message import DecodeError

from compat.protos import get_model_metadata_pb2, predict_pb2, tensor_pb2, types_pb2


def read_request(data: bytes, text: bool) -> predict_pb2.PredictRequest:
    """A PredictRequest from its binary or text encoding (binary first, unless ``text``)."""
    request = predict_pb2.PredictRequest()
    if not text:
        try:
            request.ParseFromString(data)
            return request
        except DecodeError:
            request.Clear()
    text_format.Parse(data.decode("utf-8"), request)
    return request


def columnar_json(request: predict_pb2.PredictRequest) -> dict[str, Any]:
    """The REST body equivalent to ``request``: ``{"signature_name"?, "inputs": {alias: ...}}``,
    strings as ``{"b64": ...}``."""
    import tensorflow as tf

    inputs: dict[str, Any] = {}
    for alias, proto in request.inputs.items():
        array = tf.make_ndarray(proto)
        if proto.dtype == types_pb2.DT_STRING:
            flat = [{"b64": base64.b64encode(bytes(v)).decode()} for v in array.ravel()]
            inputs[alias] = np.array(flat, dtype=object).reshape(array.shape).tolist()
        else:
            inputs[alias] = array.tolist()
    doc: dict[str, Any] = {"inputs": inputs}
    if request.model_spec.signature_name:
        doc = {"signature_name": request.model_spec.signature_name, **doc}
    return doc


def decode_json(doc: Any, dtypes: Mapping[str, int]) -> dict[str, tensor_pb2.TensorProto]:
    """The tensors of a REST Predict body, by input alias; ``dtypes`` are the signature's input
    dtypes (``DataType`` values). ValueError for a body TF Serving would refuse."""
    if not isinstance(doc, dict):
        raise ValueError("a REST body is a JSON object")
    if ("instances" in doc) == ("inputs" in doc):
        raise ValueError('a REST body has exactly one of "instances" and "inputs"')
    if "instances" in doc:
        rows = doc["instances"]
        if not isinstance(rows, list) or not rows:
            raise ValueError('"instances" is a non-empty list')
        if all(_named(row) for row in rows):
            names = set(rows[0])
            if any(set(row) != names for row in rows):
                raise ValueError("every instance names the same inputs")
            values = {name: [row[name] for row in rows] for name in rows[0]}
        else:
            values = {_only_input(dtypes): rows}
    else:
        columns = doc["inputs"]
        values = dict(columns) if _named(columns) else {_only_input(dtypes): columns}
    unknown = sorted(set(values) - set(dtypes))
    if unknown:
        raise ValueError(f"inputs {unknown} are not in the signature: {sorted(dtypes)}")
    return {alias: _tensor(value, dtypes[alias]) for alias, value in values.items()}


def _named(value: Any) -> bool:
    return isinstance(value, dict) and set(value) != {"b64"}


def _only_input(dtypes: Mapping[str, int]) -> str:
    if len(dtypes) != 1:
        raise ValueError(f"unnamed values need a signature with one input, not {sorted(dtypes)}")
    return next(iter(dtypes))


def _tensor(value: Any, dtype: int) -> tensor_pb2.TensorProto:
    import tensorflow as tf

    kind = tf.dtypes.as_dtype(dtype)
    if kind == tf.string:
        return tf.make_tensor_proto(np.array(_binary(value), dtype=object), dtype=tf.string)
    return tf.make_tensor_proto(np.asarray(value, dtype=kind.as_numpy_dtype))


def _binary(value: Any) -> Any:
    """Strings and ``{"b64": ...}`` objects as bytes, at any depth."""
    if isinstance(value, list):
        return [_binary(v) for v in value]
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"], validate=True)
    if isinstance(value, str):
        return value.encode("utf-8")
    raise ValueError(f"a string input takes strings or {{'b64': ...}}, not {value!r}")


def signature_dtypes(
    grpc_target: str, model: str, signature: str, timeout: float = 30.0
) -> dict[str, int]:
    """The input dtypes of ``model``'s signature ``signature``, from the server's
    GetModelMetadata."""
    import grpc

    from compat.protos import prediction_service_pb2_grpc

    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = model
    request.metadata_field.append("signature_def")
    with grpc.insecure_channel(grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.GetModelMetadata(request, timeout)
    defs = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(defs)
    if signature not in defs.signature_def:
        raise ValueError(f"{model} has no signature {signature!r}: {sorted(defs.signature_def)}")
    return {alias: info.dtype for alias, info in defs.signature_def[signature].inputs.items()}

"""TF Serving's REST JSON, ported from ``tensorflow_serving/util/json_tensor.cc``.

Requests: ``{"instances": [...]}`` (row) or ``{"inputs": ...}`` (columnar) for predict, typed by
the signature's input dtypes; ``{"context"?, "examples": [...]}`` for classify/regress.
Responses: ``{"predictions": ...}`` / ``{"outputs": ...}`` / ``{"results": ...}``, and status and
metadata JSON as ``http_rest_api_util.cc`` prints them. Error messages are json_tensor.cc's,
verbatim (its typos included), each raised as :class:`compat.errors.InvalidArgument` unless
noted; ``JSON Value: ...`` parts render values as rapidjson's ``PrettyWriter`` does.

Tensor decoding has an exact, value-by-value port of ``FillTensorProto`` (which also produces the
errors) and a numpy fast path used only when it is guaranteed to give the same tensor.
Floats are written as ``WriteDecimal`` does: ``%g`` (6 significant digits), ``%.9g`` / ``%.17g``
when that does not round-trip, ``.0`` appended to whole numbers, ``NaN`` / ``Infinity``.

The package, one concern a module: ``parse`` (bodies -> documents), ``values`` (JSON values as
rapidjson types and prints them), ``tensor`` (one value -> one tensor), ``predict`` (Predict
requests), ``encode`` (tensors -> JSON), ``examples`` (classify/regress requests) and
``messages`` (status and metadata, the error body). What the transports use is re-exported here.
"""

from __future__ import annotations

from compat.json_codec.encode import (
    encode_classify_response,
    encode_predict_response,
    encode_regress_response,
)
from compat.json_codec.examples import decode_examples_request
from compat.json_codec.messages import encode_json_message, error_text, metadata_json, status_json
from compat.json_codec.parse import exact, parse_json, parse_predict_json, signature_name
from compat.json_codec.predict import decode_predict_request
from compat.json_codec.tensor import dtype_string
from compat.json_codec.values import Json, write_decimal

__all__ = [
    "Json",
    "decode_examples_request",
    "decode_predict_request",
    "dtype_string",
    "encode_classify_response",
    "encode_json_message",
    "encode_predict_response",
    "encode_regress_response",
    "error_text",
    "exact",
    "metadata_json",
    "parse_json",
    "parse_predict_json",
    "signature_name",
    "status_json",
    "write_decimal",
]

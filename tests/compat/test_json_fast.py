"""The orjson paths of compat.json_codec against its reference paths, by hypothesis.

``parse_predict_json`` + the numeric decoder must give exactly what ``parse_json`` + the
value-by-value port of ``FillTensorProto`` give (same tensors, same dtypes, or the same error),
and ``_fast_text`` must write the same bytes as the token writer. The bodies are built to hit
every way the two could differ: integers beyond 64 bits (orjson reads them as doubles), bools
among numbers, NaN and Infinity (orjson refuses them), ragged lists, strings and nulls.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compat import json_codec
from compat.errors import ServingError
from compat.json_codec import encode as json_encode
from compat.json_codec import parse as json_parse
from compat.json_codec import predict as json_predict
from compat.protos import types_pb2
from compat.signatures import Signature, TensorSpec

pytestmark = pytest.mark.unit

DT = types_pb2
NUMERIC = [
    DT.DT_FLOAT,
    DT.DT_DOUBLE,
    DT.DT_INT8,
    DT.DT_UINT8,
    DT.DT_INT32,
    DT.DT_INT64,
    DT.DT_UINT32,
    DT.DT_UINT64,
    DT.DT_BOOL,
    DT.DT_STRING,
]
EDGES = [
    2**24 - 1,
    2**24,
    2**31 - 1,
    2**31,
    2**53,
    2**63 - 1,
    2**63,
    2**64 - 1,
    2**64,
    10**30,
]

leaf = st.one_of(
    st.integers(-300, 300),
    st.sampled_from(EDGES + [-e for e in EDGES]),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.floats(-1e3, 1e3),
    st.booleans(),
    st.none(),
    st.sampled_from(["a", "1", ""]),
)
numbers = st.one_of(st.integers(-300, 300), st.floats(-1e3, 1e3))
edgy = st.one_of(numbers, st.sampled_from(EDGES + [-e for e in EDGES]))


@st.composite
def tensor(draw: st.DrawFn) -> object:
    """A nested list: rectangular most of the time, sometimes ragged, numbers mostly."""
    shape = draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
    mostly = draw(st.sampled_from([numbers, st.integers(-300, 300), edgy, leaf]))
    size = math.prod(shape)
    flat = draw(st.lists(mostly, min_size=size, max_size=size))
    if draw(st.integers(0, 9)) == 0:  # one odd leaf among the numbers
        flat[draw(st.integers(0, size - 1))] = draw(leaf)
    nested: object = flat
    for dim in reversed(shape[1:]):
        nested = [nested[i : i + dim] for i in range(0, len(nested), dim)]  # type: ignore[index]
    if draw(st.integers(0, 9)) == 0 and isinstance(nested, list) and len(nested) > 1:
        nested[-1] = nested[-1][:-1] if isinstance(nested[-1], list) else [nested[-1]]
    return nested


@st.composite
def predict_body(draw: st.DrawFn) -> tuple[bytes, Signature]:
    names = draw(st.lists(st.sampled_from(["x", "y", "images"]), min_size=1, max_size=2))
    names = sorted(set(names))
    dtypes = {n: draw(st.sampled_from(NUMERIC)) for n in names}
    signature = Signature(
        "sig",
        "tensorflow/serving/predict",
        {n: TensorSpec(f"{n}:0", d, None) for n, d in dtypes.items()},
    )
    rows = draw(st.booleans())
    if rows and len(names) == 1 and draw(st.booleans()):
        doc: dict[str, object] = {"instances": draw(tensor())}
    elif rows:
        count = draw(st.integers(1, 3))
        doc = {"instances": [{n: draw(tensor()) for n in names} for _ in range(count)]}
    elif len(names) == 1 and draw(st.booleans()):
        doc = {"inputs": draw(tensor())}
    else:
        doc = {"inputs": {n: draw(tensor()) for n in names}}
    if draw(st.integers(0, 4)) == 0:
        doc["signature_name"] = draw(st.sampled_from(["sig", 7, 2**64]))
    return json.dumps(doc, allow_nan=True).encode(), signature


def _outcome(body: bytes | dict, signature: Signature) -> object:
    try:
        name = json_codec.signature_name(
            body if isinstance(body, dict) else json_codec.parse_json(body)
        )
        inputs, row_format = json_codec.decode_predict_request(body, signature)
    except ServingError as e:
        return ("error", e.code, e.message)
    return (
        name,
        row_format,
        {k: (v.dtype.str, v.shape, v.tolist()) for k, v in sorted(inputs.items())},
    )


def _same(a: object, b: object) -> bool:
    """Equal outcomes; NaN equals NaN."""
    return json.dumps(a, default=str) == json.dumps(b, default=str)


@settings(
    max_examples=400, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)
@given(predict_body())
def test_fast_predict_decoding_is_the_reference(case: tuple[bytes, Signature]) -> None:
    body, signature = case
    fast = json_codec.parse_predict_json(body)
    assert _same(_outcome(fast, signature), _outcome(body, signature)), body


def test_fast_decoding_takes_a_numeric_image_without_the_reference_parser() -> None:
    image = np.arange(12, dtype=np.int64).reshape(1, 2, 2, 3).tolist()
    body = json.dumps({"instances": [{"images": image[0], "height": 2}]}).encode()
    signature = Signature(
        "s",
        "tensorflow/serving/predict",
        {
            "images": TensorSpec("images:0", DT.DT_FLOAT, None),
            "height": TensorSpec("height:0", DT.DT_INT32, None),
        },
    )
    doc = json_codec.parse_predict_json(body)
    assert isinstance(doc, json_parse._FastDoc)
    decoded = json_predict._decode_numeric(doc, signature.inputs)
    assert decoded is not None
    inputs, row_format = decoded
    assert row_format and inputs["images"].dtype == np.float32
    assert inputs["images"].shape == (1, 2, 2, 3) and inputs["height"].tolist() == [2]


@pytest.mark.parametrize(
    "body",
    [b'{"instances": [NaN]}', b'\xef\xbb\xbf{"instances": [1]}', b'{"instances": [1]', b"[1]"],
)
def test_bodies_orjson_refuses_go_to_the_reference_parser(body: bytes) -> None:
    try:
        doc = json_codec.parse_predict_json(body)
    except ServingError as e:
        with pytest.raises(ServingError) as reference:
            json_codec.parse_json(body)
        assert e.message == reference.value.message
        return
    assert not isinstance(doc, json_parse._FastDoc)
    assert doc == json_codec.parse_json(body)


INT_DTYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool"]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    st.sampled_from(INT_DTYPES),
    st.lists(st.integers(0, 3), min_size=0, max_size=4),
    st.booleans(),
    st.integers(1, 2),
    st.randoms(use_true_random=False),
)
def test_fast_int_writer_is_the_token_writer(
    dtype: str, shape: list[int], row_format: bool, outputs: int, rnd: object
) -> None:
    info = np.iinfo(dtype) if dtype != "bool" else None
    size = math.prod(shape)
    if info is None:
        flat = np.array([rnd.random() < 0.5 for _ in range(size)], dtype=bool)  # type: ignore[attr-defined]
    else:
        picks = [info.min, info.max, 0, 1, -1 if info.min < 0 else 2]
        flat = np.array([rnd.choice(picks) for _ in range(size)], dtype=dtype)  # type: ignore[attr-defined]
    array = flat.reshape(shape)
    arrays = {f"out{i}": array for i in range(outputs)}
    try:
        fast = json_codec.encode_predict_response(arrays, row_format)
    except ServingError as e:
        fast = e.message
    reference = _reference_encode(arrays, row_format)
    assert fast == reference


def _reference_encode(arrays: dict[str, np.ndarray], row_format: bool) -> str:
    """encode_predict_response with the token writer only."""
    saved = json_encode._fast_text
    json_encode._fast_text = lambda array: None  # type: ignore[assignment]
    try:
        return json_codec.encode_predict_response(arrays, row_format)
    except ServingError as e:
        return e.message
    finally:
        json_encode._fast_text = saved

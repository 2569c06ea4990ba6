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
from compat.json_codec import dense as json_dense
from compat.json_codec import encode as json_encode
from compat.json_codec import parse as json_parse
from compat.json_codec import predict as json_predict
from compat.protos import types_pb2
from compat.signatures import Signature, TensorSpec

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
    max_examples=200, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
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


@settings(max_examples=150, deadline=None, derandomize=True)
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


VALUE_KINDS = ["small ints", "edge ints", "floats", "mixed", "exponents"]
MUTATIONS = [
    "none",
    "odd leaf",
    "ragged",
    "ragged, as many numbers",
    "in a string",
    "unread input",
    "deep",
    "two arrays",
    "whitespace",
    "bools",
]


def _values(kind: str, size: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    if kind == "small ints":
        return rng.integers(-300, 300, size).tolist()
    if kind == "edge ints":
        return rng.choice(
            np.array(EDGES[:6] + [-e for e in EDGES[:6]], dtype=object), size
        ).tolist()
    if kind == "floats":
        return (rng.normal(size=size) * 1e3).tolist()
    if kind == "exponents":
        return (rng.normal(size=size) * 1e-30).tolist()
    return [v if i % 3 else float(v) for i, v in enumerate(rng.integers(-9, 9, size).tolist())]


@st.composite
def big_predict_body(draw: st.DrawFn) -> tuple[bytes, Signature, str]:
    """Bodies past ``dense.MIN_BODY`` whose arrays are past ``MIN_ARRAY``: the flat parse's
    inputs, and every way they could be read differently from the nested parse."""
    shape = [draw(st.integers(1, 2)), draw(st.integers(150, 250)), draw(st.sampled_from([8, 16]))]
    kind = draw(st.sampled_from(VALUE_KINDS))
    flat = _values(kind, math.prod(shape), draw(st.integers(0, 2**16)))
    mutation = draw(st.sampled_from(MUTATIONS))
    if mutation == "odd leaf":
        flat[draw(st.integers(0, len(flat) - 1))] = draw(st.sampled_from([None, "7", 2**64, 1.5]))
    image: list = np.array(flat, dtype=object).reshape(shape).tolist()
    if mutation == "ragged":
        image[-1][-1] = image[-1][-1][:-1] or [1, 2]
    elif mutation == "ragged, as many numbers":  # one moved from the last row to the second
        image[0][1].append(image[0][-1].pop())
    dtype = draw(
        st.sampled_from([DT.DT_FLOAT, DT.DT_INT32, DT.DT_INT64, DT.DT_UINT8, DT.DT_DOUBLE])
    )
    inputs = {"images": TensorSpec("images:0", dtype, None)}
    layout = draw(st.sampled_from(["instances", "instance objects", "inputs", "inputs object"]))
    if layout != "instances" or mutation == "two arrays":
        inputs["height"] = TensorSpec("height:0", DT.DT_INT32, None)
    other: object = 7 if mutation != "two arrays" else [[i] for i in range(shape[1] * 40)]
    if layout == "instances" and len(inputs) == 1:
        doc: dict[str, object] = {"instances": image}
    elif layout.startswith("instance"):
        doc = {"instances": [{"images": row, "height": other} for row in image]}
    elif layout == "inputs" and len(inputs) == 1:
        doc = {"inputs": image}
    else:
        doc = {"inputs": {"images": image, "height": other}}
    if mutation == "in a string":
        doc["signature_name"] = json.dumps(image)
    elif mutation == "unread input":
        doc["extra"] = image
    elif mutation == "deep":
        doc = {"inputs": {"images": [[image]]}} if len(inputs) == 1 else doc
    elif mutation == "bools":
        doc["signature_name"] = "true"
    signature = Signature("sig", "tensorflow/serving/predict", inputs)
    text = json.dumps(doc, indent=1 if mutation == "whitespace" else None).encode()
    return text.ljust(json_dense.MIN_BODY), signature, mutation  # trailing spaces: still JSON


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(big_predict_body())
def test_big_arrays_parsed_flat_are_the_reference(case: tuple[bytes, Signature, str]) -> None:
    body, signature, _ = case
    assert len(body) >= json_dense.MIN_BODY
    fast = json_codec.parse_predict_json(body)
    assert _same(_outcome(fast, signature), _outcome(body, signature)), body[:300]


IMAGE = (np.arange(2 * 80 * 30 * 3).reshape(2, 80, 30, 3) % 256).tolist()
RAGGED = [[list(r) for r in i] for i in IMAGE]
RAGGED[0][1].append(RAGGED[0][-1].pop())  # as many numbers as the shape of its first rows holds
ONE_INPUT = {"images": TensorSpec("images:0", DT.DT_FLOAT, None)}
TWO_INPUTS = {**ONE_INPUT, "height": TensorSpec("height:0", DT.DT_INT32, None)}


@pytest.mark.parametrize(
    ("doc", "inputs", "flat"),
    [
        ({"instances": IMAGE}, ONE_INPUT, True),
        ({"instances": [{"images": i, "height": 80} for i in IMAGE]}, TWO_INPUTS, True),
        ({"inputs": IMAGE}, ONE_INPUT, True),
        ({"inputs": {"images": IMAGE, "height": [80, 80]}}, TWO_INPUTS, True),
        ({"inputs": {"images": [[IMAGE]]}}, ONE_INPUT, True),
        ({"inputs": IMAGE, "extra": IMAGE}, ONE_INPUT, False),  # an array no input reads
        ({"instances": RAGGED}, ONE_INPUT, False),
        (
            {
                "instances": [
                    {"images": IMAGE[0], "height": 1},
                    {"images": IMAGE[1][:-1], "height": 1},
                ]
            },
            TWO_INPUTS,
            False,
        ),
        ({"signature_name": json.dumps(IMAGE), "inputs": IMAGE}, ONE_INPUT, True),
        ({"inputs": {"images": IMAGE, "height": True}}, TWO_INPUTS, False),
    ],
)
def test_each_place_a_big_array_can_be_is_read_as_the_reference_reads_it(
    doc: dict, inputs: dict, flat: bool
) -> None:
    body = json.dumps(doc).encode()
    signature = Signature("sig", "tensorflow/serving/predict", inputs)
    fast = json_codec.parse_predict_json(body)
    assert isinstance(fast, json_parse._FastDoc) and (fast.dense or not flat)
    assert (json_predict._decode_numeric(fast, signature.inputs) is not None) is flat
    assert _same(_outcome(fast, signature), _outcome(body, signature))


def test_a_big_image_is_parsed_flat_and_decoded_without_the_reference_parser() -> None:
    image = np.arange(2 * 40 * 3 * 30).reshape(1, 80, 30, 3) % 256
    body = json.dumps({"instances": [{"images": image[0].tolist(), "height": 80}]}).encode()
    signature = Signature("s", "tensorflow/serving/predict", TWO_INPUTS)
    doc = json_codec.parse_predict_json(body)
    assert isinstance(doc, json_parse._FastDoc) and len(doc.dense) == 1
    decoded = json_predict._decode_numeric(doc, signature.inputs)
    assert decoded is not None
    assert decoded[0]["images"].dtype == np.float32
    assert np.array_equal(decoded[0]["images"], image.astype(np.float32))


@pytest.mark.parametrize(
    "text",
    [
        b"[[1,2],[3]]",
        b"[[1,2],[3,4,5]]",
        b"[[1,2],[3,4,5],[6]]",
        b"[[[1]],[[2],[3]],[]]",
        b"[1.,2]",
        b"[01,2]",
        b"[+1]",
        b"[1 2]",
        b"[[1,],[2,3]]",
    ],
)
def test_what_is_not_a_rectangular_array_of_json_numbers_is_not_parsed_flat(text: bytes) -> None:
    assert json_dense.parse_flat(text) is None


def test_a_few_brackets_claiming_a_huge_shape_cost_nothing() -> None:
    """A long first row and many empty ones would claim rows x columns numbers: refused from
    the lengths, before any skeleton of that size is built."""
    text = b"[[" + b"1," * 50_000 + b"1]" + b",[]" * 50_000 + b"]"
    assert json_dense.parse_flat(text) is None


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": ' + b"[" * 4_000_000 + b"}",
        b'{"instances": [' + b"[" * 4000 + b"x" + b"[" * 100_000 + b"]]" * 2_000_000 + b"}",
    ],
)
def test_hostile_brackets_are_scanned_once(body: bytes) -> None:
    """The scan for big arrays starts only at the beginning of a run of array characters and
    never backtracks: a pattern that could took minutes per megabyte of ``[`` (quadratic);
    these are refused as the reference parser refuses them."""
    assert json_dense.dense_arrays(body) is None
    with pytest.raises(ServingError) as e:
        json_codec.parse_predict_json(body)
    assert e.value.message.startswith("JSON Parse error")

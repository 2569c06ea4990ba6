"""compat.open_inference_json, the V2 REST translation: JSON and binary tensors into the
protocol's message, the answer back into JSON and binary, as tritonclient writes and reads them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compat.errors import InvalidArgument
from compat.open_inference import decode_inputs, pack_bytes, pb, to_raw
from compat.open_inference_json import HEADER_LENGTH, infer_request, infer_response, metadata_json
from tests.allocation import bound, json_bound, traced


def body_of(doc: dict, *binary: bytes) -> tuple[bytes, str | None]:
    header = json.dumps(doc).encode()
    if not binary:
        return header, None
    return header + b"".join(binary), str(len(header))


def test_json_tensors_become_raw_inputs() -> None:
    body, length = body_of(
        {
            "id": "r1",
            "parameters": {"signature_name": "serving_default", "n": 3, "f": 0.5, "b": True},
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [2, 1], "data": [[1.0], [2.0]]},
                {"name": "s", "datatype": "BYTES", "shape": [2], "data": ["a", "é"]},
                {"name": "k", "datatype": "BOOL", "shape": [1], "data": [True]},
            ],
        }
    )
    message, wanted = infer_request(body, length, "m", "7")
    assert (message.model_name, message.model_version, message.id) == ("m", "7", "r1")
    assert message.parameters["signature_name"].string_param == "serving_default"
    assert message.parameters["n"].int64_param == 3
    assert message.parameters["f"].double_param == 0.5
    assert message.parameters["b"].bool_param is True
    assert [list(t.shape) for t in message.inputs] == [[2, 1], [2], [1]]
    assert message.raw_input_contents[0] == np.array([1.0, 2.0], np.float32).tobytes()
    assert message.raw_input_contents[1] == pack_bytes([b"a", "é".encode()])
    assert message.raw_input_contents[2] == b"\x01"
    assert wanted == {"": False}


def test_binary_tensors_are_sliced_in_input_order() -> None:
    a, b = np.arange(6, dtype=np.int64).reshape(2, 3), np.ones(4, np.float16)
    body, length = body_of(
        {
            "inputs": [
                {
                    "name": "a",
                    "datatype": "INT64",
                    "shape": [2, 3],
                    "parameters": {"binary_data_size": a.nbytes},
                },
                {
                    "name": "b",
                    "datatype": "FP16",
                    "shape": [4],
                    "parameters": {"binary_data_size": b.nbytes},
                },
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}, {"name": "z"}],
        },
        a.tobytes(),
        b.tobytes(),
    )
    message, wanted = infer_request(body, length, "m", "")
    assert list(message.raw_input_contents) == [a.tobytes(), b.tobytes()]
    assert [o.name for o in message.outputs] == ["y", "z"]
    assert wanted == {"": False, "y": True, "z": False}


def test_binary_data_output_makes_every_output_binary_unless_one_says_otherwise() -> None:
    body, length = body_of(
        {
            "inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [1]}],
            "parameters": {"binary_data_output": True},
            "outputs": [{"name": "z", "parameters": {"binary_data": False}}],
        }
    )
    _, wanted = infer_request(body, length, "m", "")
    assert wanted == {"": True, "z": False}


@pytest.mark.parametrize(
    ("doc", "binary", "message"),
    [
        ({"inputs": 3}, b"", "must be a JSON object with an 'inputs' list"),
        (
            {"inputs": [{"name": "x", "datatype": "FP8", "shape": [1], "data": [1]}]},
            b"",
            "input 'x' has datatype 'FP8'",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1.0]}]},
            b"",
            "input 'x' has 1 values, but shape [2] holds 2",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]},
            b"",
            "input 'x' has neither 'data' nor binary_data_size",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "INT8", "shape": [1], "data": ["a"]}]},
            b"",
            "input 'x': data is not INT8",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "BOOL", "shape": [1], "data": [1]}]},
            b"",
            "BOOL data must be true or false",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "x",
                        "datatype": "FP32",
                        "shape": [2],
                        "parameters": {"binary_data_size": 8},
                    }
                ]
            },
            b"\x00" * 4,
            "binary_data_size 8 does not fit the body",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "x",
                        "datatype": "FP32",
                        "shape": [1],
                        "parameters": {"binary_data_size": 4},
                    }
                ]
            },
            b"\x00" * 8,
            "4 bytes of binary data belong to no input",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "x",
                        "datatype": "FP32",
                        "shape": [2],
                        "parameters": {"binary_data_size": 4},
                    }
                ]
            },
            b"\x00" * 4,
            "input 'x': 4 bytes of raw data, but shape [2] of FP32 needs 8",
        ),
    ],
)
def test_what_cannot_be_a_request_is_invalid_argument(
    doc: dict, binary: bytes, message: str
) -> None:
    body, length = body_of(doc, binary) if binary else body_of(doc)
    with pytest.raises(InvalidArgument) as e:
        infer_request(body, length, "m", "")
    assert message in e.value.message


def test_a_header_length_beyond_the_body_is_refused() -> None:
    with pytest.raises(InvalidArgument) as e:
        infer_request(b"{}", "99", "m", "")
    assert HEADER_LENGTH in e.value.message


def response_of(**outputs: np.ndarray) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name="m", model_version="2", id="r")
    for name, array in outputs.items():
        kind = {np.dtype(np.float32): "FP32", np.dtype(object): "BYTES"}[array.dtype]
        response.outputs.add(name=name, datatype=kind, shape=array.shape)
        response.raw_output_contents.append(to_raw(array))
    return response


def test_an_answer_in_json() -> None:
    y, s = np.array([[1.5], [2.5]], np.float32), np.array([b"ok"], dtype=object)
    answer = infer_response(response_of(y=y, s=s), {"": False})
    assert answer.header_length is None
    assert json.loads(answer.content) == {
        "model_name": "m",
        "model_version": "2",
        "id": "r",
        "outputs": [
            {"name": "y", "datatype": "FP32", "shape": [2, 1], "data": [1.5, 2.5]},
            {"name": "s", "datatype": "BYTES", "shape": [1], "data": ["ok"]},
        ],
    }


def test_an_answer_with_binary_outputs() -> None:
    y, z = np.array([1.5, 2.5], np.float32), np.array([3.0], np.float32)
    answer = infer_response(response_of(y=y, z=z), {"": True, "z": False})
    length = answer.header_length
    assert length is not None
    header, rest = json.loads(answer.content[:length]), answer.content[length:]
    assert header["outputs"][0] == {
        "name": "y",
        "datatype": "FP32",
        "shape": [2],
        "parameters": {"binary_data_size": 8},
    }
    assert header["outputs"][1]["data"] == [3.0]
    assert rest == y.tobytes()


def test_metadata_is_the_protocols_json_with_numeric_shapes() -> None:
    response = pb.ModelMetadataResponse(name="m", versions=["1", "2"], platform="p")
    response.inputs.add(name="x", datatype="FP32", shape=[-1, 3])
    response.outputs.add(name="y", datatype="BYTES", shape=[])
    assert metadata_json(response) == {
        "name": "m",
        "versions": ["1", "2"],
        "platform": "p",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
        "outputs": [{"name": "y", "datatype": "BYTES", "shape": []}],
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[" * 100_000, "JSON Parse error"),
        (b"[1]", "Is not object"),
        (
            json.dumps({"inputs": [{"name": "x", "datatype": [], "shape": [1], "data": [1]}]}),
            "input 'x' has datatype '[]'",
        ),
        (
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": "x",
                            "datatype": "FP32",
                            "shape": [1],
                            "data": [1],
                            "parameters": "ab",
                        }
                    ]
                }
            ),
            "input 'x': 'parameters' must be an object",
        ),
        (
            json.dumps(
                {
                    "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],
                    "outputs": [{"name": "y", "parameters": "ab"}],
                }
            ),
            "output 'y': 'parameters' must be an object",
        ),
    ],
)
def test_hostile_json_is_invalid_argument_never_an_exception(
    body: bytes | str, message: str
) -> None:
    with pytest.raises(InvalidArgument) as e:
        infer_request(body.encode() if isinstance(body, str) else body, None, "m", "")
    assert message in e.value.message


# --- a request's memory is bounded by its size ------------------------------------------


@st.composite
def hostile_v2_body(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """A V2 REST infer body of small tensors (JSON data or binary) with hostile shapes."""
    inputs, binary = [], []
    for i in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["FP32", "INT64", "BOOL", "BYTES", "UINT8"]))
        shape = draw(st.lists(st.integers(0, 3), max_size=2))
        if draw(st.integers(0, 3)):
            shape.insert(
                draw(st.integers(0, len(shape))),
                draw(st.sampled_from([-1, 3 * 10**8, 2**31, 2**62, 2**63 - 1, 2**64, -(2**70)])),
            )
        item: dict = {"name": f"x{i}", "datatype": kind, "shape": shape}
        if draw(st.booleans()):
            data = draw(st.binary(max_size=32))
            binary.append(data)
            item["parameters"] = {"binary_data_size": len(data)}
        else:
            leaves = {"BYTES": st.text(max_size=4), "BOOL": st.booleans()}
            leaf = leaves.get(kind, st.integers(0, 9))
            item["data"] = draw(st.lists(leaf, max_size=8))
        inputs.append(item)
    return body_of({"inputs": inputs}, *binary)


@settings(
    max_examples=200, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)
@given(hostile_v2_body(), st.sampled_from(["", "1", "\u00b2", "stable"]))
def test_hostile_v2_shapes_are_refused_within_the_bodys_bound(
    body: tuple[bytes, str | None], version: str
) -> None:
    raw, length = body
    request, error, peak = traced(lambda: infer_request(raw, length, "m", version))
    assert peak <= json_bound(len(raw)), (peak, len(raw))
    if error is not None:
        assert isinstance(error, InvalidArgument), repr(error)
        assert "input 'x" in error.message
        return
    message, _ = request
    _, error, peak = traced(lambda: decode_inputs(message))
    assert peak <= bound(message.ByteSize())
    assert error is None or isinstance(error, InvalidArgument), repr(error)


@pytest.mark.parametrize("length", ["\u00b2", "\u0661", "1\u00b2"])
def test_a_header_length_of_unicode_digits_is_refused(length: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        infer_request(b"{}", length, "m", "")
    assert HEADER_LENGTH in e.value.message

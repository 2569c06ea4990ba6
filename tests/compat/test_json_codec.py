"""compat.json_codec against TF Serving's own expectations.

Cases come from tensorflow_serving/util/json_tensor_test.cc (request parsing, response writing,
classify/regress), model_servers/tensorflow_model_server_test.py (the REST golden answers) and
the metadata JSON TF Serving returned for the test models. Error messages are pinned in full:
they are json_tensor.cc's wording, which clients see in ``{"error": ...}``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compat import inference, json_codec
from compat.errors import Internal, InvalidArgument, ServingError, Unimplemented
from compat.json_codec import encode as json_encode
from compat.json_codec import predict as json_predict
from compat.json_codec import tensor as json_tensor
from compat.json_codec import values as json_values
from compat.protos import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    regression_pb2,
    saved_model_pb2,
    types_pb2,
)
from compat.signatures import Signature, TensorSpec, signatures_of
from tests.allocation import json_bound, traced
from tests.harness import TESTDATA

HALF_PLUS_TWO = TESTDATA / "saved_model_half_plus_two_cpu" / "00000123" / "saved_model.pb"
TWO_VERSIONS = TESTDATA / "saved_model_half_plus_two_2_versions" / "00000123" / "saved_model.pb"

DT = types_pb2


def sig(**inputs: int) -> Signature:
    """A predict signature with the given input aliases and dtypes."""
    specs = {alias: TensorSpec(f"{alias}:0", dtype, None) for alias, dtype in inputs.items()}
    return Signature("sig", "tensorflow/serving/predict", specs)


def decode(body: str | dict, signature: Signature) -> tuple[dict[str, np.ndarray], bool]:
    return json_codec.decode_predict_request(body, signature)


def error_of(call, *args) -> ServingError:
    with pytest.raises(ServingError) as info:
        call(*args)
    return info.value


def assert_tensor(actual: np.ndarray, expected: list | object, dtype: object) -> None:
    expected_array = np.array(expected, dtype=dtype)
    assert actual.dtype == expected_array.dtype
    assert actual.shape == expected_array.shape
    np.testing.assert_array_equal(actual, expected_array)


def read_signatures(path: Path) -> saved_model_pb2.SavedModel:
    saved_model = saved_model_pb2.SavedModel.FromString(path.read_bytes())
    return saved_model.meta_graphs[0]


# ---------------------------------------------- tensorflow_model_server_test.py (REST)


def test_half_plus_two_predict_rest_golden() -> None:
    signature = signatures_of(read_signatures(HALF_PLUS_TWO))["serving_default"]
    inputs, row = decode(json.dumps({"instances": [2.0, 3.0, 4.0]}), signature)
    assert row is True
    assert_tensor(inputs["x"], [2.0, 3.0, 4.0], np.float32)
    y = 0.5 * inputs["x"] + 2
    assert json_codec.encode_predict_response({"y": y}, row) == '{"predictions":[3.0,3.5,4.0]}'

    inputs, row = decode(json.dumps({"inputs": [2.0, 3.0, 4.0]}).encode(), signature)
    assert row is False
    y = 0.5 * inputs["x"] + 2
    assert json_codec.encode_predict_response({"y": y}, row) == '{"outputs":[3.0,3.5,4.0]}'


def test_two_versions_predict_rest_golden() -> None:
    signature = signatures_of(read_signatures(TWO_VERSIONS))["serving_default"]
    inputs, row = decode({"instances": [[1, 2], [3, 4]]}, signature)
    assert_tensor(inputs["x"], [[1, 2], [3, 4]], np.float32)
    out = json_codec.encode_predict_response({"y": 0.5 * inputs["x"] + 2}, row)
    assert json.loads(out) == {"predictions": [[2.5, 3.0], [3.5, 4.0]]}


def test_classify_and_regress_rest_golden() -> None:
    request_input = json_codec.decode_examples_request(
        '{"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}'
    )
    (example,) = request_input.example_list.examples
    assert list(example.features.feature["x"].float_list.value) == [2.0]
    assert json_codec.signature_name(json_codec.parse_json(b'{"signature_name": "c"}')) == "c"

    result = classification_pb2.ClassificationResult()
    result.classifications.add().classes.add(label="", score=3.0)
    assert json_codec.encode_classify_response(result) == '{"results":[[["",3.0]]]}'
    regression = regression_pb2.RegressionResult()
    regression.regressions.add(value=3.0)
    assert json_codec.encode_regress_response(regression) == '{"results":[3.0]}'


def test_status_json_golden() -> None:
    response = get_model_status_pb2.GetModelStatusResponse()
    status = response.model_version_status.add(
        version=123, state=get_model_status_pb2.ModelVersionStatus.AVAILABLE
    )
    status.status.SetInParent()
    assert json.loads(json_codec.encode_json_message(response)) == {
        "model_version_status": [
            {
                "version": "123",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }


def test_status_json_is_printed_as_tf_serving_prints_it() -> None:
    """protobuf's MessageToJsonString(add_whitespace, always_print_primitive_fields)."""
    response = get_model_status_pb2.GetModelStatusResponse()
    response.model_version_status.add(
        version=123, state=get_model_status_pb2.ModelVersionStatus.AVAILABLE
    ).status.SetInParent()
    assert json_codec.status_json(response) == (
        '{\n "model_version_status": [\n  {\n   "version": "123",\n   "state": "AVAILABLE",\n'
        '   "status": {\n    "error_code": "OK",\n    "error_message": ""\n   }\n  }\n ]\n}\n'
    )


def test_metadata_json_is_the_spec_and_the_signatures_printed_apart() -> None:
    text = json_codec.metadata_json(metadata_response(HALF_PLUS_TWO, "default", 123))
    assert text.startswith('{\n"model_spec":{\n "name": "default",')
    assert '\n}\n,\n"metadata": {"signature_def": {\n "signature_def": {' in text
    assert text.endswith("}\n}\n}\n")
    assert json.loads(text) == json.loads(
        (TESTDATA / "half_plus_two_model_metadata.json").read_text()
    )


def test_the_error_body_is_rapidjsons_pretty_print() -> None:
    assert json_codec.error_text('bad "é"\n') == '{\n    "error": "bad \\"é\\"\\n"\n}'


def metadata_response(
    pb: Path, name: str, version: int
) -> get_model_metadata_pb2.GetModelMetadataResponse:
    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    for key, signature_def in read_signatures(pb).signature_def.items():
        signature_defs.signature_def[key].CopyFrom(signature_def)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = name
    response.model_spec.version.value = version
    response.metadata["signature_def"].Pack(signature_defs)
    return response


@pytest.mark.parametrize(
    ("pb", "name", "golden"),
    [
        (HALF_PLUS_TWO, "default", "half_plus_two_model_metadata.json"),
        (
            TWO_VERSIONS,
            "saved_model_half_plus_two_2_versions",
            "saved_model_half_plus_two_2_versions_metadata.json",
        ),
    ],
    ids=["half_plus_two", "2_versions"],
)
def test_metadata_json_golden(pb: Path, name: str, golden: str) -> None:
    encoded = json_codec.encode_json_message(metadata_response(pb, name, 123))
    assert json.loads(encoded) == json.loads((TESTDATA / golden).read_text())


def test_metadata_without_signature_def_is_internal() -> None:
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    error = error_of(json_codec.encode_json_message, response)
    assert isinstance(error, Internal)
    response.metadata["signature_def"].Pack(model_pb2.ModelSpec(name="x"))
    message = error_of(json_codec.encode_json_message, response).message
    assert message == "Failed to unpack 'Any' object to 'SignatureDefMap'."


# ------------------------------------------------------ json_tensor_test.cc: requests


def test_single_unnamed_tensor() -> None:
    inputs, row = decode('{"instances": [[1,2],[3,4],[5,6]]}', sig(default=DT.DT_INT32))
    assert row
    assert_tensor(inputs["default"], [[1, 2], [3, 4], [5, 6]], np.int32)


def test_mixed_input_for_float_and_double_tensors() -> None:
    inputs, _ = decode('{"instances": [1, 2.0, 3, 4, 5.003, 0.007, 0.0]}', sig(default=DT.DT_FLOAT))
    assert_tensor(inputs["default"], [1, 2.0, 3, 4, 5.003, 0.007, 0.0], np.float32)
    inputs, _ = decode('{"instances": [1.0, 2, 3, 4, 0.662, 0, 0.0]}', sig(default=DT.DT_DOUBLE))
    assert_tensor(inputs["default"], [1.0, 2, 3, 4, 0.662, 0, 0.0], np.float64)


def test_signature_name_is_left_to_the_caller() -> None:
    body = '{"signature_name": "predict_images", "instances": [[1,2]]}'
    inputs, _ = decode(body, sig(default=DT.DT_INT32))
    assert_tensor(inputs["default"], [[1, 2]], np.int32)
    assert json_codec.signature_name(json.loads(body)) == "predict_images"
    assert json_codec.signature_name({}) == ""


def test_base64_scalars_lists_and_named() -> None:
    strings = sig(default=DT.DT_STRING)
    inputs, _ = decode('{"instances": [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}]}', strings)
    assert_tensor(inputs["default"], [b"hello", b"world"], object)
    inputs, _ = decode('{"instances": [[{"b64": "aGVsbG8="}], [{"b64": "d29ybGQ="}]]}', strings)
    assert_tensor(inputs["default"], [[b"hello"], [b"world"]], object)
    body = '{"instances": [{"default": [[{"b64": "aGVsbG8="}], [{"b64": "d29ybGQ="}]]}]}'
    inputs, _ = decode(body, strings)
    assert_tensor(inputs["default"], [[[b"hello"], [b"world"]]], object)
    inputs, _ = decode('{"inputs": {"b64": "aGVsbG8"}}', strings)  # unpadded is accepted
    assert_tensor(inputs["default"], b"hello", object)
    inputs, _ = decode('{"inputs": ["plain", "\\u00e9"]}', strings)
    assert_tensor(inputs["default"], [b"plain", "é".encode()], object)


def test_multiple_named_tensors_row_format() -> None:
    signature = sig(
        int_tensor=DT.DT_INT32,
        str_tensor=DT.DT_STRING,
        float_tensor=DT.DT_FLOAT,
        dbl_tensor=DT.DT_DOUBLE,
    )
    body = """{"instances": [
        {"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"],
         "float_tensor": [1.0, NaN], "dbl_tensor": [NaN]},
        {"int_tensor": [[7,8],[9,0],[1,2]], "str_tensor": ["baz", "bat"],
         "float_tensor": [2.0, Infinity], "dbl_tensor": [2.0]}]}"""
    inputs, row = decode(body, signature)
    assert row and len(inputs) == 4
    ints = [[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]]
    assert_tensor(inputs["int_tensor"], ints, np.int32)
    assert_tensor(inputs["str_tensor"], [[b"foo", b"bar"], [b"baz", b"bat"]], object)
    assert_tensor(inputs["float_tensor"], [[1.0, math.nan], [2.0, math.inf]], np.float32)
    assert_tensor(inputs["dbl_tensor"], [[math.nan], [2.0]], np.float64)


def test_columnar_format() -> None:
    single = sig(int_tensor=DT.DT_INT32)
    for body in (
        '{"inputs": {"int_tensor": [[[1,2],[3,4],[5,6]]]}}',
        '{"inputs": [[[1,2],[3,4],[5,6]]]}',
    ):
        inputs, row = decode(body, single)
        assert row is False
        assert_tensor(inputs["int_tensor"], [[[1, 2], [3, 4], [5, 6]]], np.int32)
    signature = sig(int_tensor=DT.DT_INT32, str_tensor=DT.DT_STRING, bin_tensor=DT.DT_STRING)
    body = """{"inputs": {"int_tensor": [[[1,2],[3,4],[5,6]]], "str_tensor": ["foo", "bar"],
                          "bin_tensor": {"b64": "aGVsbG8="}, "ignored_extra_key": 1}}"""
    inputs, _ = decode(body, signature)
    assert sorted(inputs) == ["bin_tensor", "int_tensor", "str_tensor"]
    assert_tensor(inputs["str_tensor"], [b"foo", b"bar"], object)
    assert_tensor(inputs["bin_tensor"], b"hello", object)  # a scalar: shape []


@pytest.mark.parametrize(
    ("dtype", "value", "expected"),
    [
        (DT.DT_INT8, [1, -128, 300], np.array([1, -128, 300]).astype(np.int8)),  # static_cast wraps
        (DT.DT_UINT8, [0, 255], np.array([0, 255], np.uint8)),
        (DT.DT_INT16, [-3], np.array([-3], np.int16)),
        (DT.DT_INT64, [2**63 - 1, -(2**63)], np.array([2**63 - 1, -(2**63)], np.int64)),
        (DT.DT_UINT32, [2**32 - 1], np.array([2**32 - 1], np.uint32)),
        (DT.DT_UINT64, [2**64 - 1], np.array([2**64 - 1], np.uint64)),
        (DT.DT_BOOL, [[True], [False]], np.array([[True], [False]])),
        (
            DT.DT_FLOAT,
            [16777215, -16777215, 1e38],
            np.array([16777215, -16777215, 1e38], np.float32),
        ),
        (DT.DT_DOUBLE, [2**53 - 1, 1e300], np.array([2**53 - 1, 1e300])),
        (DT.DT_FLOAT, [[], []], np.zeros((2, 0), np.float32)),
        (DT.DT_STRING, [], np.zeros((0,), object)),
        # Beyond TF Serving, which answers UNIMPLEMENTED for these dtypes:
        (DT.DT_HALF, [1.5, 2], np.array([1.5, 2], np.float16)),
        (DT.DT_UINT16, [65535], np.array([65535], np.uint16)),
    ],
)
def test_dtypes_decode(dtype: int, value: list, expected: np.ndarray) -> None:
    inputs, _ = decode({"inputs": value}, sig(t=dtype))
    assert inputs["t"].dtype == expected.dtype
    np.testing.assert_array_equal(inputs["t"], expected)
    batched, _ = decode({"instances": [value, value]}, sig(t=dtype))
    np.testing.assert_array_equal(batched["t"], np.stack([expected, expected]))


# Every request error json_tensor.cc raises, with its full message. "{doc}" is the request
# as rapidjson's PrettyWriter prints it.
INT = sig(default=DT.DT_INT32)
FLOAT = sig(default=DT.DT_FLOAT)
STRING = sig(default=DT.DT_STRING)
TWO = sig(int_tensor=DT.DT_INT32, str_tensor=DT.DT_STRING)
ELEMENT = "Failed to process element: {} of 'instances' list. Error: INVALID_ARGUMENT: "
REQUEST_ERRORS = {
    "empty": ("", INT, "JSON Parse error: The document is empty"),
    "blank": ("  \n", INT, "JSON Parse error: The document is empty. at offset: 3"),
    "invalid_value": ('{"instances": [1,]}', INT, "JSON Parse error: Invalid value. at offset: 17"),
    "array_comma": (
        '{"instances": [1 2]}',
        INT,
        "JSON Parse error: Missing a comma or ']' after an array element. at offset: 17",
    ),
    "object_comma": (
        '{"a": 1 "b": 2}',
        INT,
        "JSON Parse error: Missing a comma or '}' after an object member. at offset: 8",
    ),
    "not_object": ("[1, 2]", INT, "JSON Value: [\n    1,\n    2\n] Is not object"),
    "signature_not_string": (
        '{"signature_name": 5, "instances": [[1]]}',
        INT,
        'JSON Value: {\n    "signature_name": 5,\n    "instances": [\n        [\n            1\n'
        "        ]\n    ]\n} not formatted correctly. 'signature_name' key must be a string value.",
    ),
    "both_keys": (
        '{"instances": [1], "inputs": {}}',
        INT,
        'JSON Value: {\n    "instances": [\n        1\n    ],\n    "inputs": {}\n} Not formatted '
        "correctly expecting only one of 'inputs' or 'instances' keys to exist ",
    ),
    "instances_not_list": (
        '{"instances": 5}',
        INT,
        "JSON Value: {\n    \"instances\": 5\n} Excepting 'instances' to be an list/array",
    ),
    "instances_empty": (
        '{"instances": []}',
        INT,
        "JSON Value: {\n    \"instances\": []\n} No values in 'instances' array",
    ),
    "missing_keys": ('{"signature_name": "x"}', INT, "Missing 'inputs' or 'instances' key"),
    "no_inputs": ('{"inputs": 1}', sig(), "Failed to get input map for signature: DEFAULT"),
    "no_inputs_named": (
        '{"signature_name": "s", "inputs": 1}',
        sig(),
        "Failed to get input map for signature: s",
    ),
    "tensor_size": (
        '{"instances": [[1,2],[3,4],[5,6,7]]}',
        INT,
        ELEMENT.format(2) + "Expecting tensor size: 2 but got: 3",
    ),
    "shape": (
        '{"instances": [[1,2],[3,4],[[5,6]]]}',
        INT,
        ELEMENT.format(2) + "Expecting shape [2] but got: [1,2]",
    ),
    "shape_scalar": (
        '{"instances": [1, [1]]}',
        INT,
        ELEMENT.format(1) + "Expecting shape [] but got: [1]",
    ),
    "type": (
        '{"instances": [[1,2],["a", "b"]]}',
        INT,
        ELEMENT.format(1) + 'JSON Value: "a" Type: String is not of expected type: int32',
    ),
    "float_for_int": (
        '{"inputs": [1.5]}',
        INT,
        "JSON Value: 1.5 Type: Number is not of expected type: int32",
    ),
    "bool_for_float": (
        '{"inputs": [true]}',
        FLOAT,
        "JSON Value: true Type: True is not of expected type: float",
    ),
    "null_for_string": (
        '{"inputs": [null]}',
        STRING,
        "JSON Value: null Type: Null is not of expected type: string",
    ),
    "int32_overflow": (
        '{"inputs": [2147483648]}',
        INT,
        "JSON Value: 2147483648 Type: Number is not of expected type: int32",
    ),
    "b64_for_int": (
        '{"inputs": {"b64": "aGVsbG8="}}',
        INT,
        'JSON Value: {\n    "b64": "aGVsbG8="\n} Type: Object is not of expected type: int32',
    ),
    "list_too_deep": (
        '{"inputs": [[1,[2]]]}',
        INT,
        "Encountered list at unexpected level: 2 expected < 2",
    ),
    "list_wrong_size": (
        '{"inputs": [[1,2],[3]]}',
        INT,
        "Encountered list at unexpected size: 1 at level: 1 expected size: 2",
    ),
    "value_too_shallow": (
        '{"inputs": [[1,2],3]}',
        INT,
        "JSON Value: 3 found at incorrect level: 2 in the JSON DOM. Expected at level: 2",
    ),
    "float_max_double": (
        '{"instances": [1.79769e+308]}',
        FLOAT,
        ELEMENT.format(0)
        + "Cannot convert JSON value: 1.79769e+308 to float without loss of precision.",
    ),
    "float_int_precision": (
        '{"instances": [16777217]}',
        FLOAT,
        ELEMENT.format(0)
        + "Cannot convert JSON value: 16777217 to float without loss of precision.",
    ),
    "double_int_precision": (
        '{"instances": [9007199254740993]}',
        sig(default=DT.DT_DOUBLE),
        ELEMENT.format(0)
        + "Cannot convert JSON value: 9007199254740993 to double without loss of precision.",
    ),
    "bad_b64": ('{"inputs": [{"b64": "!!!"}]}', STRING, "Unable to base64 decode"),
    "b64_not_string": (
        '{"inputs": [{"b64": 1}]}',
        STRING,
        'JSON Value: {\n    "b64": 1\n} not formatted correctly for base64 data',
    ),
    "plain_list_multiple_inputs": (
        '{"instances": [1, 2]}',
        TWO,
        "instances is a plain list, but expecting list of objects as multiple input tensors "
        "required as per tensorinfo_map",
    ),
    "object_then_list": (
        '{"instances": [{"int_tensor": 1, "str_tensor": "a"}, [1, 20, 30]]}',
        TWO,
        "Expecting object but got list at item 1 of input list",
    ),
    "list_then_object": (
        '{"instances": [["baz", "bar"], {"str_tensor": ["baz", "bat"]}]}',
        sig(str_tensor=DT.DT_STRING),
        "Expecting value/list but got object at item 1 of input list",
    ),
    "unknown_key": (
        '{"instances": [{"int_tensor": 1, "nope": 1, "str_tensor": "a"}]}',
        TWO,
        "Failed to process element: 0 key: nope of 'instances' list. Error: INVALID_ARGUMENT: "
        "JSON object: does not have named input: nope",
    ),
    "missing_key": (
        '{"instances": [{"int_tensor": [1]}]}',
        TWO,
        "Failed to process element: 0 of 'instances' list. JSON object: {\n    \"int_tensor\": "
        "[\n        1\n    ]\n} keys must be equal to: int_tensor,str_tensor",
    ),
    "named_shape": (
        '{"instances": [{"int_tensor": [[1,2]], "str_tensor": "a"}, '
        '{"int_tensor": [[[1,2]]], "str_tensor": "b"}]}',
        TWO,
        "Failed to process element: 1 key: int_tensor of 'instances' list. Error: "
        "INVALID_ARGUMENT: Expecting shape [1,2] but got: [1,1,2]",
    ),
    "plain_inputs_multiple": (
        '{"inputs": [1]}',
        TWO,
        "inputs is a plain value/list, but expecting an object as multiple input tensors "
        "required as per tensorinfo_map",
    ),
    "missing_named_input": (
        '{"inputs": {"int_tensor": 1}}',
        TWO,
        "Missing named input: str_tensor in 'inputs' object.",
    ),
    "unsupported_dtype_row": (
        '{"instances": [1]}',
        sig(c=DT.DT_COMPLEX64),
        "Failed to process element: 0 of 'instances' list. Error: UNIMPLEMENTED: "
        "Conversion of JSON Value: 1 to type: complex64",
    ),
}


@pytest.mark.parametrize(
    ("body", "signature", "message"), REQUEST_ERRORS.values(), ids=REQUEST_ERRORS.keys()
)
def test_request_errors(body: str, signature: Signature, message: str) -> None:
    error = error_of(decode, body, signature)
    assert isinstance(error, InvalidArgument)
    assert error.message == message


HUGE = 1_000_000
"""Elements (or characters) of a request value an error message quotes."""

QUOTING_ERRORS = {
    "not_an_object": (
        lambda: json_codec.parse_json(json.dumps(list(range(HUGE))).encode()),
        "JSON Value: [\n    0,\n    1,",
        " Is not object",
    ),
    "instances_not_a_list": (
        lambda: decode({"instances": "x" * HUGE}, sig(x=DT.DT_FLOAT)),
        'JSON Value: {\n    "instances": "xxx',
        " Excepting 'instances' to be an list/array",
    ),
    "examples_not_a_list": (
        lambda: json_codec.decode_examples_request({"examples": {"k": [1.5] * HUGE}}),
        'JSON Value: {\n    "examples": {\n        "k": [\n            1.5,',
        " Expecting 'examples' value to be an list/array",
    ),
    "value_of_the_wrong_type": (
        lambda: decode({"instances": [{"s": ["x" * HUGE]}]}, sig(s=DT.DT_FLOAT)),
        "Failed to process element: 0 key: s of 'instances' list. Error: INVALID_ARGUMENT: "
        'JSON Value: "xxx',
        " Type: String is not of expected type: float",
    ),
}


@pytest.mark.parametrize(
    ("call", "starts", "ends"), QUOTING_ERRORS.values(), ids=QUOTING_ERRORS.keys()
)
def test_quoted_request_values_are_cut_at_1024_characters(call, starts: str, ends: str) -> None:
    """An error that quotes a request's value (``JSON Value: ...``, rapidjson's print of it)
    quotes its first 1024 characters and TF Serving's marker, however big the value: the
    message, and the work of printing it, do not grow with the request."""
    message = error_of(call).message
    assert message.startswith(starts) and message.endswith(ends), message[:200]
    assert "...TRUNCATED" in message
    assert len(message) < 1024 + len("...TRUNCATED") + 200, len(message)


def test_values_within_the_bound_are_quoted_whole() -> None:
    value = {"a": [1, 2.5, {"b": "x" * 900}], "c": []}
    assert json_values._pretty(value) == (
        '{\n    "a": [\n        1,\n        2.5,\n        {\n            "b": "'
        + "x" * 900
        + '"\n        }\n    ],\n    "c": []\n}'
    )


def test_unsupported_dtype_columnar_is_unimplemented() -> None:
    error = error_of(decode, '{"inputs": [1]}', sig(c=DT.DT_COMPLEX64))
    assert isinstance(error, Unimplemented)
    assert error.message == "Conversion of JSON Value: 1 to type: complex64"


def test_invalid_utf8_is_a_parse_error() -> None:
    error = error_of(decode, b'{"inputs": ["\xff"]}', STRING)
    assert error.message == "JSON Parse error: Invalid encoding in string. at offset: 13"


def test_error_values_print_like_rapidjson() -> None:
    render = json_values._value_to_string
    assert render(0.1) == "0.1"  # top-level doubles go through WriteDecimal<float>
    assert render(3.14159265) == "3.14159274"
    assert render(2.0) == "2.0"
    assert render(1e300) == "1e+300"
    assert render([1.5, 1e21, 1e22, 1e-7, 0.001, -0.0, 2**70, "é\n"]) == (
        "[\n    1.5,\n    1e21,\n    1e22,\n    1e-7,\n    0.001,\n    -0.0,\n"
        '    1.1805916207174113e21,\n    "é\\n"\n]'
    )
    assert render({}) == "{}" and render([]) == "[]" and render({"a": {}}) == '{\n    "a": {}\n}'


# Valid bodies on which the numpy fast path must agree with the value-by-value port.
EQUIVALENCE = [
    ({"instances": [1, 2.5, -0.0, 16777215, 1e38, math.nan]}, FLOAT),
    ({"instances": [[1, 2], [3, 4]]}, INT),
    ({"instances": [[1, 2], [3, 4]]}, sig(default=DT.DT_DOUBLE)),
    ({"instances": [[True, False]]}, sig(default=DT.DT_BOOL)),
    ({"instances": ["a", "bc"]}, STRING),
    ({"instances": [{"int_tensor": [1, 2], "str_tensor": "x"}] * 3}, TWO),
    ({"instances": [[[], []]]}, FLOAT),
    ({"instances": [2**64 - 1, 0]}, sig(default=DT.DT_UINT64)),
    ({"instances": [-(2**63), 0]}, sig(default=DT.DT_INT64)),
]


@pytest.mark.parametrize(("body", "signature"), EQUIVALENCE)
def test_fast_path_matches_reference(body: dict, signature: Signature) -> None:
    fast = json_predict._instances_fast(body["instances"], signature.inputs)
    slow = json_predict._Instances(signature.inputs).decode(body["instances"])
    assert fast is not None and sorted(fast) == sorted(slow)
    for name, tensor in slow.items():
        assert fast[name].dtype == tensor.dtype and fast[name].shape == tensor.shape
        np.testing.assert_array_equal(fast[name], tensor)


@pytest.mark.parametrize(
    "value",
    [[1, True], [[1], [[2]]], [[1, 2], [3]], [2**64], [1, "a"], [{"b64": "YQ=="}], [16777216]],
)
def test_fast_path_declines_what_needs_exact_checks(value: list) -> None:
    assert json_tensor._tensor_fast(value, DT.DT_FLOAT) is None


# ------------------------------------------------------ json_tensor_test.cc: responses


def encode(outputs: dict, row: bool = True) -> str:
    return json_codec.encode_predict_response(outputs, row)


def test_single_tensor_row_and_columnar() -> None:
    ints = np.array([[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]], np.int32)
    assert (
        encode({"int_tensor": ints}) == '{"predictions":[[[1,2],[3,4],[5,6]],[[7,8],[9,0],[1,2]]]}'
    )
    assert (
        encode({"int_tensor": ints}, False)
        == '{"outputs":[[[1,2],[3,4],[5,6]],[[7,8],[9,0],[1,2]]]}'
    )
    vector = np.arange(1, 6, dtype=np.int32)
    assert encode({"int_tensor": vector}) == '{"predictions":[1,2,3,4,5]}'
    assert encode({"int_tensor": vector}, False) == '{"outputs":[1,2,3,4,5]}'
    assert encode({"scalar": np.float32(2)}, False) == '{"outputs":2.0}'


def test_bytes_tensor_written_as_b64() -> None:
    strings = np.array([[b"hello", b"world"], [b"tf", b"serving"]], dtype=object)
    assert json.loads(encode({"str_tensor_bytes": strings})) == {
        "predictions": [
            [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}],
            [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}],
        ]
    }
    assert (
        encode({"str_tensor": strings}, False) == '{"outputs":[["hello","world"],["tf","serving"]]}'
    )
    assert encode({"q_bytes": np.array(["é"])}, False) == '{"outputs":[{"b64":"w6k="}]}'


def test_float_formatting_six_digits_then_full_precision() -> None:
    floats = np.array([[9000000, 999999, 0.5], [0.0003, 0.00003, 555557.5]], np.float32)
    assert encode({"float_tensor": floats}) == (
        '{"predictions":[[9e+06,999999.0,0.5],[0.0003,3e-05,555557.5]]}'
    )
    special = np.array([[math.nan, math.inf], [3, -math.inf]], np.float32)
    assert encode({"float_tensor": special}) == '{"predictions":[[NaN,Infinity],[3.0,-Infinity]]}'
    doubles = np.array([0.1, 1 / 3, 2.0, 1e100], np.float64)
    assert encode({"d": doubles}, False) == '{"outputs":[0.1,0.33333333333333331,2.0,1e+100]}'


@pytest.mark.parametrize(
    ("value", "ftype", "text"),
    [
        (3.0, np.float32, "3.0"),
        (3.5, np.float32, "3.5"),
        (0.1, np.float32, "0.1"),
        (np.float32(np.pi), np.float32, "3.14159274"),
        (16777216.0, np.float32, "16777216.0"),
        (1e-45, np.float32, "1.4013e-45"),
        (-0.0, np.float32, "-0.0"),
        (123456.0, np.float32, "123456.0"),
        (1234567.0, np.float32, "1234567.0"),
        (1e10, np.float32, "1e+10"),
        (np.float32(0.2), np.float32, "0.2"),
        (math.nan, np.float32, "NaN"),
        (-math.inf, np.float64, "-Infinity"),
        (0.1, np.float64, "0.1"),
        (0.3 + 0.6, np.float64, "0.89999999999999991"),
    ],
)
def test_write_decimal(value: float, ftype: type, text: str) -> None:
    value = float(ftype(value))
    assert json_codec.write_decimal(value, ftype) == text
    assert json_encode._decimal_tokens(np.array([value]), ftype) == [text]


def test_response_dtypes() -> None:
    outputs = {
        "b": np.array([True, False]),
        "i8": np.array([-1, 2], np.int8),
        "u64": np.array([2**64 - 1, 0], np.uint64),
        "h": np.array([1.5, 0.1], np.float16),  # beyond TF Serving, which cannot write half
    }
    assert json.loads(encode(outputs, False)) == {
        "outputs": {
            "b": [True, False],
            "i8": [-1, 2],
            "u64": [2**64 - 1, 0],
            "h": [1.5, 0.0999755859],
        }
    }
    assert encode({"h": outputs["h"]}, False) == '{"outputs":[1.5,0.0999755859]}'


def test_response_errors() -> None:
    assert error_of(encode, {}).message == "Cannot convert empty tensor map to JSON"
    complex_error = error_of(encode, {"tensor": np.array([1 + 2j], np.complex64)})
    assert complex_error.message == "Failed to write JSON value for tensor type: complex64"
    assert isinstance(complex_error, InvalidArgument)
    assert (
        error_of(encode, {"tensor": np.int32(1)}).message
        == "Tensor name: tensor has no shape information "
    )
    mismatch = {
        "int_tensor": np.zeros((2, 3), np.int32),
        "str_tensor": np.array([[b"a"] * 3], object),
    }
    assert error_of(encode, mismatch).message == (
        "Tensor name: str_tensor has inconsistent batch size: 1 expecting: 2"
    )
    zero_then_one = {"a": np.zeros((0, 2), np.int32), "b": np.array([[b"x", b"y"]], object)}
    assert "inconsistent batch size: 1 expecting: 0" in error_of(encode, zero_then_one).message


def test_multiple_named_tensors() -> None:
    outputs = {
        "int_tensor": np.array([[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]], np.int32),
        "str_tensor": np.array([[b"foo", b"bar"], [b"baz", b"bat"]], object),
        "float_tensor": np.array([[1.0], [2.0]], np.float32),
        "double_scalar_tensor": np.array([8.0, 9.0]),
        "str_tensor_bytes": np.array([[b"hello", b"world"], [b"tf", b"serving"]], object),
    }
    assert json.loads(encode(outputs)) == {
        "predictions": [
            {
                "double_scalar_tensor": 8.0,
                "float_tensor": [1.0],
                "int_tensor": [[1, 2], [3, 4], [5, 6]],
                "str_tensor": ["foo", "bar"],
                "str_tensor_bytes": [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}],
            },
            {
                "double_scalar_tensor": 9.0,
                "float_tensor": [2.0],
                "int_tensor": [[7, 8], [9, 0], [1, 2]],
                "str_tensor": ["baz", "bat"],
                "str_tensor_bytes": [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}],
            },
        ]
    }
    assert json.loads(encode(outputs, False)) == {
        "outputs": {
            "double_scalar_tensor": [8.0, 9.0],
            "float_tensor": [[1.0], [2.0]],
            "int_tensor": [[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]],
            "str_tensor": [["foo", "bar"], ["baz", "bat"]],
            "str_tensor_bytes": [
                [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}],
                [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}],
            ],
        }
    }


def test_zero_batch_tensors() -> None:
    assert encode({"int_tensor": np.zeros((0, 2), np.int32)}) == '{"predictions":[]}'
    both = {
        "str_tensor": np.zeros((0, 1, 2), object),
        "float_tensor": np.zeros((0, 3, 4), np.float32),
    }
    assert encode(both) == '{"predictions":[]}'
    assert encode({"e": np.zeros((2, 0), np.float32)}, False) == '{"outputs":[[],[]]}'


# ----------------------------------------------- json_tensor_test.cc: classify/regress


def test_examples_request_without_context() -> None:
    request_input = json_codec.decode_examples_request(
        """{"examples": [{"names": ["foo", "bar"], "ratings": [8.0, 9.0], "age": 20},
                         {"names": ["baz"], "ratings": 6.0}]}"""
    )
    first, second = request_input.example_list.examples
    assert list(first.features.feature["names"].bytes_list.value) == [b"foo", b"bar"]
    assert list(first.features.feature["ratings"].float_list.value) == [8.0, 9.0]
    assert list(first.features.feature["age"].int64_list.value) == [20]
    assert list(second.features.feature["names"].bytes_list.value) == [b"baz"]
    assert list(second.features.feature["ratings"].float_list.value) == [6.0]
    assert not request_input.HasField("example_list_with_context")


def test_examples_request_with_context() -> None:
    request_input = json_codec.decode_examples_request(
        """{"signature_name": "custom_signture",
            "context": {"query": "pizza", "location": ["sfo"]},
            "examples": [
              {"names": ["foo", "bar"], "ratings": [8.0, 9.0, NaN, Infinity], "age": 20},
              {"names": ["baz", {"b64": "aGVsbG8="}], "ratings": 6.0,
               "intboolmix": [1, true, false]},
              {"names": "bar", "ratings": -Infinity, "empty": []}]}"""
    )
    listed = request_input.example_list_with_context
    assert list(listed.context.features.feature["query"].bytes_list.value) == [b"pizza"]
    assert list(listed.context.features.feature["location"].bytes_list.value) == [b"sfo"]
    first, second, third = listed.examples
    ratings = list(first.features.feature["ratings"].float_list.value)
    assert ratings[:2] == [8.0, 9.0] and math.isnan(ratings[2]) and ratings[3] == math.inf
    assert list(second.features.feature["names"].bytes_list.value) == [b"baz", b"hello"]
    assert list(second.features.feature["intboolmix"].int64_list.value) == [1, 1, 0]
    assert list(third.features.feature["ratings"].float_list.value) == [-math.inf]
    assert third.features.feature["empty"].WhichOneof("kind") is None


EXAMPLE_ERRORS = {
    "signature_not_string": (
        '{"signature_name": ["hello"], "examples": [{"names": ["foo"]}]}',
        'JSON Value: {\n    "signature_name": [\n        "hello"\n    ],\n    "examples": [\n'
        '        {\n            "names": [\n                "foo"\n            ]\n        }\n'
        "    ]\n} not formatted correctly. 'signature_name' key must be a string value.",
    ),
    "context_not_object": (
        '{"context": [{"names": ["foo", "bar"]}]}',
        "Example must be JSON object but got JSON Array",
    ),
    "no_examples": (
        '{"context": {}}',
        "JSON Value: {\n    \"context\": {}\n} When method is classify, key 'examples' "
        "is expected and was not found",
    ),
    "examples_not_list": (
        '{"examples": {"names": 1}}',
        'JSON Value: {\n    "examples": {\n        "names": 1\n    }\n} '
        "Expecting 'examples' value to be an list/array",
    ),
    "examples_empty": (
        '{"examples": []}',
        "JSON Value: {\n    \"examples\": []\n} 'examples' value is an empty array",
    ),
    "example_not_object": (
        '{"examples": [[{"names": ["foo", "bar"]}]]}',
        "Example must be JSON object but got JSON Array",
    ),
    "null": (
        '{"examples": [{"names": [10, null]}]}',
        "Feature: names has element with unexpected JSON type: Null",
    ),
    "int_then_float": (
        '{"examples": [{"names": [10, 10.0]}]}',
        "Unexpected element type in feature: names expecting type: int64",
    ),
    "float_then_string": (
        '{"examples": [{"names": [1.5, "a"]}]}',
        "Unexpected element type in feature: names expecting type: float",
    ),
    "string_then_bool": (
        '{"examples": [{"names": ["a", true]}]}',
        "Unexpected element type in feature: names expecting type: bytes",
    ),
    "object": (
        '{"examples": [{"names": [10, {"test": 10}]}]}',
        "Feature: names has element with unexpected JSON type: Object",
    ),
    "nested_list": (
        '{"examples": [{"names": [[10], 20]}]}',
        "Feature: names has element with unexpected JSON type: Array",
    ),
    "uint64": (
        '{"examples": [{"names": [20, 18446744073709551603]}]}',
        "Feature: names has uint64 element. Only int64 is supported.",
    ),
    "lossy_float": (
        '{"examples": [{"names": 1.79769e+308}]}',
        "Cannot convert JSON value: 1.79769e+308 to float without loss of precision.",
    ),
    "bad_b64": ('{"examples": [{"names": {"b64": "%%"}}]}', "Unable to base64 decode"),
}


@pytest.mark.parametrize(("body", "message"), EXAMPLE_ERRORS.values(), ids=EXAMPLE_ERRORS.keys())
def test_examples_request_errors(body: str, message: str) -> None:
    error = error_of(json_codec.decode_examples_request, body)
    assert isinstance(error, InvalidArgument)
    assert error.message == message


def test_classification_and_regression_results() -> None:
    result = classification_pb2.ClassificationResult()
    for scores in ([0.2, 0.7, 0.1], [0.7, 0.1, 0.2]):
        classes = result.classifications.add().classes
        for label, score in zip(["car", "bike", "bus"], scores, strict=True):
            classes.add(label=label, score=score)
    assert json_codec.encode_classify_response(result) == (
        '{"results":[[["car",0.2],["bike",0.7],["bus",0.1]],[["car",0.7],["bike",0.1],["bus",0.2]]]}'
    )
    regression = regression_pb2.RegressionResult()
    for value in (0.2, math.inf, 1.0, -math.inf, math.nan):
        regression.regressions.add(value=value)
    assert json_codec.encode_regress_response(regression) == (
        '{"results":[0.2,Infinity,1.0,-Infinity,NaN]}'
    )
    assert error_of(
        json_codec.encode_classify_response, classification_pb2.ClassificationResult()
    ).message == ("Cannot convert empty ClassificationResults to JSON")
    assert error_of(
        json_codec.encode_regress_response, regression_pb2.RegressionResult()
    ).message == ("Cannot convert empty RegressionResults to JSON")


def test_parse_json_variants() -> None:
    assert json_codec.parse_json(b'\xef\xbb\xbf{"a": 1}') == {"a": 1}  # UTF-8 BOM skipped
    assert json_codec.parse_json({"a": 1}) == {"a": 1}
    assert error_of(json_codec.parse_json, [1]).message == "JSON Value: [\n    1\n] Is not object"
    huge = '{"inputs": [' + "9" * 5000 + "]}"
    assert error_of(json_codec.parse_json, huge).message.startswith("JSON Parse error: ")
    error = error_of(json_codec.parse_json, '{"a": "\\x"}')
    assert error.message == "JSON Parse error: Invalid escape character in string. at offset: 7"


# --- a request's memory is bounded by its size ------------------------------------------

_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=6),
    st.fixed_dictionaries({"b64": st.sampled_from(["AAAA", "not b64!", ""])}),
)
_value = st.recursive(
    _leaf,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(["x", "s", "b64"]), children, max_size=2)
    ),
    max_leaves=12,
)


@st.composite
def hostile_json_body(draw: st.DrawFn) -> bytes:
    """A REST body: keys of predict and classify requests holding a small value, repeated (up
    to 300 times) or nested (up to 300 deep)."""
    doc: dict[str, object] = {}
    for key in draw(
        st.lists(
            st.sampled_from(["instances", "inputs", "signature_name", "examples", "context"]),
            max_size=3,
            unique=True,
        )
    ):
        value = draw(_value)
        for _ in range(draw(st.sampled_from([0, 0, 30, 300]))):
            value = [value]
        doc[key] = [value] * draw(st.sampled_from([1, 30, 300])) if draw(st.booleans()) else value
    text = json.dumps(doc, allow_nan=True) if doc else "{}"
    return text.encode()


_FUZZ = settings(
    max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)


@_FUZZ
@given(hostile_json_body(), st.sampled_from([DT.DT_FLOAT, DT.DT_INT64, DT.DT_STRING, DT.DT_BOOL]))
def test_json_bodies_cost_a_small_multiple_of_their_size(body: bytes, dtype: int) -> None:
    """Predict (fast parse and reference parse) and classify: each answers or refuses with a
    ServingError, within ``JSON_FACTOR`` x the body (+ the context merge when one is made)."""
    signature = sig(x=dtype)
    for decode_body in (
        lambda: json_codec.decode_predict_request(json_codec.parse_predict_json(body), signature),
        lambda: json_codec.decode_predict_request(body, signature),
    ):
        _, error, peak = traced(decode_body)
        assert error is None or isinstance(error, ServingError), repr(error)
        assert peak <= json_bound(len(body)), (peak, len(body))
    examples, error, peak = traced(
        lambda: inference.serialized_examples(json_codec.decode_examples_request(body))
    )
    assert error is None or isinstance(error, ServingError), repr(error)
    merged = 0 if examples is None else sum(len(e) for e in examples.tolist())
    assert peak <= json_bound(len(body), merged), (peak, len(body))


@_FUZZ
@given(_value)
def test_values_quoted_in_messages_print_as_rapidjson_does(value: object) -> None:
    """PrettyWriter's layout is json.dumps's with a 4-space indent (doubles aside)."""
    text = json.dumps(value)
    if any(mark in text for mark in (".", "e", "E", "Infinity", "NaN")) or re.search(
        r"\d{19}", text
    ):
        return  # doubles, and integers that rapidjson holds as doubles
    assert json_values._pretty(value) == json.dumps(value, indent=4, ensure_ascii=False)


def test_a_deeply_nested_value_in_a_message_is_cut() -> None:
    """Each level indents four more spaces: 100 levels, 200 times, would print 8 MB from 40 KB."""
    deep = "[" * 100 + "1" + "]" * 100
    body = '{"instances": 1, "inputs": [' + ",".join([deep] * 200) + "]}"
    error = error_of(decode, body, sig(x=DT.DT_FLOAT))
    assert error.message.startswith('JSON Value: {\n    "instances": 1,\n    "inputs": [\n')
    assert len(error.message) < json_values.QUOTE_LIMIT + 200
    assert "...TRUNCATED" in error.message

"""TF Serving's REST API against a live server: its own REST tests, versions and labels, every
error the server can produce with TF Serving's message and HTTP status, gzip, REST and gRPC
agreeing, DeepLab over REST, and the health checks.

One server per module, configured with a model config file: TF Serving's half_plus_two under
the name its test uses ("default", which ``half_plus_two_model_metadata.json`` names),
``saved_model_half_plus_two_2_versions`` with every version and two labels, and DeepLab.
"""

from __future__ import annotations

import base64
import gzip
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import classification_pb2, predict_pb2, regression_pb2

from compat.errors import HTTP_STATUS
from tests.harness import TESTDATA, Server, start_server

DEFAULT = "default"
TWO = "saved_model_half_plus_two_2_versions"
DEEPLAB = "deeplab"
DEEPLAB_SIZE = 32


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, deeplab_base: Path) -> Iterator[Server]:
    deeplab = (
        f'config {{ name: "{DEEPLAB}" base_path: "{deeplab_base}" model_platform: "tensorflow" }}'
    )
    config = tmp_path_factory.mktemp("rest") / "models.config"
    config.write_text(
        f"""model_config_list {{
  config {{
    name: "{DEFAULT}"
    base_path: "{TESTDATA / "saved_model_half_plus_two_cpu"}"
    model_platform: "tensorflow"
  }}
  config {{
    name: "{TWO}"
    base_path: "{TESTDATA / "saved_model_half_plus_two_2_versions"}"
    model_platform: "tensorflow"
    model_version_policy {{ all {{}} }}
    version_labels {{ key: 'stable' value: 123 }}
    version_labels {{ key: 'canary' value: 124 }}
  }}
  {deeplab}
}}
"""
    )
    models = (DEFAULT, TWO, DEEPLAB)
    s = start_server(f"model_config_file={config}", wait_for=models)
    try:
        for version in (123, 124):
            s.wait_available(TWO, version)
        yield s
    finally:
        s.stop()


# --- a tiny HTTP client (urllib, no retries) ---------------------------------------------------


class Answer:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    server: Server,
    path: str,
    body: Any = None,
    method: str | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        server.http_base + path, data=data, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return Answer(r.status, r.headers, r.read())
    except urllib.error.HTTPError as e:
        return Answer(e.code, e.headers, e.read())


def post(server: Server, path: str, body: Any, **kw: Any) -> Answer:
    return call(server, path, body, method="POST", **kw)


def ok_json(answer: Answer) -> Any:
    assert answer.status == 200, answer.text
    assert answer.headers["Content-Type"] == "application/json"
    return answer.json()


# --- TF Serving's own REST tests (tensorflow_model_server_test.py) ----------------------------


def test_classify_rest(server: Server) -> None:
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}
    assert ok_json(post(server, "/v1/models/default:classify", body)) == {"results": [[["", 3.0]]]}


def test_regress_rest(server: Server) -> None:
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}
    assert ok_json(post(server, "/v1/models/default:regress", body)) == {"results": [3.0]}


def test_predict_rest(server: Server) -> None:
    body = {"instances": [2.0, 3.0, 4.0]}
    assert ok_json(post(server, "/v1/models/default:predict", body)) == {
        "predictions": [3.0, 3.5, 4.0]
    }


def test_predict_columnar_rest(server: Server) -> None:
    body = {"inputs": [2.0, 3.0, 4.0]}
    assert ok_json(post(server, "/v1/models/default:predict", body)) == {"outputs": [3.0, 3.5, 4.0]}


def test_status_rest_exactly_as_tf_serving_prints_it(server: Server) -> None:
    answer = call(server, "/v1/models/default")
    assert ok_json(answer) == {
        "model_version_status": [
            {
                "version": "123",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    # protobuf's MessageToJsonString(add_whitespace, always_print_primitive_fields).
    assert answer.text == (
        '{\n "model_version_status": [\n  {\n   "version": "123",\n   "state": "AVAILABLE",\n'
        '   "status": {\n    "error_code": "OK",\n    "error_message": ""\n   }\n  }\n ]\n}\n'
    )


def test_metadata_rest_equals_tf_serving(server: Server) -> None:
    expected = json.loads((TESTDATA / "half_plus_two_model_metadata.json").read_text())
    assert expected["model_spec"]["name"] == DEFAULT
    answer = call(server, "/v1/models/default/metadata")
    assert ok_json(answer) == expected
    assert answer.text.startswith('{\n"model_spec":{\n "name": "default",')
    assert ok_json(call(server, "/v1/models/default/versions/123/metadata")) == expected


# --- versions and labels on saved_model_half_plus_two_2_versions -------------------------------


@pytest.mark.parametrize(
    "path",
    [
        f"/v1/models/{TWO}:predict",
        f"/v1/models/{TWO}/versions/123:predict",
        f"/v1/models/{TWO}/versions/124:predict",
        f"/v1/models/{TWO}/labels/stable:predict",
        f"/v1/models/{TWO}/labels/canary:predict",
    ],
    ids=["latest", "version-123", "version-124", "label-stable", "label-canary"],
)
def test_two_versions_predict(server: Server, path: str) -> None:
    body = {"instances": [[1.0, 2.0], [3.0, 4.0]]}
    assert ok_json(post(server, path, body)) == {"predictions": [[2.5, 3.0], [3.5, 4.0]]}


def test_two_versions_status(server: Server) -> None:
    def versions(path: str) -> list[tuple[str, str]]:
        doc = ok_json(call(server, path))
        return [(s["version"], s["state"]) for s in doc["model_version_status"]]

    assert versions(f"/v1/models/{TWO}") == [("124", "AVAILABLE"), ("123", "AVAILABLE")]
    assert versions(f"/v1/models/{TWO}/versions/123") == [("123", "AVAILABLE")]
    assert versions(f"/v1/models/{TWO}/labels/stable") == [("123", "AVAILABLE")]
    assert versions(f"/v1/models/{TWO}/labels/canary") == [("124", "AVAILABLE")]


def test_two_versions_metadata(server: Server) -> None:
    expected = json.loads((TESTDATA / f"{TWO}_metadata.json").read_text())
    assert expected["model_spec"]["version"] == "123"
    for path in (
        f"/v1/models/{TWO}/versions/123/metadata",
        f"/v1/models/{TWO}/labels/stable/metadata",
    ):
        assert ok_json(call(server, path)) == expected
    latest = ok_json(call(server, f"/v1/models/{TWO}/metadata"))
    assert latest["model_spec"]["version"] == "124"
    assert latest["metadata"] == expected["metadata"]


# --- paths, encodings ------------------------------------------------------------------------


def test_paths_are_case_insensitive_and_names_percent_decoded(server: Server) -> None:
    body = {"instances": [2.0]}
    assert ok_json(post(server, "/V1/Models/default:predict", body)) == {"predictions": [3.0]}
    assert ok_json(post(server, "/v1/models/d%65fault:predict", body)) == {"predictions": [3.0]}
    assert ok_json(post(server, f"/v1/models/{TWO}/labels/st%61ble:predict", body)) == {
        "predictions": [3.0]
    }
    assert ok_json(post(server, f"/v1/MODELS/{TWO}/VERSIONS/123:predict", body)) == {
        "predictions": [3.0]
    }


def test_gzip_request_body(server: Server) -> None:
    body = gzip.compress(json.dumps({"instances": [2.0, 3.0, 4.0]}).encode())
    answer = post(server, "/v1/models/default:predict", body, headers={"Content-Encoding": "gzip"})
    assert ok_json(answer) == {"predictions": [3.0, 3.5, 4.0]}
    # A body that is not gzip reads as empty, as in TF Serving (ReadRequestGzipBytes).
    answer = post(
        server, "/v1/models/default:predict", b"not gzip", headers={"Content-Encoding": "gzip"}
    )
    assert answer.status == 400
    assert answer.json()["error"].startswith("JSON Parse error: The document is empty")


def test_predict_b64_string_input(server: Server) -> None:
    """``{"b64": ...}`` feeds a DT_STRING input: classify_x_to_y takes serialized tf.Examples."""
    example = tf.train.Example()
    example.features.feature["x"].float_list.value.append(2.0)
    b64 = base64.b64encode(example.SerializeToString()).decode()
    body = {"signature_name": "classify_x_to_y", "instances": [{"b64": b64}]}
    assert ok_json(post(server, "/v1/models/default:predict", body)) == {"predictions": [[3.0]]}


# --- errors: TF Serving's messages, HTTP statuses from the one table ---------------------------
# REST reaches the 400 and 404 rows here; 429 (full queue) and 504 (rest_api_timeout_in_ms) are
# exercised against a deliberately slow server in test_scaling.py. The server has no path to
# the other rows (401, 403, 409, 499, 500, 501, 503) with these models.

ERRORS = [
    # (method, path, body, gRPC code, message)
    ("POST", "/v1/models/nope:predict", {"instances": [1.0]}, "NOT_FOUND",
     "Servable not found for request: Latest(nope)"),
    ("POST", "/v1/models/default/versions/7:predict", {"instances": [1.0]}, "NOT_FOUND",
     "Servable not found for request: Specific(default, 7)"),
    ("POST", "/v1/models/default/labels/nope:predict", {"instances": [1.0]}, "INVALID_ARGUMENT",
     "Unrecognized servable version label: nope"),
    ("POST", "/v1/models/default:predict", {"signature_name": "nope", "instances": [1.0]},
     "INVALID_ARGUMENT", 'Serving signature name: "nope" not found in signature def'),
    ("POST", "/v1/models/default:predict", b"{", "INVALID_ARGUMENT",
     "JSON Parse error: Missing a name for object member. at offset: 1"),
    ("POST", "/v1/models/default:predict", {"foo": [1.0]}, "INVALID_ARGUMENT",
     "Missing 'inputs' or 'instances' key"),
    ("POST", "/v1/models/default:predict", {"instances": ["a"]}, "INVALID_ARGUMENT",
     "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "
     'JSON Value: "a" Type: String is not of expected type: float'),
    ("POST", "/v1/models/default:classify", {"signature_name": "nope", "examples": [{"x": 1.0}]},
     "INVALID_ARGUMENT", "No signature was found with the name: nope"),
    # TF Serving reads the body before it looks the model up: a bad body wins over NOT_FOUND.
    ("POST", "/v1/models/nope:predict", b"[", "INVALID_ARGUMENT",
     "JSON Parse error: Invalid value. at offset: 1"),
    # Malformed paths (http_rest_api_handler.cc, http_rest_api_util.cc).
    ("GET", "/v1/models", None, "INVALID_ARGUMENT", "Missing model name in request."),
    ("POST", "/v1/models/default:PREDICT", {"instances": [1.0]}, "INVALID_ARGUMENT",
     "Malformed request: POST /v1/models/default:PREDICT"),
    ("GET", "/v1/models/default:predict", None, "INVALID_ARGUMENT",
     "Malformed request: GET /v1/models/default:predict"),
    ("PUT", "/v1/models/default", b"{}", "INVALID_ARGUMENT",
     "Malformed request: PUT /v1/models/default"),
    ("POST", "/v1/models/default/versions/x:predict", {}, "INVALID_ARGUMENT",
     "Malformed request: POST /v1/models/default/versions/x:predict"),
    ("POST", "/v1/models/default/versions/99999999999999999999:predict", {}, "INVALID_ARGUMENT",
     "Failed to convert version: 99999999999999999999 to numeric."),
    # Status and metadata.
    ("GET", "/v1/models/nope", None, "NOT_FOUND", "Could not find any versions of model nope"),
    ("GET", "/v1/models/default/versions/7", None, "NOT_FOUND",
     "Could not find version 7 of model default"),
    ("GET", "/v1/models/default/labels/nope", None, "INVALID_ARGUMENT",
     "Unrecognized servable version label: nope"),
    ("GET", "/v1/models/nope/metadata", None, "NOT_FOUND",
     "Servable not found for request: Latest(nope)"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body", "code", "message"), ERRORS)
def test_errors_match_tf_serving(  # type: ignore[no-untyped-def]
    server: Server, method, path, body, code, message
) -> None:
    answer = call(server, path, body, method=method)
    assert answer.headers["Content-Type"] == "application/json"
    assert (answer.status, answer.json()) == (
        HTTP_STATUS[grpc.StatusCode[code]],
        {"error": message},
    )
    # rapidjson's PrettyWriter, as MakeJsonFromStatus() writes it.
    assert answer.text == '{\n    "error": ' + json.dumps(message) + "\n}"


def test_outside_the_api_is_not_found(server: Server) -> None:
    for path in ("/v3/models/default", "/monitoring/prometheus/metrics", "/"):
        answer = call(server, path)
        assert answer.status == 404, path
    # the admin routes are off by default, and never on the REST port (admin_port)
    answer = post(server, "/admin/models/default/labels/stable/weight", {"weight": 1.0})
    assert (answer.status, answer.text) == (404, "Not Found")
    assert ok_json(post(server, "/v1/models/default:predict", {"instances": [2.0]})) == {
        "predictions": [3.0]
    }


# --- the same request over REST and gRPC ---------------------------------------------------------


def test_rest_and_grpc_agree(server: Server) -> None:
    stub = server.prediction_stub()
    xs = [0.5, 1.0, 7.25, -3.0]
    for path, spec in (
        ("/v1/models/default:predict", {"name": DEFAULT}),
        (f"/v1/models/{TWO}/labels/stable:predict", {"name": TWO, "version_label": "stable"}),
        (f"/v1/models/{TWO}/versions/124:predict", {"name": TWO, "version": 124}),
    ):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = spec["name"]
        if "version_label" in spec:
            request.model_spec.version_label = str(spec["version_label"])
        if "version" in spec:
            request.model_spec.version.value = int(spec["version"])  # type: ignore[call-overload]
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(xs, dtype=tf.float32, shape=[4, 1]))
        grpc_y = tf.make_ndarray(stub.Predict(request, 30.0).outputs["y"]).ravel().tolist()
        rest_y = ok_json(post(server, path, {"instances": [[x] for x in xs]}))["predictions"]
        assert [row[0] for row in rest_y] == grpc_y

    example_body = {"examples": [{"x": x} for x in xs]}
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name, classify.model_spec.signature_name = DEFAULT, "classify_x_to_y"
    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name, regress.model_spec.signature_name = DEFAULT, "regress_x_to_y"
    for x in xs:
        for message in (classify, regress):
            example = message.input.example_list.examples.add()
            example.features.feature["x"].float_list.value.append(x)
    scores = [c.classes[0].score for c in stub.Classify(classify, 30.0).result.classifications]
    values = [r.value for r in stub.Regress(regress, 30.0).result.regressions]
    rest_classes = ok_json(
        post(
            server,
            "/v1/models/default:classify",
            {"signature_name": "classify_x_to_y", **example_body},
        )
    )["results"]
    rest_values = ok_json(
        post(
            server,
            "/v1/models/default:regress",
            {"signature_name": "regress_x_to_y", **example_body},
        )
    )["results"]
    assert [r[0][1] for r in rest_classes] == scores
    assert rest_values == values


# --- DeepLab over REST ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deeplab(server: Server) -> Server:
    return server


def _deeplab_image(seed: int) -> np.ndarray:
    from export.synthetic import make_batch

    images, _ = make_batch(1, DEEPLAB_SIZE, seed=seed)
    return np.asarray(images[0], dtype=np.float32)


def _deeplab_grpc(server: Server, image: np.ndarray) -> np.ndarray:
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = DEEPLAB, "predict_images"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(image[None]))
    request.inputs["height"].CopyFrom(tf.make_tensor_proto([image.shape[0]], dtype=tf.int32))
    request.inputs["width"].CopyFrom(tf.make_tensor_proto([image.shape[1]], dtype=tf.int32))
    response = server.prediction_stub().Predict(request, 60.0)
    return tf.make_ndarray(response.outputs["segmentation_map"])


def test_deeplab_rest_nested_list_image(deeplab: Server) -> None:
    image = _deeplab_image(seed=11)
    expected = _deeplab_grpc(deeplab, image)
    size = DEEPLAB_SIZE
    row = {
        "signature_name": "predict_images",
        "instances": [{"images": image.tolist(), "height": size, "width": size}],
    }
    predictions = ok_json(post(deeplab, "/v1/models/deeplab:predict", row))["predictions"]
    assert np.array_equal(np.asarray(predictions, dtype=np.int64), expected)
    columnar = {
        "signature_name": "predict_images",
        "inputs": {"images": [image.tolist()], "height": [size], "width": [size]},
    }
    outputs = ok_json(post(deeplab, "/v1/models/deeplab:predict", columnar))["outputs"]
    assert np.array_equal(np.asarray(outputs, dtype=np.int64), expected)
    # serving_default takes the image only and answers at the input's size.
    plain = ok_json(post(deeplab, "/v1/models/deeplab:predict", {"instances": [image.tolist()]}))
    assert np.asarray(plain["predictions"]).shape == (1, size, size)


def test_deeplab_rest_b64_image(deeplab: Server) -> None:
    """TF Serving decodes ``{"b64": ...}`` only into DT_STRING inputs; DeepLab's ``images`` is
    float32, so a base64 image is refused exactly as TF Serving refuses it (and the server
    keeps serving)."""
    image = _deeplab_image(seed=12)
    b64 = base64.b64encode(image.tobytes()).decode()
    body = {"instances": [{"b64": b64}]}
    answer = post(deeplab, "/v1/models/deeplab:predict", body)
    assert answer.status == 400
    message = answer.json()["error"]
    assert message.startswith(
        "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: {"
    )
    assert f'"b64": "{b64[:40]}' in message  # the value TF Serving could not take as a float
    plain = ok_json(post(deeplab, "/v1/models/deeplab:predict", {"instances": [image.tolist()]}))
    assert np.asarray(plain["predictions"]).shape == (1, DEEPLAB_SIZE, DEEPLAB_SIZE)


# --- health -------------------------------------------------------------------------------------


def test_readiness_and_liveness(server: Server) -> None:
    assert ok_json(call(server, "/readyz")) == {"status": "ready"}
    assert ok_json(call(server, "/healthz")) == {"status": "alive"}


def test_grpc_health_check_serving(server: Server) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(server.channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    for service in ("", "tensorflow.serving.PredictionService", "tensorflow.serving.ModelService"):
        request = health_pb2.HealthCheckRequest(service=service)
        assert stub.Check(request, timeout=10).status == serving, service

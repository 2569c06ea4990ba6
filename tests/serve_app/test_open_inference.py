"""The Open Inference Protocol (KServe V2) on a live server, driven by Triton's own Python
client (``tritonclient[grpc,http]``, in a virtual environment of its own as a user has it:
it needs protobuf 6, beside our 7) and compared with TF Serving's API through the official stubs.

Models: TF Serving's half_plus_two and its two-version model, the DeepLab export's
``serving_default``, half_plus_two's ``classify_x_to_y`` for BYTES (serialized tf.Examples),
and a model made here that echoes one input of every V2 datatype.
"""

from __future__ import annotations

import json
import pickle
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from tests.harness import REPO, TESTDATA, Server, start_server
from tests.open_inference_samples import SAMPLES

CLIENT_PYTHON = REPO / ".venv-clients" / "triton" / "bin" / "python"

TF_DTYPES = {
    "BOOL": tf.bool,
    "UINT8": tf.uint8,
    "UINT16": tf.uint16,
    "UINT32": tf.uint32,
    "UINT64": tf.uint64,
    "INT8": tf.int8,
    "INT16": tf.int16,
    "INT32": tf.int32,
    "INT64": tf.int64,
    "FP16": tf.float16,
    "FP32": tf.float32,
    "FP64": tf.float64,
    "BF16": tf.bfloat16,
    "BYTES": tf.string,
}


def export_echo_model(base: Path) -> None:
    """``serving_default``: ``in_<type>`` -> ``out_<type>``, unchanged, for every datatype."""

    class Echo(tf.Module):
        @tf.function(
            input_signature=[
                tf.TensorSpec([None, 3], dtype, name=f"in_{name.lower()}")
                for name, dtype in TF_DTYPES.items()
            ]
        )
        def serve(self, *tensors: tf.Tensor) -> dict[str, tf.Tensor]:
            return {
                f"out_{name.lower()}": tf.identity(t)
                for name, t in zip(TF_DTYPES, tensors, strict=True)
            }

    module = Echo()
    tf.saved_model.save(module, str(base / "1"), signatures={"serving_default": module.serve})


@pytest.fixture(scope="module")
def server(deeplab_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("v2")
    export_echo_model(root / "echo")
    config = root / "models.config"
    config.write_text(
        f"""model_config_list {{
  config {{ name: "half_plus_two" base_path: "{TESTDATA / "saved_model_half_plus_two_cpu"}"
    model_platform: "tensorflow" }}
  config {{ name: "two" base_path: "{TESTDATA / "saved_model_half_plus_two_2_versions"}"
    model_platform: "tensorflow" model_version_policy {{ all {{}} }}
    version_labels {{ key: "stable" value: 123 }} }}
  config {{ name: "deeplab" base_path: "{deeplab_base}" model_platform: "tensorflow" }}
  config {{ name: "echo" base_path: "{root / "echo"}" model_platform: "tensorflow" }}
}}
"""
    )
    s = start_server(
        f"model_config_file={config}", wait_for=("half_plus_two", "two", "deeplab", "echo")
    )
    s.wait_available("two", 123)
    yield s
    s.stop()


def triton(server: Server, script: str, **args: Any) -> Any:
    """Run ``script`` with tritonclient's own Python; it gets ``args`` (with ``grpc`` and
    ``http``, the server's addresses) as ``ARGS`` and leaves its answer in ``RESULT``, which
    comes back pickled."""
    if not CLIENT_PYTHON.exists():
        pytest.fail(
            f"tritonclient's virtual environment is missing: make client-venvs ({CLIENT_PYTHON})"
        )
    args = {"grpc": server.grpc_target, "http": server.http_base.removeprefix("http://"), **args}
    program = (
        "import pickle, sys, json\n"
        "ARGS = pickle.loads(sys.stdin.buffer.read())\n"
        f"{script}\n"
        "sys.stdout.buffer.write(pickle.dumps(RESULT, protocol=4))\n"
    )
    done = subprocess.run(
        [str(CLIENT_PYTHON), "-c", program],
        input=pickle.dumps(args, protocol=4),
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-4000:]
    return pickle.loads(done.stdout)


# --- health and metadata --------------------------------------------------------------------

HEALTH = """
import tritonclient.grpc as g, tritonclient.http as h
RESULT = {}
for kind, client in (("http", h.InferenceServerClient(ARGS["http"])),
                     ("grpc", g.InferenceServerClient(ARGS["grpc"]))):
    js = {"as_json": True} if kind == "grpc" else {}
    RESULT[kind] = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready("half_plus_two"),
        "version_ready": client.is_model_ready("two", "124"),
        "unknown_ready": client.is_model_ready("no_such_model"),
        "server": client.get_server_metadata(**js),
        "model": client.get_model_metadata("half_plus_two", **js),
        "two": client.get_model_metadata("two", **js),
    }
"""


def test_liveness_readiness_and_metadata_over_both_wires(server: Server) -> None:
    result = triton(server, HEALTH)
    for kind in ("http", "grpc"):
        r = result[kind]
        assert (r["live"], r["ready"], r["model_ready"], r["version_ready"]) == (True,) * 4, kind
        assert r["unknown_ready"] is False
        assert r["server"]["name"] == "ray-tfserving"
        assert "binary_tensor_data" in r["server"]["extensions"]
        model = r["model"]
        assert (model["name"], model["versions"], model["platform"]) == (
            "half_plus_two",
            ["123"],
            "tensorflow_savedmodel",
        ), kind
        shapes = {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in model["inputs"]}
        assert shapes == {"x": ("FP32", [-1, 1])}, kind
        outputs = {t["name"]: t["datatype"] for t in model["outputs"]}
        assert outputs == {"y": "FP32"}
        assert r["two"]["versions"] == ["123", "124"], kind


# --- inference --------------------------------------------------------------------------------

INFER_HALF_PLUS_TWO = """
import numpy as np
import tritonclient.grpc as g, tritonclient.http as h
x = np.array([[1.0], [2.0], [3.0]], np.float32)
RESULT = {}
client = h.InferenceServerClient(ARGS["http"])
for binary in (True, False):
    i = h.InferInput("x", x.shape, "FP32"); i.set_data_from_numpy(x, binary_data=binary)
    o = h.InferRequestedOutput("y", binary_data=binary)
    r = client.infer("half_plus_two", [i], outputs=[o])
    RESULT["http-binary" if binary else "http-json"] = (r.as_numpy("y"), r.get_response())
i = h.InferInput("x", x.shape, "FP32"); i.set_data_from_numpy(x)
r = client.infer("half_plus_two", [i])  # no outputs named: every output binary
RESULT["http-default"] = (r.as_numpy("y"), r.get_response())
client = g.InferenceServerClient(ARGS["grpc"])
i = g.InferInput("x", x.shape, "FP32"); i.set_data_from_numpy(x)
r = client.infer("half_plus_two", [i], request_id="req-7")
RESULT["grpc"] = (r.as_numpy("y"), r.get_response(as_json=True))
for version in ("123", "124", "stable"):
    r = client.infer("two", [i], model_version=version)
    RESULT["two-" + version] = (r.as_numpy("y"), r.get_response(as_json=True))
"""


def test_tritonclient_infers_over_http_binary_and_json_and_over_grpc(server: Server) -> None:
    result = triton(server, INFER_HALF_PLUS_TWO)
    for kind in ("http-binary", "http-json", "http-default", "grpc"):
        y, response = result[kind]
        np.testing.assert_array_equal(y, np.array([[2.5], [3.0], [3.5]], np.float32), kind)
        assert response["model_name"] == "half_plus_two"
        assert response["model_version"] == "123"
    assert result["http-binary"][1]["outputs"][0]["parameters"]["binary_data_size"] == 12
    assert "data" in result["http-json"][1]["outputs"][0]
    assert result["grpc"][1]["id"] == "req-7"
    for version, served in (("123", "123"), ("124", "124"), ("stable", "123")):
        y, response = result["two-" + version]
        assert response["model_version"] == served
        np.testing.assert_array_equal(y, np.array([[2.5], [3.0], [3.5]], np.float32))


def predict(server: Server, model: str, inputs: dict[str, np.ndarray], signature: str = ""):  # type: ignore[no-untyped-def]
    """TF Serving's Predict through the official stub: output alias -> array."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for name, array in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(array))
    response = server.prediction_stub().Predict(request, 60.0)
    return {name: tf.make_ndarray(t) for name, t in response.outputs.items()}


ECHO = """
import numpy as np
import tritonclient.grpc as g, tritonclient.http as h
RESULT = {}
for kind, mod, client in (("grpc", g, g.InferenceServerClient(ARGS["grpc"])),
                          ("http", h, h.InferenceServerClient(ARGS["http"]))):
    inputs = []
    for name, array in ARGS["samples"].items():
        i = mod.InferInput("in_" + name.lower(), list(array.shape), name)
        i.set_data_from_numpy(array)
        inputs.append(i)
    r = client.infer("echo", inputs)
    RESULT[kind] = {name: r.as_numpy("out_" + name.lower()) for name in ARGS["samples"]}
"""


@pytest.fixture(scope="module")
def echoed(server: Server) -> dict[str, dict[str, np.ndarray]]:
    """Every datatype through V2 (tritonclient, both wires) and through TF Serving's Predict."""
    result = triton(server, ECHO, samples=SAMPLES)
    result["predict"] = {
        name.removeprefix("out_").upper(): array
        for name, array in predict(
            server, "echo", {f"in_{n.lower()}": a for n, a in SAMPLES.items()}
        ).items()
    }
    return result


@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_v2_and_tf_serving_give_identical_outputs(
    echoed: dict[str, dict[str, np.ndarray]], datatype: str
) -> None:
    sent = SAMPLES[datatype]
    for kind in ("grpc", "http", "predict"):
        got = echoed[kind][datatype]
        assert got.shape == sent.shape, (kind, got.shape)
        if datatype == "BYTES":
            assert [bytes(v) for v in got.ravel()] == list(sent.ravel()), kind
        else:
            assert got.dtype == sent.dtype, (kind, got.dtype)
            assert got.tobytes() == sent.tobytes(), kind


STRINGS = """
import numpy as np
import tritonclient.grpc as g, tritonclient.http as h
examples = np.array(ARGS["examples"], dtype=object)
RESULT = {}
for kind, mod, client in (("grpc", g, g.InferenceServerClient(ARGS["grpc"])),
                          ("http", h, h.InferenceServerClient(ARGS["http"]))):
    i = mod.InferInput("inputs", [len(examples)], "BYTES"); i.set_data_from_numpy(examples)
    r = client.infer("half_plus_two", [i], parameters={"signature_name": "classify_x_to_y"})
    RESULT[kind] = {o["name"]: r.as_numpy(o["name"]) for o in r.get_response(**(
        {"as_json": True} if kind == "grpc" else {}))["outputs"]}
"""


def test_a_signature_with_string_inputs_takes_bytes(server: Server) -> None:
    """half_plus_two's classify_x_to_y takes serialized tf.Examples, named by the request's
    ``signature_name`` parameter."""
    examples = []
    for x in (1.0, 2.0):
        example = tf.train.Example()
        example.features.feature["x"].float_list.value.append(x)
        examples.append(example.SerializeToString())
    result = triton(server, STRINGS, examples=examples)
    reference = predict(
        server, "half_plus_two", {"inputs": np.array(examples, dtype=object)}, "classify_x_to_y"
    )
    assert set(reference) == {"scores"}  # classify_x_to_y: y as the score
    for kind in ("grpc", "http"):
        assert set(result[kind]) == set(reference), kind
        assert result[kind]["scores"].tobytes() == reference["scores"].tobytes(), kind
    np.testing.assert_allclose(reference["scores"].ravel(), [2.5, 3.0])


DEEPLAB = """
import numpy as np
import tritonclient.grpc as g
client = g.InferenceServerClient(ARGS["grpc"])
meta = client.get_model_metadata("deeplab", as_json=True)
image = ARGS["image"]
i = g.InferInput(meta["inputs"][0]["name"], list(image.shape), "FP32"); i.set_data_from_numpy(image)
r = client.infer("deeplab", [i])
RESULT = {"meta": meta, "outputs": {o["name"]: r.as_numpy(o["name"]) for o in meta["outputs"]}}
"""


def test_deeplab_serving_default_matches_tf_serving_s_api(server: Server) -> None:
    image = np.random.default_rng(0).random((1, 32, 32, 3), dtype=np.float32)
    result = triton(server, DEEPLAB, image=image)
    (spec,) = result["meta"]["inputs"]
    reference = predict(server, "deeplab", {spec["name"]: image})
    assert set(result["outputs"]) == set(reference)
    for name, array in reference.items():
        assert result["outputs"][name].tobytes() == array.tobytes(), name


# --- errors -----------------------------------------------------------------------------------

ERRORS = """
import numpy as np
import tritonclient.grpc as g, tritonclient.http as h
from tritonclient.utils import InferenceServerException
x = np.array([[2.0]], np.float32)
RESULT = {}
for kind, mod, client in (("grpc", g, g.InferenceServerClient(ARGS["grpc"])),
                          ("http", h, h.InferenceServerClient(ARGS["http"]))):
    cases = {
        "model": ("no_such_model", "x", "FP32", x, ""),
        "version": ("half_plus_two", "x", "FP32", x, "99"),
        "input": ("half_plus_two", "nope", "FP32", x, ""),
        "datatype": ("half_plus_two", "x", "FP64", x.astype(np.float64), ""),
    }
    for case, (model, name, datatype, array, version) in cases.items():
        i = mod.InferInput(name, list(array.shape), datatype); i.set_data_from_numpy(array)
        try:
            client.infer(model, [i], model_version=version)
            RESULT[kind + "-" + case] = None
        except InferenceServerException as e:
            RESULT[kind + "-" + case] = (e.status(), e.message())
"""


def test_unknown_model_version_input_and_datatype_are_named(server: Server) -> None:
    result = triton(server, ERRORS)
    for kind in ("grpc", "http"):
        status, message = result[f"{kind}-model"]
        assert "no_such_model" in message, message
        assert status in ("StatusCode.NOT_FOUND", "404"), status
        status, message = result[f"{kind}-version"]
        assert "half_plus_two" in message and "99" in message, message
        status, message = result[f"{kind}-input"]
        assert "nope" in message, message
        assert status in ("StatusCode.INVALID_ARGUMENT", "400"), status
        status, message = result[f"{kind}-datatype"]
        assert message == "input 'x' has datatype FP64, but signature 'serving_default' takes FP32"


def test_rest_errors_are_json_with_the_protocol_s_status(server: Server) -> None:
    import http.client

    host, port = server.http_base.removeprefix("http://").split(":")
    for method, path, body, status in [
        ("POST", "/v2/models/half_plus_two/infer", b"{not json", 400),
        ("POST", "/v2/models/half_plus_two/infer", b'{"inputs": 3}', 400),
        ("GET", "/v2/models/no_such_model", None, 404),
        ("GET", f"/v2/models/half_plus_two/versions/{2**63}/ready", None, 400),
        ("GET", "/v2/nothing/here", None, 404),
    ]:
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            connection.request(method, path, body=body)
            answer = connection.getresponse()
            assert answer.status == status, (path, answer.status)
            assert set(json.loads(answer.read())) == {"error"}, path
        finally:
            connection.close()


def test_the_v2_service_is_in_reflection_and_health(server: Server) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with grpc.insecure_channel(server.grpc_target) as channel:
        assert "inference.GRPCInferenceService" in set(
            ProtoReflectionDescriptorDatabase(channel).get_services()
        )
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"), timeout=10
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

"""ModelService against a live server serving several models from a config file.

One server hosts TF Serving's own test models from ``good_model_config.txt`` (half_plus_two and
half_plus_three) plus the stateful counter, a model with two specific versions and a broken
model. The tests run in file order: read-only checks first, then config reloads (labels, a
rejected label, and last a reload that swaps the model set under load).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import text_format
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    predict_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from tests.harness import TESTDATA, Server, start_server

State = get_model_status_pb2.ModelVersionStatus
TWO_VERSIONS = "half_plus_two_2_versions"
RELOAD_TIMEOUT_S = 300.0

#: Models added to good_model_config.txt's two: name -> (test model directory, versions).
EXTRA_MODELS = {
    "counter": ("saved_model_counter", ()),
    TWO_VERSIONS: ("saved_model_half_plus_two_2_versions", (123, 124)),
    "bad_half_plus_two": ("bad_half_plus_two", ()),
}


def model_config(
    name: str, directory: str, versions: tuple[int, ...] = (), labels: dict[str, int] | None = None
) -> model_server_config_pb2.ModelConfig:
    config = model_server_config_pb2.ModelConfig(
        name=name, base_path=str(TESTDATA / directory), model_platform="tensorflow"
    )
    if versions:
        config.model_version_policy.specific.versions.extend(versions)
    for label, version in (labels or {}).items():
        config.version_labels[label] = version
    return config


def initial_config() -> model_server_config_pb2.ModelServerConfig:
    """good_model_config.txt with its base paths substituted, as TF Serving's test writes it,
    plus the extra models."""
    text = (TESTDATA / "good_model_config.txt").read_text()
    text = text.replace(
        "${TEST_HALF_PLUS_TWO_DIR}", str(TESTDATA / "saved_model_half_plus_two_cpu")
    )
    text = text.replace(
        "${TEST_HALF_PLUS_THREE_DIR}", str(TESTDATA / "saved_model_half_plus_three")
    )
    config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    for name, (directory, versions) in EXTRA_MODELS.items():
        config.model_config_list.config.append(model_config(name, directory, versions))
    return config


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    path = tmp_path_factory.mktemp("config") / "good_model_config.conf"
    path.write_text(text_format.MessageToString(initial_config()))
    s = start_server(
        f"model_config_file={path}",
        wait_for=("half_plus_two", "half_plus_three", "counter", TWO_VERSIONS),
    )
    yield s
    s.stop()


def predict_request(model: str, **spec: object) -> predict_pb2.PredictRequest:
    """TF Serving's VerifyPredictRequest: x = float_val [2.0], shape [1]."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if "version" in spec:
        request.model_spec.version.value = int(spec["version"])  # type: ignore[call-overload]
    if "label" in spec:
        request.model_spec.version_label = str(spec["label"])
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.append(2.0)
    request.inputs["x"].tensor_shape.dim.add().size = 1
    return request


def status(server: Server, model: str, version: int | None = None):  # type: ignore[no-untyped-def]
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    return server.model_stub().GetModelStatus(request, 10.0)


def reload(server: Server, *configs: model_server_config_pb2.ModelConfig):  # type: ignore[no-untyped-def]
    request = model_management_pb2.ReloadConfigRequest()
    request.config.model_config_list.config.extend(configs)
    return server.model_stub().HandleReloadConfigRequest(request, RELOAD_TIMEOUT_S)


def error(call, request, timeout: float = 10.0) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout)
    return info.value.code(), info.value.details()


def all_good_models(
    labels: dict[str, int] | None = None,
) -> list[model_server_config_pb2.ModelConfig]:
    """The initial config again, with ``labels`` on the two-version model."""
    configs = list(initial_config().model_config_list.config)
    for c in configs:
        if c.name == TWO_VERSIONS:
            c.version_labels.update(labels or {})
    return configs


# --- GetModelStatus ---------------------------------------------------------------------------


def test_status_like_tf_serving(server: Server) -> None:
    result = status(server, "half_plus_two")
    assert len(result.model_version_status) == 1
    entry = result.model_version_status[0]
    assert (entry.version, entry.state) == (123, State.AVAILABLE)
    assert (entry.status.error_code, entry.status.error_message) == (0, "")
    assert status(server, "half_plus_two", 123) == result


def test_status_errors(server: Server) -> None:
    stub = server.model_stub()
    request = get_model_status_pb2.GetModelStatusRequest()
    assert error(stub.GetModelStatus, request) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Missing ModelSpec",
    )
    request.model_spec.name = "nope"
    assert error(stub.GetModelStatus, request) == (
        grpc.StatusCode.NOT_FOUND,
        "Could not find any versions of model nope",
    )
    request.model_spec.name = "half_plus_two"
    request.model_spec.version.value = 7
    assert error(stub.GetModelStatus, request) == (
        grpc.StatusCode.NOT_FOUND,
        "Could not find version 7 of model half_plus_two",
    )


# --- several models from one config file ----------------------------------------------------


@pytest.mark.parametrize(("model", "expected"), [("half_plus_two", 3.0), ("half_plus_three", 4.0)])
@pytest.mark.parametrize("specify_output", [True, False])
def test_good_model_config(
    server: Server, model: str, expected: float, specify_output: bool
) -> None:
    """TF Serving's testGoodModelConfig; half_plus_three's placeholder is [None,1], the request's
    x is [1], and TF Serving's C++ session runs it anyway."""
    request = predict_request(model)
    if specify_output:
        request.output_filter.append("y")
    result = server.prediction_stub().Predict(request, 10.0)
    assert list(result.outputs) == ["y"]
    assert result.outputs["y"].dtype == types_pb2.DT_FLOAT
    assert list(result.outputs["y"].float_val) == [expected]
    spec = result.model_spec
    assert (spec.name, spec.signature_name, spec.version.value) == (model, "serving_default", 123)


def test_stateful_counter(server: Server) -> None:
    """The counter model keeps state across requests: get 0, incr 1, reset 0, incr 1, +3 = 4."""
    stub = server.prediction_stub()

    def call(signature: str, delta: float | None = None, output_filter: bool = False) -> float:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "counter"
        request.model_spec.signature_name = signature
        if delta is not None:
            request.inputs["delta"].dtype = types_pb2.DT_FLOAT
            request.inputs["delta"].float_val.append(delta)
        if output_filter:
            request.output_filter.append("output")
        response = stub.Predict(request, 10.0)
        assert list(response.outputs) == ["output"]
        assert response.outputs["output"].dtype == types_pb2.DT_FLOAT
        return float(response.outputs["output"].float_val[0])

    assert call("get_counter") == 0.0
    assert call("incr_counter") == 1.0
    assert call("reset_counter") == 0.0
    assert call("incr_counter", output_filter=True) == 1.0
    assert call("incr_counter_by", delta=3.0) == 4.0
    assert call("get_counter") == 4.0


def test_specific_versions(server: Server) -> None:
    result = status(server, TWO_VERSIONS)
    assert [(s.version, s.state, s.status.error_code) for s in result.model_version_status] == [
        (124, State.AVAILABLE, 0),
        (123, State.AVAILABLE, 0),
    ]
    stub = server.prediction_stub()
    for version in (123, 124):
        response = stub.Predict(predict_request(TWO_VERSIONS, version=version), 10.0)
        assert response.model_spec.version.value == version
        assert list(response.outputs["y"].float_val) == [3.0]
    assert stub.Predict(predict_request(TWO_VERSIONS), 10.0).model_spec.version.value == 124
    assert error(stub.Predict, predict_request(TWO_VERSIONS, version=125)) == (
        grpc.StatusCode.NOT_FOUND,
        f"Servable not found for request: Specific({TWO_VERSIONS}, 125)",
    )


def test_bad_model_beside_good_ones(server: Server) -> None:
    """A model that cannot load gets END with the loader's error; the others keep serving."""
    result = status(server, "bad_half_plus_two")
    assert len(result.model_version_status) == 1
    entry = result.model_version_status[0]
    assert (entry.version, entry.state) == (123, State.END)
    assert entry.status.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert entry.status.error_message == (
        "Could not find SavedModel .pb or .pbtxt at supplied export directory path: "
        f"{TESTDATA / 'bad_half_plus_two' / '00000123'}. Check that the directory exists and "
        "that you have the right permissions for accessing it."
    )
    stub = server.prediction_stub()
    assert error(stub.Predict, predict_request("bad_half_plus_two")) == (
        grpc.StatusCode.NOT_FOUND,
        "Servable not found for request: Latest(bad_half_plus_two)",
    )
    assert list(stub.Predict(predict_request("half_plus_two"), 10.0).outputs["y"].float_val) == [
        3.0
    ]


# --- HandleReloadConfigRequest ----------------------------------------------------------------


def test_reload_refuses_invalid_configs(server: Server) -> None:
    stub = server.model_stub()
    assert error(stub.HandleReloadConfigRequest, model_management_pb2.ReloadConfigRequest()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "ServerModelConfig type not supported by HandleReloadConfigRequest. Only "
        "ModelConfigList is currently supported",
    )
    duplicate = model_management_pb2.ReloadConfigRequest()
    duplicate.config.model_config_list.config.extend(
        [model_config("half_plus_two", "saved_model_half_plus_two_cpu")] * 2
    )
    assert error(stub.HandleReloadConfigRequest, duplicate) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Illegal to list model half_plus_two multiple times in config list",
    )
    # Nothing changed.
    result = server.prediction_stub().Predict(predict_request("half_plus_three"), 10.0)
    assert list(result.outputs["y"].float_val) == [4.0]


def test_reload_adds_version_labels(server: Server) -> None:
    response = reload(server, *all_good_models({"stable": 123, "canary": 124}))
    assert (response.status.error_code, response.status.error_message) == (0, "")
    stub = server.prediction_stub()
    for label, version in (("stable", 123), ("canary", 124)):
        result = stub.Predict(predict_request(TWO_VERSIONS, label=label), 10.0)
        assert result.model_spec.version.value == version
        assert list(result.outputs["y"].float_val) == [3.0]
    assert error(stub.Predict, predict_request(TWO_VERSIONS, label="nope")) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Unrecognized servable version label: nope",
    )


def test_reload_label_to_unavailable_version_fails(server: Server) -> None:
    """As ServerCore::UpdateModelVersionLabelMap: a label may only name an AVAILABLE version;
    the whole reload is refused and the labels already in place keep working."""
    request = model_management_pb2.ReloadConfigRequest()
    request.config.model_config_list.config.extend(all_good_models({"stable": 123, "canary": 125}))
    assert error(server.model_stub().HandleReloadConfigRequest, request, RELOAD_TIMEOUT_S) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        f"Request to assign label to version 125 of model {TWO_VERSIONS}, which is not "
        "currently available for inference",
    )
    stub = server.prediction_stub()
    canary = stub.Predict(predict_request(TWO_VERSIONS, label="canary"), 10.0)
    assert canary.model_spec.version.value == 124


def test_reload_swaps_the_model_set_under_load(server: Server) -> None:
    """A reload that keeps half_plus_two, adds a model and drops the others: a client calling
    half_plus_two all along sees no failure; the new model serves as soon as the reload returns;
    a dropped model is NOT_FOUND."""
    stub = server.prediction_stub()
    stop = threading.Event()
    calls: list[float] = []
    failures: list[str] = []

    def client() -> None:
        request = predict_request("half_plus_two")
        for _ in range(100_000):  # bounded; stopped long before
            if stop.is_set():
                return
            try:
                result = stub.Predict(request, 10.0)
                if list(result.outputs["y"].float_val) != [3.0]:
                    failures.append(f"wrong result {result}")
            except grpc.RpcError as e:
                failures.append(f"{e.code()}: {e.details()}")
            calls.append(time.monotonic())

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        time.sleep(1.0)
        response = reload(
            server,
            model_config("half_plus_two", "saved_model_half_plus_two_cpu"),
            model_config("half_plus_two_tf2", "saved_model_half_plus_two_tf2_cpu"),
        )
        assert (response.status.error_code, response.status.error_message) == (0, "")
        # Serves at once: the reload returns only once the new model is AVAILABLE.
        result = stub.Predict(predict_request("half_plus_two_tf2"), 10.0)
        assert list(result.outputs["y"].float_val) == [3.0]
        assert result.model_spec.version.value == 123
        for gone in ("half_plus_three", "counter", TWO_VERSIONS):
            assert error(stub.Predict, predict_request(gone)) == (
                grpc.StatusCode.NOT_FOUND,
                f"Servable not found for request: Latest({gone})",
            )
        reloaded_at = time.monotonic()
        until = reloaded_at + 60  # bounded: the client answers after the reload
        while not (calls and calls[-1] > reloaded_at) and time.monotonic() < until:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not failures, failures[:5]
    assert len(calls) > 20
    assert calls[-1] > reloaded_at  # the client kept going through and after the reload
    entry = status(server, "half_plus_two_tf2").model_version_status[0]
    assert (entry.version, entry.state, entry.status.error_code) == (123, State.AVAILABLE, 0)

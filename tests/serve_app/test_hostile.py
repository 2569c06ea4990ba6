"""Hostile input against a live server, by hypothesis, over gRPC and REST.

Each hostile request (bytes that are no request, requests of the wrong type, mutated
PredictRequests with hostile tensors, hostile model names and paths, malformed, truncated,
gzip-bombed or mis-typed REST bodies) must get a TF Serving-style status well within its
deadline; a valid request follows each one and must give the right answer; and no serving
replica may die (the same processes serve before and after). Requests declaring far more than
they carry (a V2 BYTES [3e8] of no data, a context merged into 100,000 examples) are refused
without raising the replica's peak RSS. The seed is fixed and the examples bounded;
``RTFS_FUZZ_EXAMPLES`` runs more.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from open_inference.grpc import protocol as open_inference
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import classification_pb2, predict_pb2

from tests.compat.test_fuzz_tensors import hostile_tensor
from tests.harness import Server, shared_server

EXAMPLES = int(os.environ.get("RTFS_FUZZ_EXAMPLES", "120"))
DEADLINE_S = 10.0
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
#: Every status a hostile request may get: the ones TF Serving answers bad input with (and
#: INTERNAL for bytes that are no request message, as C++ gRPC's deserializer answers them:
#: ``raw_call`` allows it with that message only).
BAD_INPUT = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNIMPLEMENTED,
}
NAMES = st.sampled_from(
    ["half_plus_two", "", "../half_plus_two", "%2e%2e", "/etc/passwd", "ha\u0301lf", "a" * 300]
)
METHODS = [
    "/tensorflow.serving.PredictionService/Predict",
    "/tensorflow.serving.PredictionService/Classify",
    "/tensorflow.serving.PredictionService/Regress",
    "/tensorflow.serving.PredictionService/GetModelMetadata",
    "/tensorflow.serving.PredictionService/MultiInference",
    "/tensorflow.serving.ModelService/GetModelStatus",
]


pytestmark = pytest.mark.shares_server("half_plus_two")


@pytest.fixture(scope="module")
def server() -> Server:
    s = shared_server("half_plus_two")
    s.pids_before = {pid for pid, _ in s.replicas("Ingress")}  # type: ignore[attr-defined]
    return s


@pytest.fixture(scope="module")
def channel(server: Server) -> grpc.Channel:  # type: ignore[misc]
    with grpc.insecure_channel(server.grpc_target) as c:
        yield c


def valid_predict(channel: grpc.Channel) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].dtype = 1  # DT_FLOAT
    request.inputs["x"].tensor_shape.dim.add().size = 1
    request.inputs["x"].float_val.append(2.0)
    call = channel.unary_unary(
        METHODS[0],
        request_serializer=predict_pb2.PredictRequest.SerializeToString,
        response_deserializer=predict_pb2.PredictResponse.FromString,
    )
    assert list(call(request, timeout=DEADLINE_S).outputs["y"].float_val) == [3.0]


def raw_call(channel: grpc.Channel, method: str, payload: bytes) -> grpc.StatusCode:
    """The call's status; answered before the deadline it sets (DEADLINE_EXCEEDED is no
    status the callers accept)."""
    call = channel.unary_unary(method)  # bytes in, bytes out
    try:
        call(payload, timeout=DEADLINE_S)
        code = grpc.StatusCode.OK
    except grpc.RpcError as e:
        code, details = e.code(), e.details() or ""
        assert details, f"{code} without a message"
        assert "Traceback" not in details
        if code == grpc.StatusCode.INTERNAL and details.startswith("Could not parse request"):
            code = grpc.StatusCode.INVALID_ARGUMENT  # bytes that are no request: see BAD_INPUT
    return code


@st.composite
def hostile_predict(draw: st.DrawFn) -> bytes:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = draw(NAMES)
    if draw(st.booleans()):
        request.model_spec.version.value = draw(st.sampled_from([0, 1, 123, -5, 2**62]))
    if draw(st.booleans()):
        request.model_spec.signature_name = draw(st.sampled_from(["", "nope", "../x"]))
    for alias in draw(st.lists(st.sampled_from(["x", "y", ""]), max_size=2, unique=True)):
        request.inputs[alias].CopyFrom(draw(hostile_tensor()))
    if draw(st.integers(0, 7)) == 0:  # a huge string tensor where a float is expected
        big = request.inputs["x"]
        big.Clear()
        big.dtype = 7  # DT_STRING
        count, size = draw(st.sampled_from([(1, 1 << 20), (10_000, 10), (2, 0)]))
        big.tensor_shape.dim.add().size = count
        big.string_val.extend([b"s" * size] * count)
    wire = request.SerializeToString()
    cut = draw(st.sampled_from([None, 1, len(wire) // 2]))
    return wire if cut is None else wire[:cut]


@FUZZ
@given(
    st.sampled_from(METHODS),
    st.one_of(hostile_predict(), st.binary(max_size=256)),
)
def test_hostile_grpc_requests_get_a_status_and_the_server_stays_correct(
    server: Server, channel: grpc.Channel, method: str, payload: bytes
) -> None:
    code = raw_call(channel, method, payload)
    assert code in BAD_INPUT | {grpc.StatusCode.OK}, code
    valid_predict(channel)


def rest(server: Server, method: str, path: str, body: bytes, headers: dict[str, str]) -> int:
    host, port = server.http_base.removeprefix("http://").split(":")
    # answered before the client's deadline: a socket that waits it out raises TimeoutError
    connection = http.client.HTTPConnection(host, int(port), timeout=DEADLINE_S)
    try:
        connection.request(method, path, body=body, headers=headers)
        answer = connection.getresponse()
        text = answer.read()
    finally:
        connection.close()
    if answer.status != 200 and path.startswith("/v1/"):
        error = json.loads(text)["error"]  # TF Serving's {"error": ...}, never a traceback
        assert isinstance(error, str) and "Traceback" not in error
    return answer.status


json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.fixed_dictionaries({"b64": st.sampled_from(["AAAA", "not b64!", ""])}),
)
json_value = st.recursive(
    json_leaf,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["x", "instances", "inputs"]), children, max_size=3)
    ),
    max_leaves=20,
)


@st.composite
def hostile_body(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    kind = draw(st.sampled_from(["json", "bytes", "truncated", "deep", "nan", "gzip", "empty"]))
    headers = {"Content-Type": draw(st.sampled_from(["application/json", "text/plain", ""]))}
    if kind == "json":
        body = json.dumps(
            draw(
                st.dictionaries(
                    st.sampled_from(
                        ["instances", "inputs", "signature_name", "examples", "context"]
                    ),
                    json_value,
                )
            )
        ).encode()
    elif kind == "bytes":
        body = draw(st.binary(max_size=256))
    elif kind == "truncated":
        whole = json.dumps({"instances": draw(st.lists(st.floats(-1, 1), max_size=10))})
        body = whole[: draw(st.integers(0, len(whole)))].encode()
    elif kind == "deep":
        depth = draw(st.sampled_from([100, 5000, 100_000]))
        body = b'{"instances": ' + b"[" * depth + b"1" + b"]" * depth + b"}"
    elif kind == "nan":
        body = b'{"instances": [NaN, Infinity, -Infinity]}'
    elif kind == "gzip":
        body = gzip.compress(b'{"instances": [' + b"1," * 1000 + b"1]}")
        headers["Content-Encoding"] = "gzip"
        if draw(st.booleans()):
            body = body[: len(body) // 2]
    else:
        body = b""
    return body, {k: v for k, v in headers.items() if v}


@FUZZ
@given(
    st.sampled_from(["predict", "classify", "regress"]),
    NAMES,
    st.sampled_from(["", "/versions/123", "/versions/99999999999999999999", "/labels/x%2F"]),
    hostile_body(),
)
def test_hostile_rest_requests_get_a_status_and_the_server_stays_correct(
    server: Server,
    channel: grpc.Channel,
    verb: str,
    name: str,
    version: str,
    body: tuple[bytes, dict[str, str]],
) -> None:
    from urllib.parse import quote

    path = f"/v1/models/{quote(name, safe='%./')}{version}:{verb}"
    status = rest(server, "POST", path, *body)
    assert status in {200, 400, 404, 413, 429, 501}, (path, status)
    good = json.dumps({"instances": [2.0]}).encode()
    assert rest(server, "POST", "/v1/models/half_plus_two:predict", good, {}) == 200


# --- a request's memory is bounded by its size, live ---------------------------------------


def _peak_rss_growth_kb(server: Server, send: Callable[[], object]) -> tuple[object, int]:
    """What ``send`` returns, and how far the serving replicas' peak RSS rose meanwhile (the
    peak is reset to the current RSS first, through ``/proc/<pid>/clear_refs``)."""
    pids = [pid for pid, _ in server.replicas("Ingress")]

    def peak(pid: int) -> int:
        status = Path(f"/proc/{pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmHWM"))
        return int(line.split()[1])

    for pid in pids:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    before = {pid: peak(pid) for pid in pids}
    answer = send()
    return answer, max(peak(pid) - before[pid] for pid in pids)


def _status(channel: grpc.Channel, method: str, payload: bytes) -> tuple[grpc.StatusCode, str]:
    try:
        channel.unary_unary(method)(payload, timeout=60)
    except grpc.RpcError as e:
        return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


def test_v2_bytes_declaring_3e8_elements_in_no_data_cost_nothing(
    server: Server, channel: grpc.Channel
) -> None:
    """A 0 KB ModelInfer declaring a BYTES [3e8]: refused before anything is allocated (it
    was INVALID_ARGUMENT after 3.4 s and +2.3 GB of peak RSS)."""
    request = open_inference.ModelInferRequest(model_name="half_plus_two")
    request.inputs.add(name="x", datatype="BYTES", shape=[300_000_000])
    request.raw_input_contents.append(b"")
    payload = request.SerializeToString()
    (code, message), growth_kb = _peak_rss_growth_kb(
        server, lambda: _status(channel, "/inference.GRPCInferenceService/ModelInfer", payload)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message == "input 'x': raw BYTES hold fewer than 300000000 elements"
    assert growth_kb < 50 << 10, growth_kb
    valid_predict(channel)


def test_a_context_merged_into_100000_examples_is_refused_before_the_merge(
    server: Server, channel: grpc.Channel
) -> None:
    """Classify with a 30 KB context and 100,000 empty examples (224 KB) would feed 3 GB of
    merged examples (it was +2.9 GB of peak RSS): INVALID_ARGUMENT, and the replica stays flat."""
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "half_plus_two"
    request.model_spec.signature_name = "classify_x_to_y"
    with_context = request.input.example_list_with_context
    with_context.context.features.feature["c"].bytes_list.value.append(b"c" * 30_000)
    with_context.examples.extend([example_pb2.Example()] * 100_000)
    payload = request.SerializeToString()
    (code, message), growth_kb = _peak_rss_growth_kb(
        server, lambda: _status(channel, METHODS[1], payload)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith("Input of 100000 examples with a context of 30023 bytes"), message
    assert growth_kb < 50 << 10, growth_kb
    valid_predict(channel)


def test_a_version_of_unicode_digits_is_a_label_no_model_has(
    server: Server, channel: grpc.Channel
) -> None:
    """``²`` is a digit to ``str.isdigit`` and no number to ``int``: it was UNKNOWN (REST 500)."""
    request = open_inference.ModelInferRequest(model_name="half_plus_two", model_version="\u00b2")
    request.inputs.add(name="x", datatype="FP32", shape=[1]).contents.fp32_contents.append(1.0)
    code, message = _status(
        channel, "/inference.GRPCInferenceService/ModelInfer", request.SerializeToString()
    )
    assert (code, message) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Unrecognized servable version label: \u00b2",
    )
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
    ).encode()
    path = "/v2/models/half_plus_two/versions/%C2%B2/infer"
    assert rest(server, "POST", path, body, {"Content-Type": "application/json"}) == 400


def test_no_serving_replica_died(server: Server, channel: grpc.Channel) -> None:
    """Runs after the fuzzing above (same module, file order)."""
    valid_predict(channel)
    assert {pid for pid, _ in server.replicas("Ingress")} == server.pids_before  # type: ignore[attr-defined]

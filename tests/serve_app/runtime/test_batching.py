"""Dynamic batching: concurrent requests of mixed shapes get exactly their unbatched results."""

from __future__ import annotations

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensorflow_serving.apis import predict_pb2

from compat.dataplane import PredictCall
from compat.limits import growth_allowed
from compat.protos import types_pb2
from compat.servable import Servable
from compat.signatures import Signature, TensorSpec
from serve_app.config.args import BatchingArgs
from serve_app.runtime.batching import run_batch
from tests.allocation import bound, traced
from tests.harness import Server, start_server
from tests.serve_app.test_metrics import PATH, PREFIX, Samples, scrape, total, wait_until

ROUNDS = 6


@pytest.fixture(scope="module")
def server(deeplab_base: Path, testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Server:  # type: ignore[misc]
    """deeplab with the server's batching (allowed sizes 2, 4, 8), half_plus_three with its own
    ``batching_params.pbtxt`` (``enable_per_model_batching_parameters``): allowed sizes 4, 8
    and variable-length inputs padded."""
    root = tmp_path_factory.mktemp("batching")
    shutil.copytree(testdata / "saved_model_half_plus_three", root / "half_plus_three")
    (root / "half_plus_three" / "00000123" / "batching_params.pbtxt").write_text(
        "max_batch_size { value: 8 }\n"
        "batch_timeout_micros { value: 20000 }\n"
        "allowed_batch_sizes: 4\n"
        "allowed_batch_sizes: 8\n"
        "pad_variable_length_inputs: true\n"
    )
    config = root / "models.config"
    config.write_text(
        "model_config_list {\n"
        f'  config {{ name: "deeplab" base_path: "{deeplab_base}" model_platform: "tensorflow" }}\n'
        f'  config {{ name: "half_plus_three" base_path: "{root / "half_plus_three"}" '
        'model_platform: "tensorflow" }\n'
        "}\n"
    )
    s = start_server(
        f"model_config_file={config}",
        "batching.enabled=true",
        "batching.max_batch_size=8",
        "batching.batch_timeout_micros=20000",
        "batching.allowed_batch_sizes=2,4,8",
        "enable_per_model_batching_parameters=true",
        f"prometheus_path={PATH}",
        wait_for=("deeplab", "half_plus_three"),
    )
    yield s
    s.stop()


def deeplab_request(image: np.ndarray) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "deeplab"
    request.model_spec.signature_name = "predict_images"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(image[None]))
    request.inputs["height"].CopyFrom(tf.make_tensor_proto([image.shape[0]], dtype=tf.int32))
    request.inputs["width"].CopyFrom(tf.make_tensor_proto([image.shape[1]], dtype=tf.int32))
    return request


def test_batched_equals_unbatched_for_mixed_shapes(server: Server, deeplab_base: Path) -> None:
    """16 concurrent clients, three image shapes: each gets its own, unbatched, answer."""
    rng = np.random.default_rng(0)
    shapes = [(16, 16), (24, 16), (16, 24)]
    images = [rng.uniform(0, 255, (*shapes[i % 3], 3)).astype(np.float32) for i in range(48)]
    servable = Servable(deeplab_base / "1")
    signature = servable.signatures["predict_images"]
    expected = [
        servable.run(
            signature,
            {
                "images": im[None],
                "height": np.array([im.shape[0]], np.int32),
                "width": np.array([im.shape[1]], np.int32),
            },
            ["segmentation_map"],
        )["segmentation_map"]
        for im in images
    ]
    servable.close()
    stub = server.prediction_stub()
    barrier = threading.Barrier(16)

    def call(i: int) -> np.ndarray:
        if i < 16:
            barrier.wait(timeout=30)
        response = stub.Predict(deeplab_request(images[i]), 60.0)
        return tf.make_ndarray(response.outputs["segmentation_map"])

    before = scrape(server)
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, range(len(images))))
    for got, want in zip(results, expected, strict=True):
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    # Batches of more than one request formed: 48 one-image requests in fewer than 48 batches.
    examples, batches = PREFIX + "batch_size_sum", PREFIX + "batch_size_count"

    def delta(s: Samples, name: str) -> float:
        return total(s, name, model="deeplab") - total(before, name, model="deeplab")

    after = wait_until(server, lambda s: delta(s, examples) == 48, "48 batched examples")
    assert delta(after, batches) < 48


def test_padding_and_allowed_batch_sizes_give_exact_results(server: Server) -> None:
    """half_plus_three takes any shape: rows of different lengths are padded, run as one batch
    padded up to an allowed size, and sliced back to each caller's shape."""
    stub = server.prediction_stub()
    shapes = [(1, 2), (1, 3), (2, 4), (1, 1), (3, 2)]

    def call(i: int) -> tuple[np.ndarray, np.ndarray]:
        x = np.arange(np.prod(shapes[i % 5]), dtype=np.float32).reshape(shapes[i % 5]) + i
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "half_plus_three"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
        response = stub.Predict(request, 60.0)
        return x, tf.make_ndarray(response.outputs["y"])

    for _ in range(ROUNDS):
        with ThreadPoolExecutor(10) as pool:
            for x, y in pool.map(call, range(10)):
                assert y.shape == x.shape
                np.testing.assert_allclose(y, 0.5 * x + 3.0)


# --- padding is bounded by the calls' size (in-process, on a fake servable) ---------------


class _Echo:
    """A servable whose one output is its input ``x`` (batched along dim 0)."""

    def run(self, signature: Signature, inputs: dict, aliases: list) -> dict:
        return {"y": np.asarray(inputs["x"])}


_ECHO = Signature(
    "serving_default",
    "tensorflow/serving/predict",
    {"x": TensorSpec("x:0", types_pb2.DT_FLOAT, None)},
    {"y": TensorSpec("y:0", types_pb2.DT_FLOAT, None)},
)


def _call(shape: tuple[int, ...]) -> PredictCall:
    return PredictCall(_ECHO, {"x": np.ones(shape, np.float32)}, ["y"], "serving_default")


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    st.lists(
        st.tuples(st.integers(1, 2), st.sampled_from([0, 1, 7, 3000, 10**6, 10**9])).filter(
            lambda s: s[0] * s[1] <= 10**6
        ),
        min_size=1,
        max_size=4,
    ),
    st.sampled_from([(), (4, 8)]),
)
def test_padding_never_costs_far_beyond_the_calls(
    shapes: list[tuple[int, int]], allowed: tuple[int, ...]
) -> None:
    """Calls of equal rank, short in one dim and long in another (``[1, 0, 10^9]`` beside
    ``[1, 10^9, 0]`` is 4 EB padded): every call gets its own rows back, and padding takes no
    more than ``compat.limits.MAX_GROWTH_BYTES`` beyond the calls (else they run one by one)."""
    calls = [_call((1, a, b) if i % 2 else (1, b, a)) for i, (a, b) in enumerate(shapes)]
    knobs = BatchingArgs(
        enabled=True,
        max_batch_size=8,
        allowed_batch_sizes=list(allowed),
        pad_variable_length_inputs=True,
    )
    sent = sum(c.inputs["x"].nbytes for c in calls)
    results, error, peak = traced(lambda: run_batch(_Echo(), calls, knobs))  # type: ignore[arg-type]
    assert error is None, repr(error)
    assert peak <= 3 * growth_allowed(sent) + bound(sent), (peak, sent)
    for call, result in zip(calls, results, strict=True):
        assert not isinstance(result, Exception)
        assert result["y"].shape == call.inputs["x"].shape

"""The TF Serving DeepLab tutorial's client flow against the default model, served for real."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from export.deeplab import mean_iou
from export.synthetic import NUM_CLASSES, make_batch
from tests.harness import Server, start_server

SIZE = 64


@pytest.fixture(scope="module")
def server(deeplab_trained: Path) -> Server:  # type: ignore[misc]
    s = start_server(
        "model_name=deeplab", f"model_base_path={deeplab_trained}", wait_for=("deeplab",)
    )
    yield s
    s.stop()


def tutorial_request(image: np.ndarray) -> predict_pb2.PredictRequest:
    """Exactly what the tutorial's client sends: tensor_content image, [1]-shaped sizes."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "deeplab"
    request.model_spec.signature_name = "predict_images"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(image[None].astype(np.float32)))
    request.inputs["height"].CopyFrom(tf.make_tensor_proto([image.shape[0]], dtype=tf.int32))
    request.inputs["width"].CopyFrom(tf.make_tensor_proto([image.shape[1]], dtype=tf.int32))
    return request


def test_served_masks_match_ground_truth(
    server: Server, deeplab_training: tuple[Path, Any]
) -> None:
    """Mean IoU of the served maps against the synthetic ground truth, through gRPC; the
    default training (about a minute on 2 cores, paid once for the server) measured as much on
    its own held-out images."""
    _, stats = deeplab_training
    assert stats.mean_iou >= 0.8, stats
    images, truth = make_batch(32, SIZE, seed=12345)
    stub = server.prediction_stub()
    predicted = []
    for image in images:
        request = tutorial_request(image)
        assert request.inputs["images"].tensor_content  # as the tutorial's client sends it
        response = stub.Predict(request, 30.0)
        assert response.model_spec.version.value == 1
        assert response.model_spec.signature_name == "predict_images"
        seg = tf.make_ndarray(response.outputs["segmentation_map"])
        assert seg.dtype == np.int64 and seg.shape == (1, SIZE, SIZE)
        predicted.append(seg[0])
    iou = mean_iou(np.stack(predicted), truth, NUM_CLASSES)
    print(f"served mean IoU over 32 held-out images: {iou:.3f}")
    assert iou >= 0.8


def test_future_and_odd_sizes(server: Server) -> None:
    images, _ = make_batch(1, 37, seed=3)
    response = server.prediction_stub().Predict.future(tutorial_request(images[0]), 10.0).result()
    assert tf.make_ndarray(response.outputs["segmentation_map"]).shape == (1, 37, 37)


def test_serving_default_takes_images_only(server: Server) -> None:
    images, _ = make_batch(2, 24, seed=5)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "deeplab"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(images))
    response = server.prediction_stub().Predict(request, 10.0)
    assert response.model_spec.signature_name == "serving_default"
    seg = tf.make_ndarray(response.outputs["segmentation_map"])
    assert seg.shape == (2, 24, 24)
    assert set(np.unique(seg)) <= set(range(NUM_CLASSES))

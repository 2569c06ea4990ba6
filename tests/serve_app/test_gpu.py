"""GPU replicas (run on a machine with a GPU; CPU CI skips with the reason)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from tests.harness import start_server

HAS_GPU = shutil.which("nvidia-smi") is not None and bool(tf.config.list_physical_devices("GPU"))

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not HAS_GPU, reason="no GPU on this machine (run on the device machine)"),
]


def test_two_replicas_share_one_gpu(deeplab_base: Path) -> None:
    server = start_server(
        "model_name=deeplab",
        f"model_base_path={deeplab_base}",
        "scaling.accelerator=gpu",
        "scaling.num_gpus=0.5",
        "ingress_replicas=2",
        wait_for=("deeplab",),
    )
    try:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "deeplab"
        image = np.random.default_rng(0).uniform(0, 255, (1, 128, 128, 3)).astype(np.float32)
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(image))
        for _ in range(8):
            response = server.prediction_stub().Predict(request, 60.0)
            assert tf.make_ndarray(response.outputs["segmentation_map"]).shape == (1, 128, 128)
        apps = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        replica_pids = {str(pid) for pid, _ in server.replicas("Ingress")}  # this server's
        assert len(set(apps) & set(replica_pids)) == 2  # both serving replicas hold the card
    finally:
        server.stop()

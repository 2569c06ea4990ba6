"""The files for real clusters, from one source: the cluster's typed arguments (``CLUSTER_ARGS``).

    python -m serve_app.launch.manifests  # rewrite deploy/serve.yaml and deploy/rayservice.yaml
    python -m serve_app.launch.manifests --check  # fail if they differ from what would be written

- ``deploy/serve.yaml``: the Serve config for ``serve deploy`` (``launch.serve_config`` of
  ``CLUSTER_ARGS``; ``ray-tfserving --print_serve_config <flags>`` prints the same for other flags);
  ``cluster.yaml`` (Ray's cluster launcher) mounts and deploys it.
- ``deploy/rayservice.yaml``: a KubeRay ``RayService`` embedding the same config as its
  ``serveConfigV2``, with the client ports exposed and a GPU worker group, running the image
  ``deploy/Dockerfile`` builds (Ray's image plus the pinned packages and ray-tfserving).

Nothing in them is spelled by hand: ports, host and resources come from ``CLUSTER_ARGS``, the
versions from the package's pins.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from serve_app.config.args import AppArgs, BatchingArgs, ScalingArgs, ServingAutoscalingArgs
from serve_app.launch.boot import serve_config

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
MODELS_DIR = "/home/ray/models"
"""Where the cluster's nodes read models: a shared filesystem (NFS, EFS, a PVC) mounted on
every node; ``cluster.yaml`` syncs ``./models`` there instead."""

CLUSTER_ARGS = AppArgs(
    model_name="deeplab",
    model_base_path=f"{MODELS_DIR}/deeplab",
    host="0.0.0.0",  # every node's serving replicas take clients (an L4 balancer in front)
    scaling=ScalingArgs(accelerator="gpu", num_gpus=0.5, num_cpus=1.0),
    ingress_replicas="auto",
    serving_autoscaling=ServingAutoscalingArgs(min_replicas=2, max_replicas=8),
    batching=BatchingArgs(enabled=True, max_batch_size=16, batch_timeout_micros=2000),
)
"""The cluster's server: DeepLab from the shared model directory, serving replicas two per GPU
(num_gpus 0.5), autoscaled between 2 and 8 on the load they report, batching on, both ports on
every interface of the GPU workers."""

RAY_IMAGE = "rayproject/ray:2.60.0-py311-gpu"
"""The base image: Ray as pinned here, Python 3.11, CUDA."""
IMAGE = "ray-tfserving:0.1.0"
"""The image KubeRay runs: ``docker build -f deploy/Dockerfile -t ray-tfserving:0.1.0 .``"""

PIP = [
    "tensorflow[and-cuda]==2.21.0",
    "tensorflow-serving-api==2.21.0",
    "ray[serve]==2.60.0",
]
"""What the setup of every node installs before ray-tfserving itself (pyproject.toml's pins)."""


def serve_yaml(args: AppArgs = CLUSTER_ARGS) -> str:
    """The Serve config with Ray's and TensorFlow's defaults (not this process's environment)."""
    return yaml.safe_dump(serve_config(args, environ={}), sort_keys=False)


def rayservice(args: AppArgs = CLUSTER_ARGS) -> dict[str, Any]:
    """A KubeRay RayService (ray.io/v1): head without replicas, a GPU worker group."""
    ports = [
        {"name": "grpc", "containerPort": args.grpc_port},
        {"name": "rest", "containerPort": args.http_port},
    ]

    def container(name: str, resources: dict[str, Any], extra_ports: list[Any]) -> dict[str, Any]:
        return {
            "name": name,
            "image": IMAGE,
            "ports": extra_ports + ports,
            "resources": {"limits": resources, "requests": resources},
            "volumeMounts": [{"name": "models", "mountPath": MODELS_DIR}],
        }

    volumes = [{"name": "models", "persistentVolumeClaim": {"claimName": "models"}}]
    head_ports = [
        {"name": "gcs", "containerPort": 6379},
        {"name": "dashboard", "containerPort": 8265},
    ]
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": "ray-tfserving"},
        "spec": {
            "serveConfigV2": serve_yaml(args),
            "rayClusterConfig": {
                "rayVersion": "2.60.0",
                "headGroupSpec": {
                    # num-cpus 0: the head runs Ray's control plane and no replica.
                    "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                    "template": {
                        "spec": {
                            "containers": [
                                container("ray-head", {"cpu": "2", "memory": "8Gi"}, head_ports)
                            ],
                            "volumes": volumes,
                        }
                    },
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "gpu",
                        "replicas": 1,
                        "minReplicas": 1,
                        "maxReplicas": 4,
                        "rayStartParams": {"num-gpus": "1"},
                        "template": {
                            "spec": {
                                "containers": [
                                    container(
                                        "ray-worker",
                                        {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"},
                                        [],
                                    )
                                ],
                                "volumes": volumes,
                            }
                        },
                    }
                ],
            },
        },
    }


def rayservice_yaml(args: AppArgs = CLUSTER_ARGS) -> str:
    header = (
        "# Generated by `python -m serve_app.launch.manifests` from its source: edit there.\n"
        "# kubectl apply -f deploy/rayservice.yaml (KubeRay operator installed; a PVC 'models'\n"
        "# holding <name>/<version>/saved_model.pb). Clients: the worker pods' ports "
        f"{args.grpc_port} (gRPC), {args.http_port} (REST).\n"
    )
    return header + yaml.safe_dump(rayservice(args), sort_keys=False)


def dockerfile() -> str:
    pins = " ".join(f"'{p}'" for p in PIP)
    return (
        "# Generated by `python -m serve_app.launch.manifests` (serve_app/launch/manifests.py).\n"
        f"# docker build -f deploy/Dockerfile -t {IMAGE} .\n"
        f"FROM {RAY_IMAGE}\n"
        f"RUN pip install --no-cache-dir {pins}\n"
        "COPY --chown=ray . /home/ray/ray-tfserving\n"
        "RUN pip install --no-cache-dir /home/ray/ray-tfserving\n"
    )


def files() -> dict[Path, str]:
    header = (
        "# Generated by `python -m serve_app.launch.manifests` (serve_app/launch/manifests.py).\n"
    )
    return {
        DEPLOY / "serve.yaml": header + serve_yaml(),
        DEPLOY / "rayservice.yaml": rayservice_yaml(),
        DEPLOY / "Dockerfile": dockerfile(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serve_app.launch.manifests", description=__doc__
    )
    parser.add_argument("--check", action="store_true", help="fail if a file is out of date")
    ns = parser.parse_args(argv)
    stale = []
    for path, text in files().items():
        if ns.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for path in stale:
        print(f"{path} is out of date: python -m serve_app.launch.manifests", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())

"""The files for real clusters, from one source: the cluster's typed arguments (``CLUSTER_ARGS``).

    python -m serve_app.launch.manifests  # rewrite cluster.yaml and deploy/*
    python -m serve_app.launch.manifests --check  # fail if they differ from what would be written
    python -m serve_app.launch.manifests --gcs_redis_address redis:6379 --out DIR  # GCS FT on

- ``deploy/serve.yaml``: the Serve config for ``serve deploy`` (``launch.serve_config`` of
  ``CLUSTER_ARGS``; ``ray-tfserving --print_serve_config <flags>`` prints the same for other flags).
- ``cluster.yaml``: Ray's cluster launcher (AWS shown): a head without replicas and an
  autoscaling GPU worker type; it mounts and deploys ``deploy/serve.yaml``.
- ``deploy/rayservice.yaml``: a KubeRay ``RayService`` embedding the same config as its
  ``serveConfigV2``, with the client ports exposed and an autoscaling GPU worker group, running the
  image ``deploy/Dockerfile`` builds (Ray's image plus the pinned packages and ray-tfserving).

Nothing in them is spelled by hand: ports, host and resources come from ``CLUSTER_ARGS``, how the
cluster grows and shrinks from ``CLUSTER_SCALING`` (the same in both cluster files), the versions
from the package's pins. With ``--gcs_redis_address`` the head's GCS keeps its tables in that
Redis (Ray's GCS fault tolerance: ``RAY_REDIS_ADDRESS`` on the launcher's head, KubeRay's
``gcsFaultToleranceOptions``), so that a restarted GCS takes the cluster back.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
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


@dataclass(frozen=True)
class ClusterScaling:
    """How Ray's autoscaler sizes the cluster: GPU workers are added while serving replicas
    wait for resources, and removed once idle."""

    min_gpu_workers: int = 1
    """GPU workers kept however idle (at least one takes clients)."""
    max_gpu_workers: int = 4
    """The most GPU workers the autoscaler starts."""
    idle_timeout_s: int = 600
    """How long a worker runs no replica before the autoscaler removes it."""
    upscaling_speed: float = 1.0
    """Nodes started at once, as a multiple of those already there (Ray's ``upscaling_speed``)."""


CLUSTER_SCALING = ClusterScaling()
"""The autoscaler's settings, in ``cluster.yaml`` and the RayService alike."""

GPU_WORKER = {"CPU": 4, "GPU": 1}
"""What a GPU worker brings (g5.xlarge: 4 vCPU, 1 NVIDIA A10G), declared to the autoscaler."""

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


def rayservice(
    args: AppArgs = CLUSTER_ARGS,
    scaling: ClusterScaling = CLUSTER_SCALING,
    gcs_redis_address: str | None = None,
) -> dict[str, Any]:
    """A KubeRay RayService (ray.io/v1): head without replicas, a GPU worker group that KubeRay's
    in-tree autoscaler sizes; with ``gcs_redis_address``, GCS fault tolerance on that Redis."""
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
    cluster: dict[str, Any] = {
        "rayVersion": "2.60.0",
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": {
            "idleTimeoutSeconds": scaling.idle_timeout_s,
            "upscalingMode": "Default",
        },
    }
    if gcs_redis_address is not None:
        # The GCS keeps its tables in Redis (password: a Secret's, if it has one).
        cluster["gcsFaultToleranceOptions"] = {"redisAddress": gcs_redis_address}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": "ray-tfserving"},
        "spec": {
            "serveConfigV2": serve_yaml(args),
            "rayClusterConfig": {
                **cluster,
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
                        "replicas": scaling.min_gpu_workers,
                        "minReplicas": scaling.min_gpu_workers,
                        "maxReplicas": scaling.max_gpu_workers,
                        "rayStartParams": {"num-gpus": str(GPU_WORKER["GPU"])},
                        "template": {
                            "spec": {
                                "containers": [
                                    container(
                                        "ray-worker",
                                        {
                                            "cpu": "8",
                                            "memory": "32Gi",
                                            "nvidia.com/gpu": str(GPU_WORKER["GPU"]),
                                        },
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


GCS_FT_HOWTO = (
    "# GCS fault tolerance (a restarted head GCS takes the cluster back; serving never stops,\n"
    "# tests/serve_app/test_node_faults.py): an external Redis, here with\n"
    "#   python -m serve_app.launch.manifests --gcs_redis_address <host>:6379 --out <dir>\n"
)


def rayservice_yaml(
    args: AppArgs = CLUSTER_ARGS,
    scaling: ClusterScaling = CLUSTER_SCALING,
    gcs_redis_address: str | None = None,
) -> str:
    header = (
        "# Generated by `python -m serve_app.launch.manifests` from its source: edit there.\n"
        "# kubectl apply -f deploy/rayservice.yaml (KubeRay operator installed; a PVC 'models'\n"
        "# holding <name>/<version>/saved_model.pb). Clients: the worker pods' ports "
        f"{args.grpc_port} (gRPC), {args.http_port} (REST).\n"
        "# KubeRay's autoscaler adds GPU workers while replicas wait for one, up to "
        f"maxReplicas,\n# and removes a worker idle for idleTimeoutSeconds.\n"
        + GCS_FT_HOWTO
        + "# (it sets rayClusterConfig.gcsFaultToleranceOptions.redisAddress).\n"
    )
    return header + yaml.safe_dump(rayservice(args, scaling, gcs_redis_address), sort_keys=False)


def cluster_config(
    scaling: ClusterScaling = CLUSTER_SCALING, gcs_redis_address: str | None = None
) -> dict[str, Any]:
    """Ray's cluster launcher config (``ray up``): a head running Ray's control plane only, an
    autoscaling GPU worker type; the head deploys ``deploy/serve.yaml`` once up."""
    redis = f"RAY_REDIS_ADDRESS={gcs_redis_address} " if gcs_redis_address else ""
    return {
        "cluster_name": "ray-tfserving",
        "max_workers": scaling.max_gpu_workers,
        "upscaling_speed": scaling.upscaling_speed,
        "idle_timeout_minutes": scaling.idle_timeout_s / 60,
        "docker": {
            "image": RAY_IMAGE,
            "container_name": "ray_container",
            "pull_before_run": True,
            "run_options": ["--ulimit nofile=65536:65536"],
        },
        "provider": {"type": "aws", "region": "us-west-2", "cache_stopped_nodes": False},
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            "head": {
                # No CPU to offer: no replica is placed on the head.
                "resources": {"CPU": 0},
                "node_config": {"InstanceType": "m6i.xlarge", "ImageId": AMI},
            },
            "gpu_worker": {
                "min_workers": scaling.min_gpu_workers,
                "max_workers": scaling.max_gpu_workers,
                "resources": dict(GPU_WORKER),
                "node_config": {"InstanceType": "g5.xlarge", "ImageId": AMI},
            },
        },
        "head_node_type": "head",
        "file_mounts": {
            "/home/ray/ray-tfserving": ".",
            MODELS_DIR: "./models",
        },
        "setup_commands": [
            "pip install -q " + " ".join(f"'{p}'" for p in PIP),
            "pip install -q /home/ray/ray-tfserving",
        ],
        "head_start_ray_commands": [
            "ray stop",
            f"ulimit -n 65536; {redis}ray start --head --port=6379 --num-cpus=0 "
            "--dashboard-host=0.0.0.0 --autoscaling-config=~/ray_bootstrap_config.yaml",
            "for i in $(seq 60); do serve deploy /home/ray/ray-tfserving/deploy/serve.yaml "
            "&& break; sleep 5; done",
        ],
        "worker_start_ray_commands": [
            "ray stop",
            "ulimit -n 65536; ray start --address=$RAY_HEAD_IP:6379",
        ],
    }


AMI = "ami-0a2363a9cff180a64"
"""Deep Learning AMI GPU (Ubuntu 22.04) in us-west-2: pick your region's."""


def cluster_yaml(
    scaling: ClusterScaling = CLUSTER_SCALING, gcs_redis_address: str | None = None
) -> str:
    header = (
        "# Generated by `python -m serve_app.launch.manifests` from its source: edit there.\n"
        "# A Ray cluster for ray-tfserving with autoscaling GPU workers (AWS shown; the same\n"
        "# shape works on GCP/Azure: edit the provider, region and images in the source).\n"
        "#   make model          # ./models/deeplab/1, synced to every node (or a shared\n"
        f"#                       # filesystem, EFS/NFS, mounted at {MODELS_DIR})\n"
        "#   ray up cluster.yaml # starts the head, which deploys deploy/serve.yaml\n"
        "#   ray status          # GPU workers join; serving replicas land on them\n"
        f"# Clients (or an L4 load balancer) use any GPU worker's ports {CLUSTER_ARGS.grpc_port} "
        f"(gRPC) and {CLUSTER_ARGS.http_port} (REST).\n"
        "# The head declares no CPU, so runs no replica; the GPU worker type declares what a\n"
        "# new worker brings, so the autoscaler adds workers while replicas wait for a GPU and\n"
        "# removes a worker idle for idle_timeout_minutes. ImageId: AWS's Deep Learning AMI GPU\n"
        "# (Ubuntu 22.04) in us-west-2: pick your region's.\n"
        + GCS_FT_HOWTO
        + "# (it starts the head with RAY_REDIS_ADDRESS=<host>:6379 ray start --head ...).\n"
    )
    config = cluster_config(scaling, gcs_redis_address)
    return header + yaml.safe_dump(config, sort_keys=False, width=200)  # a command a line


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


def files(root: Path = REPO, gcs_redis_address: str | None = None) -> dict[Path, str]:
    """Every generated file under ``root`` (the repository's checkout by default)."""
    header = (
        "# Generated by `python -m serve_app.launch.manifests` (serve_app/launch/manifests.py).\n"
    )
    deploy = root / DEPLOY.relative_to(REPO)
    return {
        root / "cluster.yaml": cluster_yaml(CLUSTER_SCALING, gcs_redis_address),
        deploy / "serve.yaml": header + serve_yaml(),
        deploy / "rayservice.yaml": rayservice_yaml(
            CLUSTER_ARGS, CLUSTER_SCALING, gcs_redis_address
        ),
        deploy / "Dockerfile": dockerfile(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serve_app.launch.manifests", description=__doc__
    )
    parser.add_argument("--check", action="store_true", help="fail if a file is out of date")
    parser.add_argument(
        "--gcs_redis_address",
        metavar="HOST:PORT",
        help="turn GCS fault tolerance on: the head's GCS keeps its tables in this Redis",
    )
    parser.add_argument(
        "--out", type=Path, default=REPO, help="write under this directory (default: the repo)"
    )
    ns = parser.parse_args(argv)
    stale = []
    for path, text in files(ns.out, ns.gcs_redis_address).items():
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

"""The files for real clusters (no server): generated ones match their source, every file
passes Ray's own schemas, and a typo in any of them fails."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pydantic
import pytest
import ray
import yaml
from ray.serve.schema import ServeApplicationSchema, ServeDeploySchema

from serve_app.launch import manifests
from serve_app.launch.boot import parse_cli_args

REPO = Path(__file__).resolve().parents[3]
RAY_SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"


def load(path: str) -> Any:
    return yaml.safe_load((REPO / path).read_text())


def test_generated_files_are_up_to_date() -> None:
    for path, text in manifests.files().items():
        assert path.read_text() == text, f"{path}: run python -m serve_app.launch.manifests"
    assert manifests.main(["--check"]) == 0


class UnknownKeys(ValueError):
    """A key of a Serve config that Ray's schema would ignore."""


def check_serve_config(config: dict[str, Any]) -> None:
    """Ray Serve's schema, plus the keys it would ignore: every key must be one it knows
    (else ``UnknownKeys``), and the application's ``args`` must be ours (``AppArgs`` forbids
    unknown keys: pydantic's ``ValidationError``)."""
    ServeDeploySchema.model_validate(config)
    unknown = set(config) - set(ServeDeploySchema.model_fields)
    if unknown:
        raise UnknownKeys(f"unknown Serve config keys: {sorted(unknown)}")
    for app in config["applications"]:
        unknown = set(app) - set(ServeApplicationSchema.model_fields)
        if unknown:
            raise UnknownKeys(f"unknown application keys: {sorted(unknown)}")
        assert app["import_path"] == "serve_app:app"
        parse_cli_args(app["args"])


def test_serve_config_passes_serves_schema_and_is_the_cluster_args() -> None:
    config = load("deploy/serve.yaml")
    check_serve_config(config)
    assert config["proxy_location"] == "Disabled"  # the serving replicas hold the ports
    args = parse_cli_args(config["applications"][0]["args"])
    assert args == manifests.CLUSTER_ARGS


@pytest.mark.parametrize(
    ("where", "typo", "error", "message"),
    [
        ((), "proxy_locaton", UnknownKeys, r"unknown Serve config keys: \['proxy_locaton'\]"),
        (
            ("applications", 0),
            "import_pth",
            UnknownKeys,
            r"unknown application keys: \['import_pth'\]",
        ),
        (
            ("applications", 0, "args"),
            "grpc_prot",
            pydantic.ValidationError,
            r"AppArgs\ngrpc_prot\n  Extra inputs are not permitted",
        ),
        (
            ("applications", 0, "args", "scaling"),
            "num_gpu",
            pydantic.ValidationError,
            r"AppArgs\nscaling\.num_gpu\n  Extra inputs are not permitted",
        ),
    ],
)
def test_a_typo_in_the_serve_config_fails(
    where: tuple[Any, ...], typo: str, error: type[Exception], message: str
) -> None:
    config = copy.deepcopy(load("deploy/serve.yaml"))
    node = config
    for key in where:
        node = node[key]
    node[typo] = 1
    with pytest.raises(error, match=message):
        check_serve_config(config)


def test_rayservice_embeds_the_same_serve_config() -> None:
    service = load("deploy/rayservice.yaml")
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    check_serve_config(embedded)
    assert embedded == load("deploy/serve.yaml")
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no replica there
    (gpu,) = cluster["workerGroupSpecs"]
    assert gpu["rayStartParams"]["num-gpus"] == "1"
    (worker,) = gpu["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    ports = {p["containerPort"] for p in worker["ports"]}
    args = manifests.CLUSTER_ARGS
    assert {args.grpc_port, args.http_port} <= ports  # clients reach the serving replicas
    assert worker["image"] == manifests.IMAGE
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    assert f"FROM {manifests.RAY_IMAGE}" in dockerfile
    assert all(pin in dockerfile for pin in manifests.PIP)


def test_cluster_yaml_passes_rays_schema_with_gpus_declared() -> None:
    schema = json.loads(RAY_SCHEMA.read_text())
    config = load("cluster.yaml")
    jsonschema.validate(config, schema)
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}  # runs no replicas
    gpu = types["gpu_worker"]
    assert gpu["resources"]["GPU"] >= 1 and gpu["max_workers"] > gpu["min_workers"] >= 0
    typo = copy.deepcopy(config)
    typo["max_worker"] = 4
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(typo, schema)


def test_cluster_yaml_installs_the_pins_and_deploys_the_generated_config() -> None:
    config = load("cluster.yaml")
    assert config["docker"]["image"] == manifests.RAY_IMAGE
    setup = " ".join(config["setup_commands"])
    assert all(f"'{pin}'" in setup for pin in manifests.PIP)
    head = " ".join(config["head_start_ray_commands"])
    assert "serve deploy /home/ray/ray-tfserving/deploy/serve.yaml" in head
    assert config["file_mounts"]["/home/ray/models"]  # where CLUSTER_ARGS reads models
    assert manifests.CLUSTER_ARGS.model_base_path.startswith(manifests.MODELS_DIR)


def test_both_cluster_files_autoscale_the_gpu_workers_alike() -> None:
    """``cluster.yaml`` (Ray's autoscaler) and the RayService (KubeRay's in-tree autoscaler) carry
    the same bounds and idle timeout, ``CLUSTER_SCALING``'s."""
    scaling = manifests.CLUSTER_SCALING
    assert 0 < scaling.min_gpu_workers < scaling.max_gpu_workers
    config = load("cluster.yaml")
    gpu = config["available_node_types"]["gpu_worker"]
    assert (gpu["min_workers"], gpu["max_workers"], config["max_workers"]) == (
        scaling.min_gpu_workers,
        scaling.max_gpu_workers,
        scaling.max_gpu_workers,
    )
    assert config["idle_timeout_minutes"] * 60 == scaling.idle_timeout_s
    assert config["upscaling_speed"] == scaling.upscaling_speed
    assert gpu["resources"] == manifests.GPU_WORKER  # what a new worker brings
    head = " ".join(config["head_start_ray_commands"])
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    cluster = load("deploy/rayservice.yaml")["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["autoscalerOptions"]["idleTimeoutSeconds"] == scaling.idle_timeout_s
    (group,) = cluster["workerGroupSpecs"]
    assert (group["minReplicas"], group["replicas"], group["maxReplicas"]) == (
        scaling.min_gpu_workers,
        scaling.min_gpu_workers,
        scaling.max_gpu_workers,
    )
    assert group["rayStartParams"]["num-gpus"] == str(manifests.GPU_WORKER["GPU"])


def test_gcs_fault_tolerance_is_off_by_default_and_one_option_turns_it_on(
    tmp_path: Path,
) -> None:
    config, service = load("cluster.yaml"), load("deploy/rayservice.yaml")
    assert "RAY_REDIS_ADDRESS" not in " ".join(config["head_start_ray_commands"])
    assert "gcsFaultToleranceOptions" not in service["spec"]["rayClusterConfig"]
    # The files say how to turn it on.
    for path in ("cluster.yaml", "deploy/rayservice.yaml"):
        assert "--gcs_redis_address <host>:6379" in (REPO / path).read_text()

    redis = "redis.example:6379"
    assert manifests.main(["--out", str(tmp_path), "--gcs_redis_address", redis]) == 0
    assert manifests.main(["--out", str(tmp_path), "--gcs_redis_address", redis, "--check"]) == 0
    assert manifests.main(["--out", str(tmp_path), "--check"]) == 1  # these files differ
    on = yaml.safe_load((tmp_path / "cluster.yaml").read_text())
    jsonschema.validate(on, json.loads(RAY_SCHEMA.read_text()))
    # Ray's way for `ray start`: the head's GCS stores its tables in the Redis named by
    # RAY_REDIS_ADDRESS (tests/serve_app/test_node_faults.py runs a cluster so). Nothing else
    # changes.
    (start,) = [c for c in on["head_start_ray_commands"] if "ray start --head" in c]
    assert f"; RAY_REDIS_ADDRESS={redis} ray start --head " in start
    assert {k: v for k, v in on.items() if k != "head_start_ray_commands"} == {
        k: v for k, v in config.items() if k != "head_start_ray_commands"
    }
    on_service = yaml.safe_load((tmp_path / "deploy" / "rayservice.yaml").read_text())
    ft = on_service["spec"]["rayClusterConfig"].pop("gcsFaultToleranceOptions")
    assert ft == {"redisAddress": redis}
    assert on_service == service
    # The Serve config and the image are the same either way.
    for path in ("deploy/serve.yaml", "deploy/Dockerfile"):
        assert (tmp_path / path).read_text() == (REPO / path).read_text()


def test_pins_match_the_package() -> None:
    text = (REPO / "pyproject.toml").read_text()
    for pin in manifests.PIP:
        name = pin.split("==")[0].split("[")[0]
        version = pin.split("==")[1]
        assert f"{name}" in text and f"=={version}" in text, pin

"""The builder that ``serve run serve_app:app`` and ``serve deploy`` call, without a server: pure
(Serve's controller runs it on a cluster), and what every replica needs travels in the
deployments' runtime_env."""

from __future__ import annotations

import os
from typing import Any

import pytest
import ray

import serve_app.launch.app  # noqa: F401 - Ray and TensorFlow set variables of their own on import
from serve_app.launch.boot import application_from_cli_args, parse_cli_args, serve_config
from tests.harness import TESTDATA

HALF_PLUS_TWO = str(TESTDATA / "saved_model_half_plus_two_cpu")


def deployments(app: Any) -> dict[str, Any]:
    """Every deployment bound into the application, by name."""
    found: dict[str, Any] = {}

    def walk(node: Any) -> None:
        bound = getattr(node, "_bound_deployment", None)
        if bound is None or bound.name in found:
            return
        found[bound.name] = bound
        for arg in (*bound.init_args, *bound.init_kwargs.values()):
            for item in arg if isinstance(arg, list) else [arg]:
                walk(item)

    walk(app)
    return found


def test_the_builder_is_pure() -> None:
    before = dict(os.environ)
    app = application_from_cli_args({"model_name": "hpt", "model_base_path": HALF_PLUS_TWO})
    assert not ray.is_initialized()  # no ray.init, hence no serve.start either
    assert dict(os.environ) == before
    assert set(deployments(app)) == {"Ingress", "VersionManager"}


@pytest.mark.parametrize(("host", "rebound"), [("127.0.0.1", True), ("0.0.0.0", False)])
def test_the_serve_config_carries_what_every_replica_needs(host: str, rebound: bool) -> None:
    """At the application's level (not per deployment: there the version manager's own
    redeploys inherit the same, and Serve sees an unchanged application)."""
    args = parse_cli_args({"model_name": "hpt", "model_base_path": HALF_PLUS_TWO, "host": host})
    (application,) = serve_config(args)["applications"]
    env = application["runtime_env"]
    assert env["env_vars"]["RAY_SERVE_USE_GRPC_BY_DEFAULT"] == "1"
    assert int(env["env_vars"]["RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH"]) == 2**31 - 1
    # Loopback: Serve's inter-deployment servers are rebound to it; on a network they keep
    # Ray's binding, which the other nodes must reach.
    assert ("worker_process_setup_hook" in env) is rebound
    app = application_from_cli_args(application["args"])
    found = deployments(app)
    assert all("runtime_env" not in d.ray_actor_options for d in found.values())


def test_own_deployments_are_per_model() -> None:
    app = application_from_cli_args(
        {
            "model_name": "hpt",
            "model_base_path": HALF_PLUS_TWO,
            "own_deployments.hpt.num_replicas": "3",
            "own_deployments.hpt.num_cpus": "0.5",
        }
    )
    found = deployments(app)
    assert set(found) == {"Ingress", "VersionManager", "hpt-v123"}
    assert found["hpt-v123"].num_replicas == 3
    assert found["hpt-v123"].ray_actor_options["num_cpus"] == 0.5
    # No model is held by the serving replicas, which then reserve little.
    assert found["Ingress"].user_config["local"] == {}


def test_serve_config_round_trips_the_arguments() -> None:
    args = parse_cli_args(
        {
            "model_name": "hpt",
            "model_base_path": HALF_PLUS_TWO,
            "batching.enabled": "true",
            "batching.allowed_batch_sizes": "2,4,32",
            "grpc_port": "9100",
        }
    )
    config = serve_config(args)
    (application,) = config["applications"]
    again = parse_cli_args(application["args"])
    assert again == args
    assert config["proxy_location"] == "Disabled"


def test_user_configs_are_the_receivers_typed_models_and_the_manager_gets_the_builder() -> None:
    """What the builder ships validates as what each receiver reads (``replica_config``), and
    the version manager is handed ``build_app`` for its redeploys (it imports no builder)."""
    from serve_app.launch.app import build_app
    from serve_app.runtime.replica_config import IngressConfig, ListenConfig, VersionConfig

    app = application_from_cli_args(
        {
            "model_name": "hpt",
            "model_base_path": HALF_PLUS_TWO,
            "batching.enabled": "true",
            "grpc_port": "9100",
        }
    )
    found = deployments(app)
    config = IngressConfig.model_validate(found["Ingress"].user_config)
    assert set(config.local) == {"hpt-v123"} and config.local["hpt-v123"].version == 123
    assert config.versions == VersionConfig.model_validate({"batching": {"enabled": True}})
    _, _, listen = found["Ingress"].init_args
    assert isinstance(listen, ListenConfig) and listen.grpc_port == 9100
    assert found["VersionManager"].init_args[2] is build_app


def test_the_serving_replicas_are_built_with_their_version_and_adopt_a_running_one() -> None:
    """The ingress knows the version it was built with (it reports it as started); ``adopt``
    maps that version to another it runs under, so a redeploy keeps it (``Applier.adopt_running``),
    and leaves every other version as it is."""
    from serve_app.launch.app import build_app
    from serve_app.launch.boot import parse_cli_args
    from serve_app.lifecycle.plan import Plan

    args = parse_cli_args({"model_name": "hpt", "model_base_path": HALF_PLUS_TWO})
    ours = deployments(build_app(args, Plan()))["Ingress"]
    build = ours.init_kwargs["build"]
    assert ours.version == build and len(build) == 16
    adopted = deployments(build_app(args, Plan(), {build: "config-code-version"}))["Ingress"]
    assert adopted.version == "config-code-version"
    assert adopted.init_kwargs["build"] == build  # what it reports stays ours
    other = deployments(build_app(args, Plan(), {"another": "config-code-version"}))["Ingress"]
    assert other.version == build
    changed = parse_cli_args(
        {"model_name": "hpt", "model_base_path": HALF_PLUS_TWO, "grpc_port": "9100"}
    )
    assert deployments(build_app(changed, Plan(), {build: "x"}))["Ingress"].version != "x"


def test_the_version_manager_knows_its_build_and_adopts_the_version_it_runs_under() -> None:
    """The version manager is handed the version the builder gives it; ``adopt`` keeps it
    under the version it runs (a Serve config's), so its own first redeploy does not replace
    it, and leaves it as it is for any other mapping."""
    from serve_app.launch.app import build_app
    from serve_app.launch.boot import parse_cli_args
    from serve_app.lifecycle.plan import Plan

    args = parse_cli_args({"model_name": "hpt", "model_base_path": HALF_PLUS_TWO})
    ours = deployments(build_app(args, Plan()))["VersionManager"]
    build = ours.init_kwargs["build"]
    assert ours.version == build and len(build) == 16
    assert build != deployments(build_app(args, Plan()))["Ingress"].init_kwargs["build"]
    kept = deployments(build_app(args, Plan(), {build: "config-code-version"}))
    assert kept["VersionManager"].version == "config-code-version"
    assert kept["VersionManager"].init_kwargs["build"] == build
    assert kept["Ingress"].version != "config-code-version"
    other = deployments(build_app(args, Plan(), {"another": "config-code-version"}))
    assert other["VersionManager"].version == build


def test_a_version_in_its_own_deployment_is_built_with_its_version_and_adopts_a_running_one() -> (
    None
):
    """As the ingress: a model version's deployment answers ``built_with`` with the version it
    was built with, and ``adopt`` keeps it under the one it runs; other settings, another."""
    from serve_app.launch.app import build_app
    from serve_app.launch.boot import parse_cli_args
    from serve_app.lifecycle.plan import Plan

    raw = {"model_name": "hpt", "model_base_path": HALF_PLUS_TWO, "colocate": "false"}
    plan = Plan(deployed={"hpt": {123: f"{HALF_PLUS_TWO}/00000123"}})
    ours = deployments(build_app(parse_cli_args(raw), plan))["hpt-v123"]
    build = ours.init_kwargs["build"]
    assert ours.version == build and len(build) == 16
    kept = deployments(build_app(parse_cli_args(raw), plan, {build: "config-code-version"}))
    assert kept["hpt-v123"].version == "config-code-version"
    assert kept["Ingress"].version != "config-code-version"  # its own hash is another
    other = parse_cli_args({**raw, "own_deployments.hpt.num_cpus": "0.5"})
    assert deployments(build_app(other, plan, {build: "x"}))["hpt-v123"].version != "x"


def test_the_memory_budget_and_pinned_models_reach_the_serving_replicas(tmp_path: Any) -> None:
    """``--model_memory_budget_mb`` and the model config's ``pinned`` travel in the serving
    replicas' user_config (``runtime.paging`` reads them there)."""
    from serve_app.runtime.replica_config import IngressConfig

    config = tmp_path / "models.config"
    config.write_text(
        "model_config_list { "
        f'config {{ name: "hot" base_path: "{HALF_PLUS_TWO}" model_platform: "tensorflow" '
        "pinned: true } "
        f'config {{ name: "cold" base_path: "{HALF_PLUS_TWO}" model_platform: "tensorflow" }} }}'
    )
    app = application_from_cli_args(
        {"model_config_file": str(config), "model_memory_budget_mb": "64"}
    )
    ingress = IngressConfig.model_validate(deployments(app)["Ingress"].user_config)
    assert ingress.model_memory_budget_mb == 64
    assert {t: v.pinned for t, v in ingress.local.items()} == {"hot-v123": True, "cold-v123": False}
    default = application_from_cli_args({"model_config_file": str(config)})
    assert not IngressConfig.model_validate(
        deployments(default)["Ingress"].user_config
    ).model_memory_budget_mb

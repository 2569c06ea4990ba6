"""``launch.ray_patches`` against the Ray that is installed: each private target exists with
the signature we wrap and is called the way we rely on, the rebinding really binds loopback on
real gRPC servers, the version guard refuses another Ray, and Ray reads our settings as we
set them. Real Ray modules throughout; a patch applied here is undone after its test."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
import ray

from serve_app import ray_patches
from serve_app.launch import manifests
from serve_app.launch.boot import EMBEDDED_RAY_ENV
from serve_app.ray_patches import (
    ENABLE_CLUSTER_ENV,
    GRPC_BIND,
    GRPC_BINDERS,
    GRPC_HOST_ENV,
    LOOPBACK_RAY,
    RAY_VERSION,
    SERVE_ENV,
    RayPatchError,
)

REPO = Path(__file__).resolve().parents[3]
EVERY_INTERFACE = {"::", "0.0.0.0"}
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1"}  # gRPC's dual-stack socket, IPv4-mapped


def test_one_ray_version_is_pinned_everywhere() -> None:
    assert ray.__version__ == RAY_VERSION, "Ray changed: check every patch, then RAY_VERSION"
    assert f'"ray[serve]=={RAY_VERSION}"' in (REPO / "pyproject.toml").read_text()
    assert f":{RAY_VERSION}-" in manifests.RAY_IMAGE


@pytest.mark.parametrize("version", ["2.61.0", "2.59.1", "3.0.0", "2.60.0rc1"])
@pytest.mark.parametrize("patch", [GRPC_BIND, LOOPBACK_RAY])
def test_the_guard_refuses_another_ray(version: str, patch: str) -> None:
    with pytest.raises(RayPatchError) as info:
        ray_patches.require_ray(patch, version)
    message = str(info.value)
    assert f"Ray {RAY_VERSION} only" in message and f"this is Ray {version}" in message
    assert patch in message
    ray_patches.require_ray(patch, RAY_VERSION)  # the pinned one passes


@pytest.mark.parametrize(
    ("module", "name"),
    [("ray.serve._private.replica", "no_such_binder"), ("ray.serve._private.gone", "x")],
)
def test_a_missing_target_is_said_not_an_attribute_error(module: str, name: str) -> None:
    with pytest.raises(RayPatchError, match=f"no {module}.{name}") as info:
        ray_patches.target(module, name, GRPC_BIND)
    assert GRPC_BIND in str(info.value)


@pytest.mark.parametrize(
    ("binder", "parameters"),
    [
        (GRPC_BINDERS[0], ["server", "address"]),
        (GRPC_BINDERS[1], ["grpc_server", "server_address"]),
    ],
)
def test_each_grpc_binder_has_the_signature_we_wrap(
    binder: tuple[str, str], parameters: list[str]
) -> None:
    function = ray_patches.target(*binder, GRPC_BIND)
    signature = inspect.signature(function)
    assert list(signature.parameters) == parameters
    assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in signature.parameters.values())


def test_ray_asks_for_every_interface_through_the_names_we_replace() -> None:
    """Each call site passes ``[::]`` and looks the binder up when it runs (a module global, a
    function-level import): replacing the module's attribute is what Serve then calls."""
    from ray.serve._private import grpc_util, replica

    replica_start = inspect.getsource(replica.Replica._on_initialized)
    assert 'add_port_to_grpc_server(self._server, "[::]:0")' in replica_start
    assert "add_port_to_grpc_server" in vars(replica)
    proxy_start = inspect.getsource(grpc_util.start_grpc_server)
    assert "from ray.serve._private.default_impl import add_grpc_address" in proxy_start
    assert 'add_grpc_address(server, f"[::]:{grpc_options.port}")' in proxy_start


def listening() -> set[tuple[str, int]]:
    """(address, port) of every TCP socket this process listens on."""
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process().net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    }


async def bind_and_probe(bind: Any) -> set[str]:
    """The addresses a real grpc.aio server (as Serve's are) listens on after ``bind(server,
    "[::]:0")``; a client must reach it on 127.0.0.1."""
    server = grpc.aio.server()
    before = listening()
    bind(server, "[::]:0")
    await server.start()
    try:
        new = listening() - before
        (port,) = {p for _, p in new}
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), timeout=10)
        return {address for address, _ in new}
    finally:
        await server.stop(None)


@pytest.mark.parametrize("binder", GRPC_BINDERS)
def test_the_rebound_binder_listens_on_loopback_only(binder: tuple[str, str]) -> None:
    original = ray_patches.target(*binder, GRPC_BIND)
    assert asyncio.run(bind_and_probe(original)) <= EVERY_INTERFACE  # Ray's own: all
    assert asyncio.run(bind_and_probe(ray_patches.rebound(original, "127.0.0.1"))) <= LOOPBACK


def test_rebinding_brackets_an_ipv6_host_and_is_idempotent() -> None:
    asked: list[str] = []

    def record(server: object, address: str) -> None:
        asked.append(address)

    bind = ray_patches.rebound(record, "::1")
    assert ray_patches.rebound(bind, "::1") is bind
    bind(None, "[::]:0")
    bind(None, "[::]:9000")
    assert asked == ["[::1]:0", "[::1]:9000"]


def test_the_setup_hook_replaces_both_binders_once(monkeypatch: pytest.MonkeyPatch) -> None:
    places = [(importlib.import_module(module), name) for module, name in GRPC_BINDERS]

    def current() -> list[Any]:
        return [getattr(module, name) for module, name in places]

    originals = current()
    for (module, name), original in zip(places, originals, strict=True):
        monkeypatch.setattr(module, name, original)  # undone after the test
    monkeypatch.delenv(GRPC_HOST_ENV, raising=False)
    ray_patches.bind_grpc_to_host()  # not set: Ray's binding stays
    assert current() == originals
    monkeypatch.setenv(GRPC_HOST_ENV, "127.0.0.1")
    ray_patches.bind_grpc_to_host()
    patched = current()
    assert all(getattr(p, "_rtfs_patched", False) for p in patched)
    assert all(p is not o for p, o in zip(patched, originals, strict=True))
    ray_patches.bind_grpc_to_host()  # a second import of serve_app: not wrapped twice
    assert current() == patched
    assert asyncio.run(bind_and_probe(patched[0])) <= LOOPBACK


def test_enable_ray_cluster_is_what_rays_node_address_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ray._private.ray_constants as ray_constants
    from ray._private import services, worker

    assert ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR == ENABLE_CLUSTER_ENV
    assert services.ray_constants is ray_constants  # read through the module, at call time
    assert "if not ray_constants.ENABLE_RAY_CLUSTER:" in inspect.getsource(
        services.get_node_ip_address
    )
    assert worker._global_node is None  # no Ray in this process: the constant decides
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", ray_constants.ENABLE_RAY_CLUSTER)
    monkeypatch.delenv(ENABLE_CLUSTER_ENV, raising=False)  # both restored after the test
    ray_patches.keep_embedded_ray_on_loopback()
    assert ray_constants.ENABLE_RAY_CLUSTER is False
    assert os.environ[ENABLE_CLUSTER_ENV] == "0"
    assert services.get_node_ip_address() == "127.0.0.1"


SETTINGS_AS_RAY_READS_THEM = """
import json
import ray._private.ray_constants as ray_constants
from ray.serve._private import constants
print(json.dumps([
    constants.RAY_SERVE_USE_GRPC_BY_DEFAULT,
    constants.RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH,
    constants.RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD,
    constants.RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP,
    ray_constants.ENABLE_RAY_CLUSTER,
    constants.CONTROL_LOOP_INTERVAL_S,
]))
"""


def test_ray_reads_our_settings_in_a_new_process() -> None:
    """What a replica's (or raylet's child's) process sees at start, against Ray's defaults."""
    names = {*SERVE_ENV, *EMBEDDED_RAY_ENV, ENABLE_CLUSTER_ENV, "RAY_SERVE_THROUGHPUT_OPTIMIZED"}
    clean = {k: v for k, v in os.environ.items() if k not in names}
    ours = {**clean, **ray_patches.serve_env({}), **EMBEDDED_RAY_ENV, ENABLE_CLUSTER_ENV: "0"}
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", SETTINGS_AS_RAY_READS_THEM],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for env in (ours, clean)
    ]
    (with_ours, _), (by_default, _) = (run.communicate(timeout=120) for run in runs)
    assert json.loads(with_ours) == [True, 2**31 - 1, False, False, False, 0.5]
    assert json.loads(by_default) == [False, 4 * 2**20, True, True, True, 0.1]
    # ... and Serve's controller sleeps exactly that between two turns of its loop.
    from ray.serve._private import controller

    loop = inspect.getsource(controller.ServeController.run_control_loop)
    assert "await asyncio.sleep(CONTROL_LOOP_INTERVAL_S)" in loop


def test_settings_are_kept_with_a_warning_at_another_ray() -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    logger = logging.getLogger("ray.serve")  # Ray's: it does not propagate to caplog's root
    logger.addHandler(handler)
    try:
        assert ray_patches.serve_env({}, RAY_VERSION) == SERVE_ENV
        assert not records
        lowered = {"RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": "8"}
        env = ray_patches.serve_env(lowered, "9.9.9-test")
        assert env == {**SERVE_ENV, **lowered}
        ray_patches.serve_env({}, "9.9.9-test")  # once per process
    finally:
        logger.removeHandler(handler)
    (record,) = records
    assert record.levelno == logging.WARNING
    assert "9.9.9-test" in record.getMessage() and RAY_VERSION in record.getMessage()


def test_the_package_reads_the_variable_the_setup_hook_reads() -> None:
    """``serve_app`` imports Ray (and patches it) only in workers where the variable is set, so
    that the CLI takes its signals before Ray is imported: the two names must agree."""
    import serve_app

    assert serve_app.GRPC_HOST_ENV == ray_patches.GRPC_HOST_ENV
    code = "import sys, serve_app.launch.cli; print('ray' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if k != ray_patches.GRPC_HOST_ENV}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr[-2000:]


def test_versioned_options_pin_the_code_version_on_rays_deployment() -> None:
    """Ray refuses ``version`` in public options; ``versioned`` passes it the way Serve does."""
    from ray import serve

    deployment = serve.deployment(lambda: None, name="d")
    with pytest.raises(ValueError, match="version"):
        deployment.options(version="v1")
    pinned = deployment.options(**ray_patches.versioned("v1"))
    assert pinned.version == "v1" and pinned.name == "d"


def test_advertised_models_reach_the_router_as_serve_multiplexing_sends_them() -> None:
    """``advertise_models`` sends what ``@serve.multiplexed`` sends: a ``RequestRoutingInfo``
    of the replica's id and model ids, to the controller client's
    ``record_request_routing_info``; Serve's router indexes replicas by those ids."""
    from ray.serve import multiplex
    from ray.serve._private.client import ServeControllerClient
    from ray.serve._private.common import RequestRoutingInfo
    from ray.serve._private.request_router.request_router import MultiplexMixin

    fields = inspect.signature(RequestRoutingInfo).parameters
    assert {"replica_id", "multiplexed_model_ids"} <= set(fields)
    assert list(
        inspect.signature(ServeControllerClient.record_request_routing_info).parameters
    ) == [
        "self",
        "info",
    ]
    ours = inspect.getsource(ray_patches.advertise_models)
    theirs = inspect.getsource(multiplex._ModelMultiplexWrapper._push_model_ids_info)
    for call in ("record_request_routing_info(", "RequestRoutingInfo(", "multiplexed_model_ids="):
        assert call in ours and call in theirs
    assert "multiplexed_model_ids" in inspect.getsource(
        MultiplexMixin._update_multiplexed_model_ids_with_replicas
    )

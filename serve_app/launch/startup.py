"""Startup, once the application is deployed: wait until every model's newest version is
AVAILABLE (or say why not, as TF Serving's ``ServerCore::WaitUntilModelsAvailable`` does), and
tell the quiet start's story (``Progress``: one line per step, then the ports and the models;
once serving, each version that comes or goes)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from serve_app.config.args import APP_NAME, AppArgs
from serve_app.deployments import LoadInfo, ManagerClient, Snapshot, VersionState


def wait_until_ready(
    stop: threading.Event,
    accelerator: str = "auto",
    timeout_s: float = 600.0,
    resource_wait_s: float = 60.0,
    models: Sequence[Any] = (),
    on_states: Any = None,
) -> str | None:
    """Block until every model's newest version is AVAILABLE (None) or say why not.

    Like TF Serving's startup (ServerCore::WaitUntilModelsAvailable), a model whose versions all
    failed to load ends the wait with its error instead of waiting out the timeout. Replicas the
    cluster cannot place (a GPU no node has) end it after ``resource_wait_s`` with Serve's
    account of what they need; a signal ends it at once. At ``timeout_s`` the answer names each
    of ``models`` (``ModelArgs``) that is not AVAILABLE yet, and where it stands.
    ``on_states`` gets the version manager's snapshot every time it is read.
    """
    from ray import serve

    manager = ManagerClient.connect()
    deadline = time.monotonic() + timeout_s
    started = time.monotonic()
    while time.monotonic() < deadline:
        if stop.is_set():
            return "CANCELLED: interrupted while waiting for models to load"
        unplaced = _unschedulable(serve.status())
        if unplaced and time.monotonic() - started > resource_wait_s:
            return f"UNAVAILABLE: {_gpu_hint(accelerator)}{unplaced}"
        try:
            ready = manager.ready_blocking(timeout_s=2.0)
            snapshot = manager.snapshot_blocking(timeout_s=10.0)
            if on_states is not None:
                on_states(snapshot)
            if ready:
                return None
            failed = _failed_models(manager, snapshot)
        except TimeoutError:  # the version manager is not up yet
            failed = []
        if failed:
            return (
                f"UNKNOWN: {len(failed)} model(s) did not become available: {{{''.join(failed)}}}"
            )
        if stop.wait(0.5):
            return "CANCELLED: interrupted while waiting for models to load"
    try:
        states = manager.snapshot_blocking(timeout_s=10.0).status
    except Exception:
        states = {}
    waiting = [_where(model, states.get(model.name, {})) for model in models]
    return (
        f"DEADLINE_EXCEEDED: models did not become AVAILABLE within {timeout_s:g}s "
        f"(--model_load_timeout_seconds): {'; '.join(w for w in waiting if w)}"
    )


class Progress:
    """The quiet start's story: one line per step (Ray, each version's load and warmup, its
    AVAILABLE with the seconds it took), then one line with the ports and the models."""

    def __init__(self, deployed: dict[str, dict[int, str]]) -> None:
        self.started = time.monotonic()
        self.deployed = deployed
        """model -> version -> path, of the versions loaded at startup."""
        self._seen: dict[tuple[str, int], VersionState] = {}
        self._deploying = self.started
        self.serving = False
        """Past startup: versions that come and go are told as they do."""

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def deploying(self) -> None:
        self._deploying = time.monotonic()
        self.say(f"Ray is up ({self.elapsed():.1f}s); deploying")

    def say(self, text: str) -> None:
        print(f"ray-tfserving: {text}", flush=True)

    def states(self, snapshot: Snapshot) -> None:
        """The version manager's snapshot: a line for each version whose state changed."""
        for model, versions in sorted(snapshot.status.items()):
            for version, state in sorted(versions.items()):
                key = (model, version)
                if self._seen.get(key) == state:
                    continue
                self._seen[key] = state
                if state == VersionState.AVAILABLE:
                    load = snapshot.loads.get(model, {}).get(version, LoadInfo())
                    warmed = load.warmup_records
                    details = [f"loaded in {load.seconds:.1f}s"]
                    if warmed:
                        details.append(f"{warmed} warmup records replayed")
                    if not self.serving:
                        took = time.monotonic() - self._deploying
                        details.append(f"{took:.1f}s after deploying")
                    self.say(f"{model} version {version} is AVAILABLE ({', '.join(details)})")
                elif state == VersionState.LOADING:
                    self.say(f"{model} version {version} is loading{self._warmup(model, version)}")
                elif state == VersionState.UNLOADING:
                    self.say(f"{model} version {version} is unloading")
                elif state == VersionState.END and self.serving:
                    self.say(f"{model} version {version} has ended")

    def _warmup(self, model: str, version: int) -> str:
        from compat.warmup import warmup_file

        path = self.deployed.get(model, {}).get(version)
        if path and warmup_file(path).is_file():
            return ", then warms up (assets.extra/tf_serving_warmup_requests)"
        return ""

    def ready(self, args: AppArgs) -> None:
        ports = [f"gRPC {args.host}:{args.grpc_port}"] if args.grpc_port else []
        if args.grpc_socket_path:
            ports.append(f"gRPC unix:{args.grpc_socket_path}")
        if args.http_port:
            ports.append(f"REST {args.host}:{args.http_port}")
        if args.ssl_config_file:
            ports = [f"{p} (TLS)" for p in ports]
        served = ", ".join(
            f"{model} (version{'s' if len(vs) > 1 else ''} {', '.join(map(str, sorted(vs)))})"
            for model, vs in sorted(self.deployed.items())
        )
        self.say(
            f"serving {served or 'no model yet'} on {' and '.join(ports) or 'no port'}; "
            f"started in {self.elapsed():.1f}s"
        )
        self.serving = True

    def watch(self) -> None:
        """Once serving: one look at the version manager (rollouts, reloads)."""
        try:
            self.states(ManagerClient.connect().snapshot_blocking(timeout_s=5.0))
        except Exception:  # the manager restarting: the next look tells
            return


def _where(model: Any, versions: dict[int, VersionState]) -> str:
    """``name: where it stands`` for a model whose newest version is not AVAILABLE, else ""."""
    if not versions:
        return f"{model.name}: no version found under {model.base_path}"
    newest = max(versions)
    if versions[newest] == VersionState.AVAILABLE:
        return ""
    return f"{model.name}: version {newest} is {versions[newest]}"


def _unschedulable(status: Any) -> str:
    """Serve's message for deployments whose replicas wait for resources no node offers."""
    app = status.applications.get(APP_NAME)
    if app is None:
        return ""
    return " ".join(
        d.message for d in app.deployments.values() if "to be scheduled" in (d.message or "")
    )


def _gpu_hint(accelerator: str) -> str:
    import ray

    if accelerator == "gpu" and not ray.cluster_resources().get("GPU"):
        return (
            "--accelerator=gpu, but no node of the Ray cluster has a GPU (use --accelerator=auto "
            "or cpu, or add GPU nodes). "
        )
    return ""


def _failed_models(manager: ManagerClient, snapshot: Snapshot) -> list[str]:
    """``{name: m version: v} due to error: CODE: message}, `` for each model whose every known
    version ended with a load error (TF Serving's wording)."""
    from compat.errors import CODE_NAMES
    from compat.protos import get_model_status_pb2

    failed = []
    for name, versions in snapshot.status.items():
        if not versions or any(state != VersionState.END for state in versions.values()):
            continue
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        reply = manager.get_status_blocking(request.SerializeToString())
        if not reply.ok:
            continue
        response = get_model_status_pb2.GetModelStatusResponse.FromString(reply.payload)
        errors = [s for s in response.model_version_status if s.status.error_code]
        if len(errors) != len(response.model_version_status) or not errors:
            continue
        newest = errors[0]  # newest first
        code = CODE_NAMES.get(newest.status.error_code)
        failed.append(
            f"{{{{name: {name} version: {newest.version}}} due to error: "
            f"{code.name if code else newest.status.error_code}: "
            f"{newest.status.error_message}}}, "
        )
    return failed

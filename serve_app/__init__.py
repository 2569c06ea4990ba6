"""ray-tfserving's Ray Serve application.

``serve run serve_app:app [key=value ...]`` and a Serve config's ``import_path: serve_app:app``
call ``app`` with the arguments: it validates them and returns the application built by
``serve_app.launch.app.build_app``, without starting anything (``serve_app.launch.boot``).

Importing the package in a Ray worker applies ``ray_patches.bind_grpc_to_host`` when the
server binds loopback only: a replica imports it while unpickling its deployment, before Serve
binds the replica's inter-deployment gRPC server. Elsewhere importing it imports no Ray (the
CLI takes its signals before Ray is imported: ``serve_app.launch.cli``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray.serve import Application

GRPC_HOST_ENV = "RAY_TFSERVING_GRPC_HOST"
"""Set in the workers of a loopback server: ``ray_patches.GRPC_HOST_ENV`` (the same name;
ray_patches imports Ray, this package only where the variable is set)."""

if os.environ.get(GRPC_HOST_ENV):
    from serve_app.ray_patches import bind_grpc_to_host

    bind_grpc_to_host()


def app(args: dict[str, Any]) -> Application:
    """The ``serve run`` entry point (see ``serve_app.launch.boot.application_from_cli_args``)."""
    from serve_app.launch.boot import application_from_cli_args

    return application_from_cli_args(args)


__all__ = ["app"]

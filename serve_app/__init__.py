"""ray-tfserving's Ray Serve application.

``serve run serve_app:app [key=value ...]`` and a Serve config's ``import_path: serve_app:app``
call ``app`` with the arguments: it validates them and returns the application built by
``serve_app.app.build_app``, without starting anything (``serve_app.launch``).

Importing the package in a Ray worker applies ``ray_patches.bind_grpc_to_host`` when the
server binds loopback only: a replica imports it while unpickling its deployment, before Serve
binds the replica's inter-deployment gRPC server.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from serve_app.ray_patches import bind_grpc_to_host

bind_grpc_to_host()


def app(args: dict[str, Any]) -> Application:
    """The ``serve run`` entry point (see ``serve_app.launch.application_from_cli_args``)."""
    from serve_app.launch import application_from_cli_args

    return application_from_cli_args(args)


__all__ = ["app"]

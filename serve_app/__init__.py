"""ray-tfserving's Ray Serve application.

``serve run serve_app:app [key=value ...]`` calls ``app`` with the arguments: it validates them,
starts a local Ray and Serve bound to loopback with the TF Serving gRPC services, and returns the
application built by ``serve_app.app.build_app``.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application


def app(args: dict[str, Any]) -> Application:
    """The ``serve run`` entry point (see ``serve_app.launch.application_from_cli_args``)."""
    from serve_app.launch import application_from_cli_args

    return application_from_cli_args(args)


__all__ = ["app"]

"""Failing steps of the lifecycle, said once: a listing that errs every poll, a config file
left half-written, a Serve call that fails. Each distinct cause is logged once (with the step
and model it hit), again only when it changes, and once more when the step works again; every
failure is counted in ``ray_tfserving_lifecycle_errors_total`` (by step and model), so an
operator alerts on the rate rather than reads a log that repeats every poll."""

from __future__ import annotations

import logging

from serve_app import metrics

logger = logging.getLogger("ray.serve")

STEPS = ("scan", "config_file", "probe", "poll")
"""The lifecycle's steps whose failures are counted: a base path's listing, the model config
file's re-read, a new version's load probe, and any other step of a poll."""


class Faults:
    """The causes failing now, by (step, model)."""

    def __init__(self) -> None:
        self.now: dict[tuple[str, str], str] = {}
        """(step, model or "") -> the cause it fails with now."""

    def report(self, step: str, model: str, cause: str, exc: BaseException | None = None) -> None:
        """``step`` failed for ``model`` (or the whole server, ""): counted every time, logged
        when the cause is new."""
        metrics.record_lifecycle_error(step, model)
        key = (step, model)
        if self.now.get(key) == cause:
            return
        self.now[key] = cause
        where = f"{step} of model {model}" if model else step
        if exc is not None and step == "poll":
            logger.error("Version manager: %s failed: %s; retrying", where, cause, exc_info=exc)
        else:
            logger.warning("Version manager: %s failed: %s; retrying", where, cause)

    def clear(self, step: str, model: str | None = None) -> None:
        """``step`` worked (for ``model``, or for every model when None): its cause is over."""
        for key in [k for k in self.now if k[0] == step and (model is None or k[1] == model)]:
            where = f"{step} of model {key[1]}" if key[1] else step
            logger.info("Version manager: %s works again (was: %s)", where, self.now.pop(key))

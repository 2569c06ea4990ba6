"""The serving replicas' autoscaler settings (``--serving_replicas=auto``): bounds, target and
delays, as Serve's ``AutoscalingConfig`` takes them (``launch.app`` hands them over)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serve_app.config.flag import Flag


class ServingAutoscalingArgs(BaseModel):
    """How Serve's autoscaler sizes the serving replicas, from the load they report
    (``serve_app.runtime.autoscaling``), with ``serving_replicas=auto``."""

    model_config = ConfigDict(
        extra="forbid", protected_namespaces=(), use_attribute_docstrings=True
    )

    min_replicas: Annotated[int, Flag("serving_min_replicas")] = Field(default=1, ge=1)
    """With ``serving_replicas=auto``: the fewest serving replicas."""
    max_replicas: Annotated[int, Flag("serving_max_replicas")] = Field(default=4, ge=1)
    """With ``serving_replicas=auto``: the most serving replicas (each takes its share of a
    node's cores, as with this many fixed; on a cluster, Ray's autoscaler adds nodes for those
    that do not fit)."""
    target_in_flight: Annotated[float, Flag("serving_target_in_flight")] = Field(default=4.0, gt=0)
    """With ``serving_replicas=auto``: client requests in flight per serving replica (time
    averaged, as each replica reports them) that the autoscaler aims at: it wants the reported
    sum over this many replicas, and fewer only once those left would carry at most 75% of it.
    A saturated replica's in-flight count climbs towards its clients' concurrency; one that
    keeps up stays low, whatever the request rate."""
    upscale_delay_s: Annotated[float, Flag("serving_upscale_delay_s")] = Field(default=15.0, ge=0)
    """With ``serving_replicas=auto``: how long more replicas must be wanted before they are
    added."""
    downscale_delay_s: Annotated[float, Flag("serving_downscale_delay_s")] = Field(
        default=120.0, ge=0
    )
    """With ``serving_replicas=auto``: how long fewer replicas must be wanted before one goes
    (long, so that a noisy load does not make replicas come and go)."""
    look_back_s: float = Field(default=10.0, gt=0)
    """The window over which each replica's reports are averaged (Serve's
    ``look_back_period_s``)."""
    metrics_interval_s: float = Field(default=1.0, gt=0)
    """How often each replica sends its reports to Serve's controller (Serve's
    ``metrics_interval_s``; below ``look_back_s``)."""

    @model_validator(mode="after")
    def _bounds(self) -> ServingAutoscalingArgs:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"serving_min_replicas={self.min_replicas} is above "
                f"serving_max_replicas={self.max_replicas}"
            )
        if self.metrics_interval_s >= self.look_back_s:
            raise ValueError("metrics_interval_s must be below look_back_s")
        return self

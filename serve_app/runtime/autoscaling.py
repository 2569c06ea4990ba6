"""The serving replicas' autoscaling (``--serving_replicas=auto``): what each replica reports,
and the policy Serve's controller runs on it.

Clients talk to the serving replicas directly (``SO_REUSEPORT``), so Serve's handles, from
which its default policy counts requests, see none of this traffic. Each replica reports its own
load instead (Ray's replica-reported autoscaling metrics: ``Ingress.record_autoscaling_stats``,
called by Serve every ``min(look_back_period_s * 0.2, metrics_interval_s)``):

- ``IN_FLIGHT``: the mean number of client requests in flight in the replica since its last
  report, gRPC and REST together, health and status excepted (``Admission.mean_in_flight``: a
  time average, not a sample:
  one client's closed loop reads about as its share of the time inside the replica, not 0 or 1
  by chance of the moment);
- ``QUEUED_BATCHES``: batches waiting to run (their requests are in flight too);
- ``LOOP_LAG``: how long one pass of the replica's event loop took at the report.

``serving_policy`` (a custom policy: ``AutoscalingConfig(policy=...)``) wants as many replicas
as the reported in-flight requests need at ``target_ongoing_requests`` each; Serve applies
``min_replicas``/``max_replicas``, ``upscale_delay_s`` and ``downscale_delay_s`` around it. Serve
ships the policy to its controller by value (cloudpickle): this module imports nothing of ours.
"""

from __future__ import annotations

from typing import Any

IN_FLIGHT = "serving_in_flight"
QUEUED_BATCHES = "serving_queued_batches"
LOOP_LAG = "serving_loop_lag_s"

POLICY = "serve_app.runtime.autoscaling:serving_policy"
"""Import path of the policy (Serve configs name it so)."""


def serving_policy(ctx: Any) -> tuple[float, dict[str, Any]]:
    """Replicas wanted: the in-flight requests the running replicas report, summed, over the
    target per replica (``ctx.config.target_ongoing_requests``). While no replica has reported
    yet the count stays as it is."""
    reported = (ctx.aggregated_metrics or {}).get(IN_FLIGHT)
    if not reported:
        return ctx.target_num_replicas, {}
    target = ctx.config.get_target_ongoing_requests()
    return sum(reported.values()) / target, {}

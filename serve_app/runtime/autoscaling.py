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
as the reported in-flight requests need at ``target_ongoing_requests`` each, with a dead band
below (``DOWN_MARGIN``); Serve applies
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

DOWN_MARGIN = 0.75
"""Fewer replicas only if those left would carry at most this share of the target each."""
LOG_EVERY_S = 5.0
LOGGED_AT = "serving_logged_at"


def serving_policy(ctx: Any) -> tuple[int, dict[str, Any]]:
    """Replicas wanted: the in-flight requests the running replicas report, summed, over the
    target per replica (``ctx.config.target_ongoing_requests``), rounded up. Fewer than now only
    once the replicas left would stay below ``DOWN_MARGIN`` of the target (a dead band: a load
    near a boundary does not make a replica come and go), and not while replicas added are
    still starting (the load is then the running ones'). While no replica has reported yet
    the count stays as it is. A wanted change is logged (in Serve's controller log), at most
    every ``LOG_EVERY_S``."""
    import logging
    import math
    import time

    current = ctx.target_num_replicas
    reported = (ctx.aggregated_metrics or {}).get(IN_FLIGHT)
    if not reported:
        return current, {}
    target = ctx.config.get_target_ongoing_requests()
    load = sum(reported.values())
    wanted = math.ceil(load / target)
    if wanted < current:
        wanted = min(current, max(wanted, math.ceil(load / (target * DOWN_MARGIN))))
        if ctx.current_num_replicas < current:  # replicas starting: their load is not known
            wanted = current
    state = dict(ctx.policy_state or {})
    now = time.time()
    least = getattr(ctx, "capacity_adjusted_min_replicas", 0)
    most = getattr(ctx, "capacity_adjusted_max_replicas", wanted)
    change = min(max(wanted, least), most) != current  # what Serve would do of it
    if change and now - state.get(LOGGED_AT, 0.0) >= LOG_EVERY_S:
        state[LOGGED_AT] = now
        logging.getLogger("ray.serve").info(
            "Serving replicas: %d wanted (now %d, %d running): %.2f requests in flight "
            "reported, %g per replica targeted",
            wanted,
            current,
            ctx.current_num_replicas,
            load,
            target,
        )
    return wanted, {LOGGED_AT: state.get(LOGGED_AT, 0.0)}

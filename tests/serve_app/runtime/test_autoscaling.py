"""``--serving_replicas=auto`` without a server: what the serving replicas report (the
time-averaged requests in flight), the policy Serve's controller runs on it, and the
deployment options and Serve config that carry it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from ray.serve.config import AutoscalingConfig

from serve_app.config.args import AppArgs
from serve_app.launch.boot import application_from_cli_args, parse_cli_args, serve_config
from serve_app.runtime.autoscaling import IN_FLIGHT, POLICY, serving_policy
from serve_app.transports.connections import Admission
from tests.harness import TESTDATA
from tests.serve_app.launch.test_builder import deployments

pytestmark = pytest.mark.unit

HALF_PLUS_TWO = str(TESTDATA / "saved_model_half_plus_two_cpu")


def test_in_flight_is_averaged_over_time_not_sampled() -> None:
    now = [0.0]
    admission = Admission(10, clock=lambda: now[0])
    assert admission.enter()
    now[0] = 1.0  # one request for 1 s
    assert admission.enter()
    now[0] = 2.0  # two for 1 s
    admission.leave()
    admission.leave()
    now[0] = 4.0  # none for 2 s
    assert admission.mean_in_flight() == pytest.approx(3 / 4)
    assert admission.enter()
    now[0] = 6.0
    assert admission.mean_in_flight() == pytest.approx(1.0)  # since the previous report
    assert admission.mean_in_flight() == 1.0  # no time passed: the current count


def test_refused_requests_do_not_count() -> None:
    now = [0.0]
    admission = Admission(1, clock=lambda: now[0])
    assert admission.enter()
    assert not admission.enter()
    now[0] = 1.0
    assert admission.mean_in_flight() == pytest.approx(1.0)


def _context(
    reported: dict[str, float] | None, current: int = 2, target: float = 4.0, running: int = 0
) -> Any:
    metrics = None if reported is None else {IN_FLIGHT: reported}
    return SimpleNamespace(
        aggregated_metrics=metrics,
        target_num_replicas=current,
        current_num_replicas=running or current,
        policy_state={},
        config=AutoscalingConfig(target_ongoing_requests=target, max_replicas=10),
    )


def wanted(
    reported: dict[str, float] | None, current: int = 2, target: float = 4.0, running: int = 0
) -> int:
    return serving_policy(_context(reported, current, target, running))[0]


def test_the_policy_wants_the_reported_in_flight_over_the_target() -> None:
    assert wanted({"a": 6.0, "b": 10.0}) == 4
    assert wanted({"a": 6.0, "b": 10.5}) == 5
    assert wanted({"a": 0.5}, current=1) == 1
    assert wanted({"a": 0.0, "b": 0.0}) == 0  # Serve keeps min_replicas
    # Nothing reported yet (replicas starting): the count stays.
    assert wanted(None, current=3) == 3
    assert wanted({}, current=3) == 3


def test_fewer_replicas_only_below_the_dead_band() -> None:
    # 2 replicas, 4 targeted each: 1 would do for 3.5 in flight, but at 88% of its target.
    assert wanted({"a": 2.0, "b": 1.5}) == 2
    assert wanted({"a": 1.5, "b": 1.5}) == 1  # 75%: it goes
    assert wanted({"a": 5.0, "b": 5.0, "c": 5.0}, current=6) == 5  # 15 > 4 * 0.75 * 4
    # Replicas still starting: no fewer until they run and report (more, though, still).
    assert wanted({"a": 1.0}, current=3, running=1) == 3
    assert wanted({"a": 20.0}, current=3, running=1) == 5


def test_auto_serving_replicas_autoscale_with_the_policy_and_fixed_ones_do_not() -> None:
    args = {"model_name": "hpt", "model_base_path": HALF_PLUS_TWO}
    auto = {
        **args,
        "ingress_replicas": "auto",
        "serving_autoscaling.min_replicas": "1",
        "serving_autoscaling.max_replicas": "3",
        "serving_autoscaling.target_in_flight": "2",
        "serving_autoscaling.upscale_delay_s": "1",
        "serving_autoscaling.downscale_delay_s": "4",
    }
    ingress = deployments(application_from_cli_args(auto))["Ingress"]
    config = ingress._deployment_config.autoscaling_config
    assert (config.min_replicas, config.max_replicas) == (1, 3)
    assert config.target_ongoing_requests == 2
    assert (config.upscale_delay_s, config.downscale_delay_s) == (1, 4)
    assert config.policy.policy_function == POLICY
    assert config.metrics_interval_s < config.look_back_period_s
    # The replicas share a node's cores as the most of them would.
    assert ingress.init_args[2].replicas == 3
    fixed = deployments(application_from_cli_args(args))["Ingress"]
    assert fixed._deployment_config.autoscaling_config is None
    assert fixed.num_replicas == 2


def test_the_serve_config_carries_auto() -> None:
    args = parse_cli_args(
        {
            "model_name": "hpt",
            "model_base_path": HALF_PLUS_TWO,
            "ingress_replicas": "auto",
            "serving_autoscaling.max_replicas": "5",
        }
    )
    (application,) = serve_config(args)["applications"]
    assert application["args"]["ingress_replicas"] == "auto"
    assert application["args"]["serving_autoscaling"] == {"max_replicas": 5}
    assert AppArgs.model_validate(application["args"]).serving_replicas_most == 5


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"ingress_replicas": 0}, "greater than or equal to 1"),
        ({"ingress_replicas": "many"}, "auto"),
        (
            {"serving_autoscaling": {"min_replicas": 3, "max_replicas": 2}},
            "above serving_max_replicas",
        ),
        ({"serving_autoscaling": {"metrics_interval_s": 10, "look_back_s": 5}}, "below"),
    ],
)
def test_bad_bounds_are_refused(values: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        AppArgs(**values)

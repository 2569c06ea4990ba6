"""The load probe's pieces that need no Ray (``lifecycle.probe``): its reading of ``/proc``, the
options it loads with, and which versions it probes. The probe itself runs live in
``test_bad_day`` (a version that hangs, one that runs out of memory)."""

from __future__ import annotations

from serve_app.config.args import AppArgs, ScalingArgs
from serve_app.lifecycle import probe


def test_proc_figures_are_read_in_bytes() -> None:
    assert probe._proc_bytes("/proc/self/status", "VmData") > 1 << 20
    assert probe._proc_bytes("/proc/meminfo", "MemAvailable") > 1 << 20
    assert probe._proc_bytes("/proc/meminfo", "NoSuchKey") == 0


def test_the_probe_loads_as_the_replicas_do_on_one_core_without_a_gpu() -> None:
    args = AppArgs(
        model_name="m",
        model_base_path="/b",
        saved_model_tags=["serve", "gpu"],
        enable_model_warmup=False,
    )
    options = probe.options(args)
    assert options["session"] == {
        "intra_op_parallelism": 1,
        "inter_op_parallelism": 1,
        "allow_gpu": False,
        "tags": ["serve", "gpu"],
    }
    assert options["warmup"] is False


def test_what_is_probed() -> None:
    args = AppArgs(model_name="m", model_base_path="/b")
    assert probe.enabled(args, "m")
    assert not probe.enabled(args.model_copy(update={"load_probe_timeout_s": 0.0}), "m")
    own = args.model_copy(update={"own_deployments": {"m": ScalingArgs()}, "colocate": True})
    assert not probe.enabled(own, "m")  # its own deployment: a crash takes only that down


def test_a_spare_prober_is_kept_only_where_versions_are_probed() -> None:
    args = AppArgs(model_name="m", model_base_path="/b")
    assert probe.wants_spare(args)
    assert not probe.wants_spare(args.model_copy(update={"load_probe_spare": False}))
    assert not probe.wants_spare(args.model_copy(update={"load_probe_timeout_s": 0}))


def test_no_spare_is_started_with_the_server() -> None:
    """The spare's TF import would compete with the replicas' loads: it waits for a probe."""
    assert probe.Probes(spare=True)._spare is None

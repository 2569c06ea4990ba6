"""One run: boot each server, measure its cells, stop it; the results with their context."""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from loadtests import launcher
from loadtests.bench.measure import (
    Measurement,
    Target,
    add_ratios,
    higher_limit,
    measure,
    measure_inprocess,
)
from loadtests.bench.report import _row
from loadtests.bench.settings import BATCHING_ON, DEEPLAB_SIZE, RAY_SYSTEMS, RayConfig, Settings
from loadtests.workloads import Workload, deeplab, half_plus_two


def boot_plain(workloads: list[Workload], settings: Settings, workdir: Path) -> Target:
    plain = launcher.start_plain_server(
        {w.model: str(w.base_path) for w in workloads},
        *settings.plain_args,
        log_path=workdir / "plain.log",
        env={"TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    return Target("plain", ["plain"], None, plain.grpc_target, None, plain.process.pid, plain.stop)


def boot_ray(rc: RayConfig, workloads: list[Workload], settings: Settings, workdir: Path) -> Target:
    config = model_config(workloads, workdir / f"models-{rc.label}.config")
    env = {"TF_CPP_MIN_LOG_LEVEL": "2", **rc.env}
    if rc.via_cli:
        batching = workdir / f"batching-{rc.label}.txt"
        batching.write_text(rc.batching_file())
        server = launcher.start_cli(
            f"--model_config_file={config}",
            *rc.cli_flags(str(batching)),
            wait_for=[w.model for w in workloads],
            env=env,
            tmp_prefix="loadbench-cli-",
        )
    else:
        server = launcher.start_server(
            f"model_config_file={config}",
            *rc.app_args(),
            wait_for=[w.model for w in workloads],
            env=env,
            tmp_prefix="loadbench-ray-",
        )
    systems: list[str] = [s for s in RAY_SYSTEMS if s in settings.systems]
    return Target(
        rc.label,
        systems,
        rc,
        server.grpc_target,
        server.http_base,
        server.process.pid,
        server.stop,
    )


def model_config(workloads: list[Workload], path: Path) -> Path:
    """A ModelServerConfig text file serving every workload's model."""
    entries = "\n".join(
        f'  config {{ name: "{w.model}" base_path: "{w.base_path}" model_platform: "tensorflow" }}'
        for w in workloads
    )
    path.write_text(f"model_config_list {{\n{entries}\n}}\n")
    return path


@contextmanager
def _step(title: str) -> Iterator[None]:
    print(f"== {title}", flush=True)
    started = time.monotonic()
    yield
    print(f"   ({time.monotonic() - started:.1f}s)", flush=True)


def run_bench(settings: Settings, workdir: Path, model_dir: Path | None) -> dict[str, Any]:
    started = time.time()
    load_before = os.getloadavg()
    cells: list[dict[str, Any]] = []
    boot_s: dict[str, float] = {}
    workloads: list[Workload] = []
    for name in settings.workloads:
        if name == "half_plus_two":
            workloads.append(dataclasses.replace(half_plus_two(), base_path=launcher.HALF_PLUS_TWO))
        else:
            model = _deeplab_model(model_dir or workdir / "deeplab")
            workloads.append(dataclasses.replace(deeplab(DEEPLAB_SIZE), base_path=model))

    if "inprocess" in settings.systems:
        for w in workloads:
            with _step(f"in-process {w.name}, batch sizes {settings.batch_sizes}"):
                cells.append(measure_inprocess(w, settings))
                print(f"  {_row(cells[-1])}", flush=True)

    boots: list[tuple[str, Callable[[], Target]]] = []
    if "plain" in settings.systems:
        boots.append(("plain grpc.aio server", lambda: boot_plain(workloads, settings, workdir)))
    if set(RAY_SYSTEMS) & set(settings.systems):
        for rc in settings.ray_configs:
            boots.append(
                (
                    f"ray-tfserving [{rc.label}] ({rc.describe()})",
                    functools.partial(boot_ray, rc, workloads, settings, workdir),
                )
            )
    measurements: dict[tuple[str, str, str | None, int], Measurement] = {}

    def boot(title: str, start: Callable[[], Target]) -> Target:
        with _step(f"{title}: boot"):
            t0 = time.monotonic()
            target = start()
            boot_s[target.name] = round(time.monotonic() - t0, 1)
        return target

    if settings.rounds == 1:  # one server at a time
        for title, start in boots:
            target = boot(title, start)
            try:
                with _step(f"{title}: cells"):
                    measure(target, workloads, settings, measurements)
            finally:
                target.stop()
    else:  # every server up at once, their cells interleaved round by round
        targets: list[Target] = []
        try:
            for title, start in boots:
                targets.append(boot(title, start))
            for r in range(settings.rounds):
                for target in targets:
                    with _step(f"round {r + 1}/{settings.rounds}: {target.name}"):
                        measure(target, workloads, settings, measurements)
        finally:
            for target in targets:
                target.stop()
    cells += [m.cell() for m in measurements.values()]
    if "inprocess" in settings.systems and boots:  # again: this machine's speed drifts
        for i, first in enumerate(cells):
            if first["system"] == "inprocess":
                w = next(w for w in workloads if w.name == first["workload"])
                with _step(f"in-process {w.name} again, after the servers"):
                    cells[i] = higher_limit(first, measure_inprocess(w, settings))
                    print(
                        f"  limit {cells[i]['examples_per_s']:.0f} ex/s, the higher of "
                        f"{cells[i]['limit_runs']} (before and after the servers)",
                        flush=True,
                    )

    add_ratios(cells)
    return {
        "meta": {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            "elapsed_s": round(time.time() - started, 1),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "load_average_start": load_before,
            "load_average_end": os.getloadavg(),
            "python": platform.python_version(),
            "versions": _versions(),
            "settings": dataclasses.asdict(settings),
            "boot_s": boot_s,
            "deeplab_size": DEEPLAB_SIZE,
            "batching_on_args": ["batching.enabled=true", *BATCHING_ON],
        },
        "cells": cells,
    }


def _deeplab_model(base: Path) -> Path:
    """A DeepLab export (20 steps at 32x32: weights do not matter for speed), made if missing."""
    if not any(base.glob("*/saved_model.pb")):
        with _step(f"export DeepLab to {base}"):
            from export.savedmodel import export_model

            export_model(base, 1, steps=20, size=32, log=None)
    return base


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("ray", "tensorflow", "grpcio", "aiohttp"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "?"
    return found

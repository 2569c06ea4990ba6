"""What one run measures (``Settings``) and each ray-tfserving configuration (``RayConfig``)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from loadtests.bench.workloads import BATCHING_ON


@dataclass
class Settings:
    seconds: float
    warmup_s: float
    inprocess_seconds: float
    batch_sizes: list[int]
    concurrency: list[int]
    workloads: list[str]
    systems: list[str]
    ray_configs: list[RayConfig]
    plain_args: list[str] = field(default_factory=list)
    client: str = "h2load"
    """``h2load`` (nghttp2's C load generator, when installed) or ``python`` (asyncio)."""
    rounds: int = 1
    """With more than one, every server is booted at once and their cells interleaved."""


@dataclass
class RayConfig:
    """One ray-tfserving boot, measured over gRPC and REST: a label, app arguments, environment.

    ``--variant "LABEL batching=on KEY=VALUE key.sub=value ..."``: upper-case keys are
    environment variables (Ray's workers inherit them), the rest ``serve run`` app arguments.
    """

    label: str
    batching: bool = False
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> RayConfig:
        label, *tokens = text.split()
        config = cls(label)
        for token in tokens:
            key, _, value = token.partition("=")
            if key == "batching":
                config.batching = value == "on"
            elif re.fullmatch(r"[A-Z][A-Z0-9_]*", key):
                config.env[key] = value
            else:
                config.args.append(token)
        return config

    def describe(self) -> str:
        return " ".join([*self.app_args(), *(f"{k}={v}" for k, v in self.env.items())])

    def app_args(self) -> list[str]:
        batching = ["batching.enabled=true", *BATCHING_ON] if self.batching else []
        return [*batching, *self.args]

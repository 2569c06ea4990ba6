"""What one run measures (``Settings``), each ray-tfserving configuration (``RayConfig``), and the
benchmark's constants."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
MODEL_INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
SYSTEMS = ("inprocess", "plain", "ray-grpc", "ray-rest", "ray-v2")
RAY_SYSTEMS = ("ray-grpc", "ray-rest", "ray-v2")
WORKLOADS = ("half_plus_two", "deeplab128")
"""The benchmark's workloads (``loadtests.workloads``: half_plus_two, and DeepLab at 128x128)."""
BATCHING_ON = ("batching.max_batch_size=16", "batching.batch_timeout_micros=2000")
DEEPLAB_SIZE = 128
MAX_REQUESTS = 200_000
"""Upper bound on requests recorded per cell (each cell is also bounded in time)."""


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

    ``--variant "LABEL batching=on KEY=VALUE file.key=value key.sub=value ..."``: upper-case
    keys are environment variables (Ray's workers inherit them), ``file.key`` a line of TF
    Serving's batching parameters file (``file.num_batch_threads=2`` writes ``num_batch_threads
    { value: 2 }``), the rest ``serve run`` app arguments. A variant without app arguments is
    booted with the ``ray-tfserving`` command, as a user boots it.
    """

    label: str
    batching: bool = False
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    file_lines: dict[str, str] = field(default_factory=dict)
    """Batching parameters beside (or over) ``BATCHING_ON``, written into the batching file."""
    cli: bool = False
    """Booted as a user does, with the ``ray-tfserving`` command and TF Serving's flags
    (batching: ``--enable_batching`` and a batching parameters file holding ``BATCHING_ON``);
    otherwise ``serve run`` of the Serve config for the app arguments. A boot with app arguments
    always goes through ``serve run``."""

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
            elif key.startswith("file."):
                config.file_lines[key.removeprefix("file.")] = value
            else:
                config.args.append(token)
        if config.file_lines and (config.args or not config.batching):
            raise ValueError(f"{text!r}: file.* lines need batching=on and no app arguments")
        config.cli = not config.args
        return config

    @property
    def via_cli(self) -> bool:
        return self.cli and not self.args

    def describe(self) -> str:
        words = self.cli_flags("FILE") if self.via_cli else self.app_args()
        words += [f"{key}={value}" for key, value in self.file_lines.items()]
        return " ".join([*words, *(f"{k}={v}" for k, v in self.env.items())])

    def cli_flags(self, batching_file: str) -> list[str]:
        """The ``ray-tfserving`` flags beside the ports and the model config file."""
        return ["--enable_batching", f"--batching_parameters_file={batching_file}"] * self.batching

    def batching_file(self) -> str:
        """TF Serving's batching parameters file for ``BATCHING_ON`` and ``file_lines``."""
        lines = {
            key.split(".", 1)[1]: value for key, value in (arg.split("=", 1) for arg in BATCHING_ON)
        }
        lines.update(self.file_lines)
        return "".join(f"{key} {{ value: {value} }}\n" for key, value in lines.items())

    def app_args(self) -> list[str]:
        batching = ["batching.enabled=true", *BATCHING_ON] if self.batching else []
        return [*batching, *self.args]

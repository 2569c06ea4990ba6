"""Two answers to the same request, compared output by output (shadow traffic and replay).

Each output is compared by its dtype's rule (``RULES``): floats within a tolerance
(``Tolerance``: ``|a - b| <= atol + rtol * |b|``, NaN equal to NaN), integers, booleans and
strings exactly. An output one side lacks, or whose shape or dtype differs, is a difference.
The result says whether the answers differ, which outputs did, and the largest absolute
difference of the numeric outputs (``inf`` for a missing output or a shape mismatch).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from compat.protos import predict_pb2
from compat.tensors import to_numpy


@dataclass(frozen=True)
class Tolerance:
    """How far apart two float outputs may be and still agree (a model's, in its config)."""

    atol: float = 1e-6
    rtol: float = 1e-6


@dataclass
class Comparison:
    """The outcome of one comparison."""

    diff: bool = False
    """Any output differs."""
    max_abs_diff: float = 0.0
    """The largest absolute difference over the outputs (0 when equal)."""
    differed: list[str] = field(default_factory=list)
    """The outputs that differ, sorted."""
    per_output: dict[str, float] = field(default_factory=dict)
    """Each output -> its largest absolute difference (``inf``: shape/dtype/key mismatch,
    1.0 for unequal strings)."""


Rule = Callable[[np.ndarray, np.ndarray, Tolerance], tuple[bool, float]]


def _floats(a: np.ndarray, b: np.ndarray, tol: Tolerance) -> tuple[bool, float]:
    close = np.isclose(a, b, atol=tol.atol, rtol=tol.rtol, equal_nan=True)
    gap = np.abs(a.astype(np.complex128) - b.astype(np.complex128))
    gap = np.where(np.isnan(a) & np.isnan(b), 0.0, np.where(np.isnan(gap), np.inf, gap))
    worst = float(gap.max()) if gap.size else 0.0
    return not bool(np.all(close)), worst


def _exact_numbers(a: np.ndarray, b: np.ndarray, tol: Tolerance) -> tuple[bool, float]:
    gap = np.abs(a.astype(np.float64) - b.astype(np.float64))
    worst = float(gap.max()) if gap.size else 0.0
    return not bool(np.array_equal(a, b)), worst


def _exact_strings(a: np.ndarray, b: np.ndarray, tol: Tolerance) -> tuple[bool, float]:
    same = bool(np.array_equal(a, b))
    return not same, 0.0 if same else 1.0


RULES: dict[str, Rule] = {
    "f": _floats,
    "c": _floats,
    "i": _exact_numbers,
    "u": _exact_numbers,
    "b": _exact_numbers,
    "S": _exact_strings,
    "U": _exact_strings,
    "O": _exact_strings,
}
"""numpy dtype kind -> how two outputs of that kind are compared."""


def compare_arrays(
    a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], tol: Tolerance = Tolerance()
) -> Comparison:
    """Compare two answers (output name -> array), ``a`` the serving version's."""
    result = Comparison()
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            worst, differs = math.inf, True
        else:
            x, y = np.asarray(a[name]), np.asarray(b[name])
            if x.shape != y.shape or x.dtype != y.dtype:
                worst, differs = math.inf, True
            else:
                differs, worst = RULES.get(x.dtype.kind, _exact_strings)(x, y, tol)
        result.per_output[name] = worst
        result.max_abs_diff = max(result.max_abs_diff, worst)
        if differs:
            result.differed.append(name)
    result.diff = bool(result.differed)
    return result


def outputs_of(response: predict_pb2.PredictResponse) -> dict[str, np.ndarray]:
    """A PredictResponse's outputs as arrays."""
    return {name: to_numpy(tensor) for name, tensor in response.outputs.items()}


def compare_responses(
    a: predict_pb2.PredictResponse, b: predict_pb2.PredictResponse, tol: Tolerance = Tolerance()
) -> Comparison:
    """Compare two PredictResponses' outputs (their model specs are not compared)."""
    return compare_arrays(outputs_of(a), outputs_of(b), tol)


@dataclass
class DiffStats:
    """Comparisons added up: a replay's report, a shadow's figures."""

    compared: int = 0
    differed: int = 0
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    """Output -> the largest absolute difference seen."""
    differed_outputs: dict[str, int] = field(default_factory=dict)
    """Output -> how many comparisons it differed in."""
    baseline_s: list[float] = field(default_factory=list)
    candidate_s: list[float] = field(default_factory=list)
    diffs: list[float] = field(default_factory=list)
    """Each comparison's largest absolute difference, in order."""

    def add(self, result: Comparison, baseline_s: float, candidate_s: float) -> None:
        self.compared += 1
        self.differed += result.diff
        for name, worst in result.per_output.items():
            self.max_abs_diff[name] = max(self.max_abs_diff.get(name, 0.0), worst)
        for name in result.differed:
            self.differed_outputs[name] = self.differed_outputs.get(name, 0) + 1
        self.baseline_s.append(baseline_s)
        self.candidate_s.append(candidate_s)
        self.diffs.append(result.max_abs_diff)

    def report(self) -> dict[str, object]:
        """The figures as JSON-ready data (``inf`` as the string "inf")."""
        return {
            "compared": self.compared,
            "differed": self.differed,
            "diff_rate": self.differed / self.compared if self.compared else 0.0,
            "max_abs_diff": {k: _json_float(v) for k, v in sorted(self.max_abs_diff.items())},
            "differed_outputs": dict(sorted(self.differed_outputs.items())),
            "latency": {
                "baseline_mean_ms": _mean_ms(self.baseline_s),
                "candidate_mean_ms": _mean_ms(self.candidate_s),
                "baseline_p99_ms": _p99_ms(self.baseline_s),
                "candidate_p99_ms": _p99_ms(self.candidate_s),
                "ratio": latency_ratio(self.baseline_s, self.candidate_s),
            },
        }


def latency_ratio(baseline_s: list[float], candidate_s: list[float]) -> float | None:
    """The candidate's total time over the baseline's, for the same requests; None if none."""
    base = sum(baseline_s)
    return sum(candidate_s) / base if base > 0 else None


def _json_float(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


def _mean_ms(seconds: list[float]) -> float | None:
    return 1000 * sum(seconds) / len(seconds) if seconds else None


def _p99_ms(seconds: list[float]) -> float | None:
    return 1000 * float(np.percentile(seconds, 99)) if seconds else None

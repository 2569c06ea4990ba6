"""``compat.compare``: two answers compared output by output, each by its dtype's rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from compat.compare import Tolerance, compare_arrays, compare_responses
from compat.protos import predict_pb2
from compat.tensors import from_numpy

F = np.float32
CASES = [
    # (name, a, b, tolerance, differs, max_abs_diff)
    ("floats equal", np.array([1.0, 2.0], F), np.array([1.0, 2.0], F), Tolerance(), False, 0.0),
    ("floats within atol", np.array([1.0], F), np.array([1.0 + 1e-7], F), Tolerance(), False, None),
    ("floats beyond atol", np.array([2.5], F), np.array([3.5], F), Tolerance(), True, 1.0),
    ("floats within rtol", np.array([1000.0]), np.array([1000.5]), Tolerance(0, 1e-3), False, 0.5),
    ("NaN is NaN", np.array([np.nan, 1.0]), np.array([np.nan, 1.0]), Tolerance(), False, 0.0),
    ("NaN against a number", np.array([np.nan]), np.array([1.0]), Tolerance(), True, math.inf),
    ("complex", np.array([1 + 1j]), np.array([1 + 2j]), Tolerance(), True, 1.0),
    ("ints exact", np.array([1, 2], np.int64), np.array([1, 2], np.int64), Tolerance(), False, 0.0),
    ("ints off by one", np.array([1, 2]), np.array([1, 3]), Tolerance(atol=10), True, 1.0),
    ("uint", np.array([7], np.uint8), np.array([9], np.uint8), Tolerance(), True, 2.0),
    ("bools", np.array([True]), np.array([False]), Tolerance(atol=10), True, 1.0),
    ("strings equal", np.array([b"a"], object), np.array([b"a"], object), Tolerance(), False, 0.0),
    ("strings differ", np.array([b"a"], object), np.array([b"b"], object), Tolerance(), True, 1.0),
    ("shape", np.zeros((2, 1), F), np.zeros((1, 2), F), Tolerance(), True, math.inf),
    ("dtype", np.zeros(2, np.float32), np.zeros(2, np.float64), Tolerance(), True, math.inf),
    ("kind", np.zeros(2, np.int32), np.zeros(2, np.float32), Tolerance(), True, math.inf),
    ("empty", np.zeros(0, F), np.zeros(0, F), Tolerance(), False, 0.0),
]


@pytest.mark.parametrize(
    ("a", "b", "tol", "differs", "worst"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_each_dtype_by_its_rule(
    a: np.ndarray, b: np.ndarray, tol: Tolerance, differs: bool, worst: float | None
) -> None:
    result = compare_arrays({"y": a}, {"y": b}, tol)
    assert result.diff is differs
    assert result.differed == (["y"] if differs else [])
    if worst is not None:
        assert result.max_abs_diff == pytest.approx(worst)
        assert result.per_output["y"] == pytest.approx(worst)


def test_a_missing_output_differs_and_the_others_are_named() -> None:
    a = {"y": np.array([1.0]), "z": np.array([1]), "w": np.array([2.0])}
    b = {"y": np.array([1.0]), "z": np.array([2]), "extra": np.array([0])}
    result = compare_arrays(a, b)
    assert result.diff
    assert result.differed == ["extra", "w", "z"]
    assert result.max_abs_diff == math.inf
    assert result.per_output == {"extra": math.inf, "w": math.inf, "y": 0.0, "z": 1.0}


def test_responses_compare_their_outputs_not_their_model_specs() -> None:
    def response(version: int, y: list[float]) -> predict_pb2.PredictResponse:
        r = predict_pb2.PredictResponse()
        r.model_spec.name = "m"
        r.model_spec.version.value = version
        r.outputs["y"].CopyFrom(from_numpy(np.array(y, F)))
        return r

    assert not compare_responses(response(1, [2.5, 3.0]), response(2, [2.5, 3.0])).diff
    half_plus_three = compare_responses(response(1, [2.5, 3.0]), response(2, [3.5, 4.0]))
    assert half_plus_three.diff
    assert half_plus_three.differed == ["y"]
    assert half_plus_three.max_abs_diff == pytest.approx(1.0)

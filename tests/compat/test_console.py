"""The quiet console's filter, on lines TensorFlow 2.21, Ray 2.60 and Serve print here."""

from __future__ import annotations

import subprocess
import sys

import pytest

from compat.console import is_noise
from tests.harness import REPO

NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796143506.037401   29259 port.cc:153] oneDNN custom operations are on. You may "
    "see slightly different numerical results",
    "I0000 00:00:1796143506.038628   29259 cudart_stub.cc:31] Could not find cuda drivers on your "
    "machine, GPU will not be used.",
    "I0000 00:00:1796143506.106142   29259 cpu_feature_guard.cc:227] This TensorFlow binary is "
    "optimized to use available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild "
    "TensorFlow with the appropriate compiler flags.",
    "\x1b[36m(ServeReplica:default:Ingress pid=29532)\x1b[0m E0000 00:00:1796143517.341106   "
    "29641 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to "
    "cuInit: UNKNOWN ERROR (303)",
    "\x1b[36m(ServeReplica:default:VersionManager pid=29528)\x1b[0m WARNING: All log messages "
    "before absl::InitializeLog() is called are written to STDERR\x1b[32m [repeated 5x across "
    "cluster] (Ray deduplicates logs by default. Set RAY_DEDUP_LOGS=0 to disable log d",
    "2026-12-01 16:45:07,839\tWARNING authentication_token_setup.py:85 -- Token authentication "
    "is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out.",
    'INFO 2026-12-01 16:45:12,320 serve 29259 -- Started Serve in namespace "serve".',
    "\x1b[36m(ServeController pid=29492)\x1b[0m INFO 2026-12-01 16:45:12,419 controller 29492 -- "
    "Deploying new version of Deployment(name='VersionManager', app='default')",
    "2026-12-01 16:45:05,101\tINFO worker.py:2007 -- Started a local Ray instance.",
    "\x1b[33m(raylet)\x1b[0m Task ServeController.listen_for_change failed. There are infinite "
    "retries remaining, so the task will be retried. Error: The actor is dead because it was "
    "killed by `ray.kill`.",
    "",
]

KEPT = [
    "ray-tfserving: half_plus_two version 123 is AVAILABLE (loaded in 0.1s)",
    "Running gRPC ModelServer at 127.0.0.1:8500 ...",
    "ray-tfserving: Failed to start server. Error: INVALID_ARGUMENT: ...",
    "E0000 00:00:1796143517.341106   29641 saved_model_loader.cc:1] Could not load: NOT_FOUND",
    "F0000 00:00:1796143517.341106   29641 check.cc:1] Check failed: x",
    "\x1b[36m(ServeReplica:default:Ingress pid=1)\x1b[0m WARNING 2026-12-01 16:45:17,430 "
    "default_Ingress 2zpo0vcp -- Request log of m (/x): writing failed; records are dropped",
    "\x1b[36m(ServeReplica:default:Ingress pid=1)\x1b[0m ERROR 2026-12-01 16:45:17,430 "
    "default_Ingress 2zpo0vcp -- Unexpected error in m version 1",
    "Traceback (most recent call last):",
    '  File "x.py", line 1, in <module>',
]


@pytest.mark.parametrize("line", NOISE)
def test_tensorflow_and_ray_chatter_is_noise(line: str) -> None:
    assert is_noise(line)


@pytest.mark.parametrize("line", KEPT)
def test_our_lines_warnings_and_errors_are_kept(line: str) -> None:
    assert not is_noise(line)


TF_IMPORT_CHATTER = (
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    b"I0000 00:00:1796578278.390749    9174 cudart_stub.cc:31] Could not find cuda drivers on "
    b"your machine, GPU will not be used.\n"
    b"I0000 00:00:1796578278.648064    9174 cpu_feature_guard.cc:227] This TensorFlow binary is "
    b"optimized to use available CPU instructions in performance-critical operations.\n"
    b"To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow "
    b"with the appropriate compiler flags.\n"
)


def test_quiet_filters_cpp_writes_and_keeps_the_rest_in_order() -> None:
    """Under ``quiet()``, what TensorFlow 2.21's C++ writes on import (recorded above, written
    to the descriptor as C++ does; the real import's console is ``test_cli``'s) goes, a C++
    error and Python's own lines stay in order, nothing is lost at exit."""
    script = (
        "import os, sys\n"
        "from compat.console import quiet\n"
        "quiet()\n"
        f"os.write(2, {TF_IMPORT_CHATTER!r})\n"
        "print('to stdout', flush=True)\n"
        "print('to stderr', file=sys.stderr)\n"
        "os.write(2, b'E0000 00:00:1.5 1 loader.cc:9] a real error\\n')\n"
        "print('last line')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["to stdout", "last line"]
    assert done.stderr.splitlines() == ["to stderr", "E0000 00:00:1.5 1 loader.cc:9] a real error"]


def test_the_runner_filters_another_command_and_keeps_its_status() -> None:
    """``python -m compat.console CMD``: ``make run``'s export step. The command writes what
    TensorFlow 2.21 writes on import (recorded above)."""
    script = (
        "import os, sys\n"
        f"os.write(2, {TF_IMPORT_CHATTER!r})\n"
        "print('exported', flush=True)\n"
        "print('an error', file=sys.stderr)\n"
        "sys.exit(3)\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "compat.console", sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (done.returncode, done.stdout, done.stderr) == (3, "exported\n", "an error\n")

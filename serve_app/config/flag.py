"""``Flag``: the field metadata that makes a typed argument a command-line flag."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

UNSET: Any = object()


@dataclass(frozen=True)
class Flag:
    """Field metadata: the field is the command-line flag ``--<name>``."""

    name: str
    cli_default: Any = UNSET
    """The flag's default when it differs from the field's: TF Serving's (``--rest_api_port``
    is 0, no REST, where ``serve run`` serves REST on 8501)."""
    scale: float = 1.0
    """The field is the flag's value times this (``--load_retry_interval_micros``: 1e-6)."""

"""The model config file as a Source (``--model_config_file`` with
``--model_config_file_poll_wait_seconds``): read again at each poll of the version manager
(``serve_app.lifecycle.rollout``), and trusted only when it reads whole.

A file that cannot be read, is not UTF-8, does not parse, or puts a request log outside the
directories allowed at startup (``request_log.confine``) keeps the last good config: the
reason is logged once (``lifecycle.faults``) and the file is read again at the next poll. A
file that lists no model at all (an editor's truncate-then-write, caught in between) is taken
only once two polls in a row read it so, as an operator who empties it on purpose means it.
"""

from __future__ import annotations

import logging

from compat import model_config
from compat.errors import ServingError
from serve_app.config.args import ModelArgs, models_from_config
from serve_app.lifecycle.faults import Faults
from serve_app.runtime import request_log

logger = logging.getLogger("ray.serve")


class ConfigFileSource:
    """One model config file, read again at each poll."""

    def __init__(self, faults: Faults, allowed_log_dirs: list[str] | None = None) -> None:
        self._faults = faults
        self._allowed_log_dirs = allowed_log_dirs
        """Where its request logs may go (``request_log.confine``); None: anywhere."""
        self._empty_seen = False
        """The previous poll read a file that lists no model."""

    def read(self, path: str, serving: list[ModelArgs]) -> list[ModelArgs] | None:
        """The models the file at ``path`` lists now, or None: keep ``serving``."""
        try:
            models = models_from_config(model_config.read_file(path))
            if self._allowed_log_dirs is not None:
                models = request_log.confine(models, self._allowed_log_dirs)
        except ServingError as e:
            self._faults.report("config_file", "", f"{path}: {e.message}")
            return None
        except Exception as e:  # a decode error, a typed check: the same, keep the last
            self._faults.report("config_file", "", f"{path}: {type(e).__name__}: {e}")
            return None
        self._faults.clear("config_file")
        if not models and serving and not self._empty_seen:
            self._empty_seen = True
            logger.warning(
                "Model config file %s lists no model; the served models stay until the next "
                "poll reads it so too",
                path,
            )
            return None
        self._empty_seen = False
        return models

"""Failing lifecycle steps said once (``lifecycle.faults``): logged when the cause is new or
changes, and when it is over; every failure counted. No server."""

from __future__ import annotations

import logging

import pytest

from serve_app.lifecycle.faults import Faults


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_a_cause_is_logged_once_and_its_end_once(caplog: pytest.LogCaptureFixture) -> None:
    faults = Faults()
    with caplog.at_level(logging.INFO, logger="ray.serve"):
        for _ in range(5):
            faults.report("scan", "m", "Could not find base path /b")
        faults.report("scan", "m", "Cannot list /b: Permission denied")
        faults.report("scan", "other", "Could not find base path /o")
        faults.clear("scan", "m")
        faults.clear("scan", "m")
    said = messages(caplog)
    assert sum("Could not find base path /b" in m for m in said) == 1
    assert sum("Permission denied" in m and "failed" in m for m in said) == 1
    assert sum("works again" in m for m in said) == 1
    assert faults.now == {("scan", "other"): "Could not find base path /o"}
    faults.clear("scan")
    assert not faults.now


def test_a_failing_poll_is_logged_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    faults = Faults()
    try:
        raise RuntimeError("serve.run failed")
    except RuntimeError as e:
        with caplog.at_level(logging.INFO, logger="ray.serve"):
            faults.report("poll", "", "RuntimeError: serve.run failed", exc=e)
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None

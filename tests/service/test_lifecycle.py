"""What every service does around its lifespan, shown on the detector (the quickest to start).

``log_level`` counts: a service created with ``debug`` logs its debug lines, one created
with ``warning`` keeps its info lines to itself (:func:`voicemesh.lifecycle.apply_log_level`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from stt_tiny_ws.app import SttTinySettings, create_app
from voicemesh.settings import LogLevel

pytestmark = pytest.mark.service

LOGGERS = ("voicemesh", "stt_tiny_ws")


@pytest.fixture(autouse=True)
def _restore_logger_levels() -> Iterator[None]:
    """Creating an app sets process-wide logger levels; later tests get them back."""
    saved = {name: logging.getLogger(name).level for name in LOGGERS}
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


def _startup_records(caplog: pytest.LogCaptureFixture, level: LogLevel) -> list[logging.LogRecord]:
    """The shared package's log records while a detector starts, serves /health and stops."""
    settings = SttTinySettings(redis_url="", confirm=False, log_level=level)
    caplog.clear()
    with TestClient(create_app(settings)) as client:
        assert client.get("/health").json()["registry"] == "disabled"
    return [r for r in caplog.records if r.name.startswith("voicemesh")]


def test_debug_level_logs_debug_lines(caplog: pytest.LogCaptureFixture) -> None:
    records = _startup_records(caplog, "debug")
    assert any(
        r.levelno == logging.DEBUG
        and r.name == "voicemesh.lifecycle"
        and "drain on SIGTERM" in r.getMessage()
        for r in records
    )
    assert any(
        r.levelno == logging.INFO and "no Redis configured" in r.getMessage() for r in records
    )


def test_info_level_logs_info_but_not_debug(caplog: pytest.LogCaptureFixture) -> None:
    records = _startup_records(caplog, "info")
    assert any("no Redis configured" in r.getMessage() for r in records)
    assert not [r for r in records if r.levelno < logging.INFO]


def test_warning_level_keeps_info_lines_out(caplog: pytest.LogCaptureFixture) -> None:
    logging.getLogger("voicemesh").setLevel(logging.DEBUG)  # as an earlier app may have left it
    records = _startup_records(caplog, "warning")
    assert not [r for r in records if r.levelno < logging.WARNING]

"""Fixtures and collection rules shared by every test tier.

Helpers that are not fixtures (free ports, the Redis server, service processes, clips)
are in :mod:`tests.harness`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.harness import ENV_PREFIX, RedisServer

TIERS = (
    "unit",
    "service",
    "integration",
    "e2e",
    "faults",
    "deploy",
    "bench",
    "gptsovits",
    "compose",
)
"""Every test carries exactly one of these markers (``scripts/test -m TIER`` selects by it)."""


def _clear_voicemesh_env() -> None:
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            del os.environ[name]


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Clear the host's ``VOICEMESH_*`` variables before any fixture (session ones too) runs."""
    _clear_voicemesh_env()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Fail the collection when a test does not carry exactly one tier marker."""
    wrong = []
    for item in items:
        tiers = sorted({mark.name for mark in item.iter_markers()} & set(TIERS))
        if len(tiers) != 1:
            wrong.append(f"{item.nodeid}: {tiers or 'no tier marker'}")
    if wrong:
        raise pytest.UsageError(
            f"every test needs exactly one tier marker of {', '.join(TIERS)}:\n  "
            + "\n  ".join(wrong)
        )


@pytest.fixture(autouse=True)
def _clean_voicemesh_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clear ``VOICEMESH_*`` again before each test: one test's variables never reach the next.

    The host's were cleared in ``pytest_configure``, before any session fixture started a
    service; this catches a test that sets one without ``monkeypatch``.
    """
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server for the session; ``.url`` to connect, ``.stop()``/``.start()``."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()

"""Shared fixtures: the real Elasticsearch server (session-scoped) and the shared data folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from elastic_server import elasticsearch_server, elasticsearch_url  # noqa: F401  (session fixtures)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the checkout; tests that need it skip with the reason where absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"public test data not found at {SHARED_DATA} (it sits beside the checkout in CI)")
    return SHARED_DATA


_SERVER_FIXTURES = frozenset({"elasticsearch_server", "elasticsearch_url"})


def pytest_collection_modifyitems(config, items):
    """A test that needs the real Elasticsearch must say so with the `elasticsearch`
    marker: the README's fast subset (`-m "not elasticsearch and not slow"`) promises
    to need no server, and the session fixture would start one for an unmarked test."""
    unmarked = [item.nodeid for item in items
                if _SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))
                and item.get_closest_marker("elasticsearch") is None]
    if unmarked:
        raise pytest.UsageError("these tests use the Elasticsearch server but lack "
                                "@pytest.mark.elasticsearch: " + ", ".join(unmarked))

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

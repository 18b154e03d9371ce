"""Fixtures for search/ tests (helpers live in tests/support.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import migrations
from tests.support import WorkerPool


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'bnsweep.db'}"


@pytest.fixture
def migrate() -> Callable[[str], str]:
    def run(url: str) -> str:
        migrations.upgrade(url)
        return url

    return run


@pytest.fixture
def workers() -> Iterator[WorkerPool]:
    pool = WorkerPool()
    yield pool
    pool.stop()

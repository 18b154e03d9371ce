"""The per-key submission lock holds across connections on PostgreSQL and MariaDB alike: a second
holder of the same key's lock waits for the first to leave, another key's does not wait.

Each holder takes the database lock on a connection of its own, as a second API process would (the
in-process lock is bypassed on purpose: it is the database's lock under test).
"""

from __future__ import annotations

import threading

import pytest

from search.storage import get_engine
from service.quotas import _advisory_lock


def _hold(
    url: str,
    key_id: int,
    entered: threading.Event,
    leave_after: threading.Event,
    wait_s: float,
    log: list[tuple[str, int]],
) -> None:
    """Hold ``key_id``'s lock until ``leave_after`` is set or ``wait_s`` passed."""
    with _advisory_lock(get_engine(url), key_id):
        log.append(("in", key_id))
        entered.set()
        leave_after.wait(wait_s)
        log.append(("out", key_id))


@pytest.fixture(
    params=[
        pytest.param("pg_url", marks=pytest.mark.postgres, id="postgres"),
        pytest.param("mariadb_url", marks=pytest.mark.mariadb, id="mariadb"),
    ]
)
def storage_url(request: pytest.FixtureRequest) -> str:
    """The servers several API processes can share (SQLite serves one: its in-process lock is
    the whole lock)."""
    return str(request.getfixturevalue(request.param))


@pytest.mark.parametrize("same_key", [True, False], ids=["same key", "other key"])
def test_a_keys_submissions_serialize_across_connections(storage_url: str, same_key: bool):
    """The first holder stays until the second is in (at most 1 s with the same key, where the
    second must not get in, 30 s with another, where it must)."""
    log: list[tuple[str, int]] = []
    first_in, second_in, never = threading.Event(), threading.Event(), threading.Event()
    wait_s = 1.0 if same_key else 30.0
    first = threading.Thread(target=_hold, args=(storage_url, 1, first_in, second_in, wait_s, log))
    first.start()
    assert first_in.wait(30)
    second_key = 1 if same_key else 2
    second = threading.Thread(
        target=_hold, args=(storage_url, second_key, second_in, never, 0.0, log)
    )
    second.start()
    first.join(60)
    second.join(60)
    if same_key:
        assert log == [("in", 1), ("out", 1), ("in", 1), ("out", 1)]
    else:
        assert log == [("in", 1), ("in", 2), ("out", 2), ("out", 1)] or log == [
            ("in", 1), ("in", 2), ("out", 1), ("out", 2)
        ]  # fmt: skip

"""How much database work a piece of code does: statements, rows returned (PostgreSQL: the
cursor's rowcount) and work inside SQLite (virtual-machine steps, which count the rows a
statement scans, not only those it returns). For tests that a cost does not grow with a study."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event

VM_STEP = 100  # SQLite calls the progress handler every this many virtual-machine instructions


@dataclass
class Usage:
    statements: int = 0
    rows: int = 0
    vm_steps: int = 0

    def within(self, baseline: Usage) -> bool:
        """Costs the same as ``baseline`` up to noise: same statements, rows and SQLite steps
        within a margin (a B-tree one level deeper, a page of trials with more attrs)."""
        return (
            self.statements == baseline.statements
            and self.rows <= 1.2 * baseline.rows + 20
            and self.vm_steps <= 1.5 * baseline.vm_steps + 5_000
        )


class Meter:
    """Database use of the engines given, from every thread but background ones (named
    ``bnsweep-*``: the reaper, the analyses' refresher)."""

    def __init__(self, engines: list[Any], ignore: Callable[[str], bool] | None = None) -> None:
        """``ignore``: statements (by their SQL) left out of the count, their rows and steps."""
        self.usage = Usage()
        self.lock = threading.Lock()
        self.ignore = ignore or (lambda _: False)
        self.ignoring = threading.local()
        for engine in engines:
            event.listen(engine, "before_cursor_execute", self._before)
            event.listen(engine, "after_cursor_execute", self._statement)
            event.listen(engine, "checkout", self._checkout)
            if engine.dialect.name == "sqlite":  # connections opened before the listener
                engine.dispose()

    def _counted(self) -> bool:
        if getattr(self.ignoring, "now", False):
            return False
        return not threading.current_thread().name.startswith("bnsweep-")

    def _before(self, conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        self.ignoring.now = self.ignore(statement)

    def _statement(self, conn: Any, cursor: Any, *_: Any) -> None:
        counted = self._counted()
        self.ignoring.now = False
        if counted:
            with self.lock:
                self.usage.statements += 1
                self.usage.rows += max(0, cursor.rowcount)

    def _checkout(self, dbapi_conn: Any, *_: Any) -> None:
        if hasattr(dbapi_conn, "set_progress_handler"):  # sqlite3

            def step() -> int:
                if self._counted():
                    with self.lock:
                        self.usage.vm_steps += VM_STEP
                return 0

            dbapi_conn.set_progress_handler(step, VM_STEP)

    def reset(self) -> None:
        with self.lock:
            self.usage = Usage()

    def take(self) -> Usage:
        """What was used since the last reset (and reset)."""
        with self.lock:
            usage, self.usage = self.usage, Usage()
        return usage

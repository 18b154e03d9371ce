"""Exit 0 when the database is at this image's schema revision, else 1 with one line on stderr.

The init containers of the API and worker Deployments loop on it, so those pods start only after
the migrate Job (``bnsweep migrate``) has run: Kubernetes has no "after this Job" dependency.
The database URL comes from ``BNSWEEP_DATABASE_URL``; it is never printed (it holds a password).
"""

from __future__ import annotations

import sys

from alembic.script import ScriptDirectory

import migrations
from service.settings import get_settings


def main() -> int:
    url = get_settings().database_url
    head = ScriptDirectory.from_config(migrations.alembic_config(url)).get_current_head()
    try:
        current = migrations.current(url)
    except Exception as exc:  # unreachable, refused, not created yet: all mean "wait"
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        print(f"database not ready: {lines[0]}", file=sys.stderr)
        return 1
    if current != head:
        print(f"schema at {current}, waiting for {head} (bnsweep migrate)", file=sys.stderr)
        return 1
    print(f"schema at {head}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

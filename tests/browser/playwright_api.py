"""Playwright's sync API, or a clear skip (a failure with ``CI=true``) where it is missing.

Imported by the browser tests and, lazily, by their fixtures: a skip or failure raised while a
test module is collected applies to that module, one raised in a fixture to its tests.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

CHROMIUM = "/usr/bin/chromium"  # Debian's package; Playwright's own browser downloads are not used
INSTALL_HINT = (
    "apt-get install -y chromium; pip install playwright==1.65.2 (never `playwright install`)"
)


def unavailable(reason: str) -> NoReturn:
    """Skip the browser tests, or fail them in CI, where they must never be skipped."""
    message = f"browser tests need {reason} ({INSTALL_HINT})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"required in CI: {message}", pytrace=False)
    pytest.skip(message, allow_module_level=True)


try:
    from playwright.sync_api import Browser, Page, Route, expect, sync_playwright
except ImportError as exc:
    unavailable(f"the playwright package: {exc}")

if not os.access(CHROMIUM, os.X_OK):
    unavailable(f"Chromium at {CHROMIUM}")

__all__ = ["CHROMIUM", "Browser", "Page", "Route", "expect", "sync_playwright"]

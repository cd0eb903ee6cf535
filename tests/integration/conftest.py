"""Fixtures of the browser tests: Debian's Chromium, driven by Playwright (never downloaded)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from orstream.viewer.chromium import CHROMIUM_ARGS, chromium_path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium per test module; CI installs it, so there it must be present."""
    executable = chromium_path()
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser tests: .ci/run installs Debian's chromium")
        pytest.skip("Debian's chromium is not installed here (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(executable), args=list(CHROMIUM_ARGS))
        yield b
        b.close()

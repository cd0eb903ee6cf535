"""Fixtures of the integration tests: Debian's Chromium, driven by Playwright (never
downloaded); each service's settings class, for the deployment tests."""

from __future__ import annotations

import functools
import importlib
import inspect
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from orstream.common.config import CommonSettings
from orstream.viewer.chromium import CHROMIUM_ARGS, chromium_path

SettingsOf = Callable[[str], type[CommonSettings]]


@functools.cache
def _settings_class(service: str) -> type[CommonSettings]:
    module = importlib.import_module(f"orstream.{service}.settings")
    found = [
        cls
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, CommonSettings) and cls.__module__ == module.__name__
    ]
    assert len(found) == 1, f"{module.__name__} defines {found}, not one settings class"
    return found[0]


@pytest.fixture(scope="session")
def settings_class() -> SettingsOf:
    """The settings class ``orstream.<service>.settings`` defines: compose and the Kubernetes
    manifests may only set ``ORSTREAM_*`` variables that are its fields."""
    return _settings_class


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

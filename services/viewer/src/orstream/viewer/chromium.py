"""Debian's Chromium, started headless by Playwright, for the browser tests and benchmark.

Playwright drives the distribution's browser (``executable_path``); it never downloads one, as
the machines this runs on reach only package registries. The flags keep a headless Chromium
from reaching out to Google's services, which a closed network refuses many times a second.
"""

from __future__ import annotations

import shutil
from pathlib import Path

CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
)


def chromium_path() -> Path | None:
    """Debian's ``chromium`` binary, or None when it is not installed."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return Path(found)
    default = Path("/usr/bin/chromium")
    return default if default.exists() else None

"""Headless Chromium, to look at a report as a reader's browser draws it (the test suite's HTML check and
docs/screenshot.py). Quiet and offline: no sync, no component updates, no background requests, a fresh
profile per call."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from medprobe.errors import MedprobeError

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars")


def chromium_binary() -> str | None:
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


def screenshot(html: Path, png: Path, *, width: int = 1200, height: int = 1500, timeout: float = 120) -> Path:
    """`html` drawn by headless Chromium into `png` (width x height pixels)."""
    binary = chromium_binary()
    if binary is None:
        raise MedprobeError("no chromium binary on PATH; install it (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="medprobe-chromium-") as profile:
        command = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                   f"--screenshot={png}", Path(html).resolve().as_uri()]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if not Path(png).is_file():
        raise MedprobeError(f"chromium drew no screenshot of {html}: {result.stderr.strip()[-500:]}")
    return Path(png)

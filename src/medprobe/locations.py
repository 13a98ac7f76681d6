"""Where medprobe keeps what it computes for you (feature caches, remembered slice selections)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "MEDPROBE_CACHE"


def default_cache_dir() -> Path:
    """$MEDPROBE_CACHE, else $XDG_CACHE_HOME/medprobe, else ~/.cache/medprobe."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "medprobe"


RESULTS_DIR = Path("medprobe-results")  # where probe and finetune write run records, and report reads them

"""Where caches live and what they are called: <cache-dir>/<dataset>/<model>--<key>.h5, where key hashes
the model identity, its preprocessing and the precision (so fp32 and bf16 caches coexist)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CACHE_SUFFIX = ".h5"
CACHE_ENV = "MEDPROBE_CACHE"


def default_cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "medprobe"


def cache_key(model_identity: str, preprocessing_json: str, precision: str) -> str:
    text = "\n".join([model_identity, preprocessing_json, precision])
    return hashlib.blake2b(text.encode(), digest_size=5).hexdigest()


def cache_path(cache_dir: Path, dataset_slug: str, model_slug: str, key: str) -> Path:
    return Path(cache_dir) / dataset_slug / f"{model_slug}--{key}{CACHE_SUFFIX}"


def list_cache_files(cache_dir: Path, dataset_slug: str | None = None, model_slug: str | None = None) -> list[Path]:
    root = Path(cache_dir)
    if not root.is_dir():
        return []
    pattern = f"{model_slug}--*{CACHE_SUFFIX}" if model_slug else f"*{CACHE_SUFFIX}"
    folders = [root / dataset_slug] if dataset_slug else sorted(p for p in root.iterdir() if p.is_dir())
    return sorted(p for folder in folders if folder.is_dir() for p in folder.glob(pattern))

"""Where caches live and what they are called: <cache-dir>/<dataset>/<model>--<key>.h5, where key hashes
the model identity, its preprocessing, the precision and the decode path (so fp32 and bf16 caches coexist)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

CACHE_SUFFIX = ".h5"


def cache_key(model_identity: str, preprocessing_json: str, precision: str, decode: str = "cpu") -> str:
    """GPU-decoded pixels differ from PIL's by a few levels, so a decode path other than the CPU's gets
    files of its own (CPU keys are unchanged by it)."""
    parts = [model_identity, preprocessing_json, precision] + ([f"decode={decode}"] if decode != "cpu" else [])
    text = "\n".join(parts)
    return hashlib.blake2b(text.encode(), digest_size=5).hexdigest()


def cache_path(cache_dir: Path, dataset_slug: str, model_slug: str, key: str) -> Path:
    return find_cache_file(cache_dir, dataset_slug, f"{model_slug}--{key}{CACHE_SUFFIX}")


def _moved(folder: Path) -> bool:
    """Whether a cache folder's dataset root no longer exists here: the cache (and its images) were copied
    or moved, e.g. to another machine."""
    from medprobe.cache.store import read_cache_attrs

    for path in folder.glob(f"*{CACHE_SUFFIX}"):
        try:
            root = str(read_cache_attrs(path).get("dataset_root") or "")
        except Exception:  # an unreadable file says nothing about the folder
            continue
        return bool(root) and not Path(root).exists()
    return False


def dataset_folders(cache_dir: Path, dataset_slug: str) -> list[Path]:
    """The dataset's cache folder, then folders of the same image-folder name whose dataset root is gone
    (copied caches are found again; their rows are still checked against the files, by content)."""
    root = Path(cache_dir)
    name = dataset_slug.rsplit("-", 1)[0]
    siblings = sorted(p for p in root.glob(f"{name}-*") if p.is_dir() and p.name != dataset_slug
                      and re.fullmatch(r"[0-9a-f]{12}", p.name[len(name) + 1:]))
    return [root / dataset_slug] + [p for p in siblings if _moved(p)]


def find_cache_file(cache_dir: Path, dataset_slug: str, file_name: str) -> Path:
    """Where a cache file is: its own folder, or a copied one; its own folder when it exists nowhere yet."""
    for folder in dataset_folders(cache_dir, dataset_slug):
        if (folder / file_name).exists():
            return folder / file_name
    return Path(cache_dir) / dataset_slug / file_name


def list_cache_files(cache_dir: Path, dataset_slug: str | None = None, model_slug: str | None = None) -> list[Path]:
    root = Path(cache_dir)
    if not root.is_dir():
        return []
    pattern = f"{model_slug}--*{CACHE_SUFFIX}" if model_slug else f"*{CACHE_SUFFIX}"
    if dataset_slug:
        folders = dataset_folders(root, dataset_slug)
    else:
        folders = sorted(p for p in root.iterdir() if p.is_dir())
    return sorted(p for folder in folders if folder.is_dir() for p in folder.glob(pattern))

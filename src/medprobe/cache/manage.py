"""`medprobe cache ls|info|verify|rm`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from medprobe.cache import layout
from medprobe.cache.store import read_contents
from medprobe.data.signature import recheck_stored
from medprobe.errors import MedprobeError


@dataclass
class CacheListing:
    path: Path
    model: str
    dataset: str
    rows: int
    done: int
    precision: str
    size_mb: float
    updated: str


def describe(path: Path) -> CacheListing:
    contents = read_contents(path)
    attrs = contents.attrs
    return CacheListing(
        path=path, model=str(attrs.get("model_name", "?")), dataset=str(attrs.get("dataset_name", "?")),
        rows=len(contents.ids), done=int(contents.done.sum()), precision=str(attrs.get("precision", "?")),
        size_mb=path.stat().st_size / 2**20, updated=str(attrs.get("updated_at", "")),
    )


@dataclass
class VerifyResult:
    path: Path
    rows: int
    done: int
    problems: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    missing_sources: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.problems or self.stale or self.missing_sources)


def verify(path: Path, *, deep: bool = False) -> VerifyResult:
    """Structure, finite features on done rows, and each done row's source file still matching
    (stat, or bytes with deep=True)."""
    contents = read_contents(path)
    result = VerifyResult(path=path, rows=len(contents.ids), done=int(contents.done.sum()))
    with h5py.File(path, "r") as handle:
        for pool, dataset in handle[layout.FEATURES].items():
            if dataset.shape[0] != result.rows:
                result.problems.append(f"pool {pool} has {dataset.shape[0]} rows, ids has {result.rows}")
                continue
            for start in range(0, result.rows, 4096):
                block = dataset[start:start + 4096][contents.done[start:start + 4096]]
                if not np.isfinite(block).all():
                    result.problems.append(f"pool {pool} has non-finite values near row {start}")
                    break
    if result.done and not contents.dims:
        result.problems.append("rows are marked done but no features are stored")
    root = Path(str(contents.attrs.get("dataset_root", "")))
    relative = str(contents.attrs.get("dataset_root_relative") or "")
    if not root.is_dir() and relative:  # copied elsewhere together with its images
        root = (path.parent / relative).resolve()
    for row, sample_id in enumerate(contents.ids):
        if not contents.done[row]:
            continue
        state = recheck_stored(root, sample_id, contents.stats[row], contents.fingerprints[row], deep=deep)
        if state == "missing":
            result.missing_sources.append(sample_id)
        elif state == "stale":
            result.stale.append(sample_id)
    return result


def remove(paths: list[Path]) -> list[Path]:
    removed = []
    for path in paths:
        if path.suffix != ".h5" or not path.is_file():
            raise MedprobeError(f"{path} is not a cache file (.h5); see `medprobe cache ls`")
        path.unlink()
        path.with_suffix(".lock").unlink(missing_ok=True)
        removed.append(path)
        if path.parent.is_dir() and not any(path.parent.iterdir()):
            path.parent.rmdir()
    return removed

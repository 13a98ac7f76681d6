"""Crash-safe extraction: batches go to a journal first, and the cache file is replaced atomically.

HDF5 is not safe against a process killed mid-write, so an extraction never writes the cache file in
place. Each extracted batch is saved as one `.npz` in `<cache>.journal/` (written to a temporary name and
renamed: a kill loses at most the batch in flight). At the end, on Ctrl-C, or when the next run finds a
journal left by a killed one, `commit` copies the cache to `<cache>.h5.partial`, writes the journal's rows
into the copy, flushes it to disk and renames it over the cache. So the cache file is always a complete,
consistent HDF5 file, readers (`probe`, `report`) may read it while an extraction runs, and a full disk
or a kill during the commit leaves the previous cache and the journal as they were.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from medprobe.cache.store import CacheWriter
from medprobe.errors import MedprobeError

META = "journal.json"


def journal_dir(cache_path: Path) -> Path:
    return cache_path.with_suffix(".journal")


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def disk_full_error(path: Path, exc: OSError) -> MedprobeError:
    return MedprobeError(f"cannot write {path}: {exc.strerror or exc}; free disk space, then run the same command "
                         "again: extracted batches are kept and the cache is not marked complete")


class Journal:
    """`prefix` names one writer's batches (a torchrun rank's), so several processes share one journal."""

    def __init__(self, cache_path: Path, prefix: str = "") -> None:
        self.cache_path = Path(cache_path)
        self.folder = journal_dir(self.cache_path)
        self.prefix = prefix

    def batches(self) -> list[Path]:
        return sorted(self.folder.glob("batch-*.npz")) if self.folder.is_dir() else []

    def meta(self) -> dict | None:
        """What the extraction that wrote the batches recorded: provenance, pending ids, fresh start."""
        path = self.folder / META
        try:
            return json.loads(path.read_text()) if path.is_file() else None
        except ValueError:  # written atomically, so only a foreign file gets here
            return None

    def start(self, provenance: dict, *, pending: list[str] = (), fresh: bool = False) -> None:
        """Begin (or continue) a journal for these weights; batches of other weights are dropped."""
        known = self.meta()
        if known is not None and known["provenance"].get("weights_identity") != provenance.get("weights_identity"):
            self.clear()
        self.folder.mkdir(parents=True, exist_ok=True)
        meta = {"provenance": provenance, "pending": list(pending), "fresh": fresh}
        self._atomic(self.folder / META, lambda path: path.write_text(json.dumps(meta, sort_keys=True)))

    def _atomic(self, path: Path, write) -> None:
        temporary = path.with_name(path.name + ".partial")
        try:
            write(temporary)
            os.replace(temporary, path)
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            raise disk_full_error(path, exc) from exc

    def append(self, ids: list[str], features: dict[str, np.ndarray], fingerprints: list[str],
               stats: list[str]) -> None:
        number = len(list(self.folder.glob(f"batch-{self.prefix}[0-9]*.npz")))
        arrays = {"ids": np.asarray(ids, dtype=str), "fingerprints": np.asarray(fingerprints, dtype=str),
                  "stats": np.asarray(stats, dtype=str),
                  **{f"pool_{pool}": values.astype(np.float16) for pool, values in features.items()}}

        def write(path: Path) -> None:
            with path.open("wb") as handle:
                np.savez(handle, **arrays)

        self._atomic(self.folder / f"batch-{self.prefix}{number:08d}.npz", write)

    def entries(self) -> Iterator[dict]:
        for path in self.batches():
            with np.load(path, allow_pickle=False) as data:  # never unpickle what is on disk
                yield {"ids": data["ids"].tolist(), "fingerprints": data["fingerprints"].tolist(),
                       "stats": data["stats"].tolist(),
                       "features": {k[5:]: data[k] for k in data.files if k.startswith("pool_")}}

    def batch_ids(self) -> Iterator[list[str]]:
        """The ids of each batch, without reading its features."""
        for path in self.batches():
            with np.load(path, allow_pickle=False) as data:
                yield data["ids"].tolist()

    def rows(self) -> int:
        return sum(len(ids) for ids in self.batch_ids())

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def commit(cache_path: Path, journal: Journal, *, ids: list[str], provenance: dict, attrs: dict | None = None,
           pending: list[str] = (), restat: dict[str, str] | None = None, fresh: bool = False) -> None:
    """Write a new cache file = the current one (unless `fresh`) + rows for `ids` + the journal's batches,
    then atomically replace the cache with it and drop the journal. `pending` rows are marked not done
    (their source changed and they are not re-extracted yet); `restat` renews stats of unchanged bytes."""
    temporary = cache_path.with_name(cache_path.name + ".partial")
    temporary.unlink(missing_ok=True)
    try:
        if cache_path.exists() and not fresh:
            shutil.copyfile(cache_path, temporary)
        with CacheWriter(temporary, provenance) as writer:
            known = set(writer.ids)
            new_ids = [i for i in ids if i not in known]
            known.update(new_ids)
            # a batch may hold samples this dataset does not list (a killed run of another manifest over the
            # same images): they keep rows of their own
            for sample_ids in journal.batch_ids():
                extra = [i for i in dict.fromkeys(sample_ids) if i not in known]
                new_ids += extra
                known.update(extra)
            writer.append_rows(new_ids)
            row_of = {sample_id: row for row, sample_id in enumerate(writer.ids)}
            writer.mark_pending([row_of[i] for i in pending if i in row_of])
            writer.update_stats(restat or {})
            for entry in journal.entries():
                writer.write(np.asarray([row_of[i] for i in entry["ids"]], dtype=np.int64), entry["features"],
                             entry["fingerprints"], entry["stats"])
            writer.set_attrs(attrs or {})
        _fsync(temporary)
        os.replace(temporary, cache_path)
        _fsync(cache_path.parent)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise disk_full_error(cache_path, exc) from exc
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    journal.clear()

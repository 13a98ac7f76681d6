"""Reading and writing one HDF5 feature cache. numpy and h5py only: probes import this without torch."""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from medprobe.cache import layout
from medprobe.errors import MedprobeError
from medprobe.timestamps import now_iso

_STR = h5py.string_dtype("utf-8")


def _decode(values: Iterable) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _open(path: Path, mode: str) -> h5py.File:
    try:
        return h5py.File(path, mode)
    except OSError as exc:
        raise MedprobeError(
            f"cache {path} cannot be opened ({exc}); it may be damaged by an interrupted write: "
            f"remove it with `medprobe cache rm {path}` and extract again"
        ) from exc


@dataclass
class CacheContents:
    """Everything but the features: cheap to read, enough to plan an extraction or check freshness."""

    path: Path
    attrs: dict
    ids: list[str]
    fingerprints: list[str]
    stats: list[str]
    done: np.ndarray
    dims: dict[str, int]

    @property
    def row_of(self) -> dict[str, int]:
        return {sample_id: row for row, sample_id in enumerate(self.ids)}


def read_attrs(handle: h5py.File) -> dict:
    attrs = {}
    for key, value in handle.attrs.items():
        if isinstance(value, bytes):
            value = value.decode()
        if key in layout.JSON_ATTRS and isinstance(value, str):
            value = json.loads(value)
        elif isinstance(value, np.generic):
            value = value.item()
        attrs[key] = value
    return attrs


def read_cache_attrs(path: Path) -> dict:
    """The provenance attributes alone, without the id, fingerprint and stat columns."""
    with _open(path, "r") as handle:
        return read_attrs(handle)


def read_contents(path: Path) -> CacheContents:
    with _open(path, "r") as handle:
        try:
            features = handle[layout.FEATURES]
            return CacheContents(
                path=Path(path),
                attrs=read_attrs(handle),
                ids=_decode(handle[layout.IDS][()]),
                fingerprints=_decode(handle[layout.FINGERPRINT][()]),
                stats=_decode(handle[layout.STAT][()]),
                done=handle[layout.DONE][()].astype(bool),
                dims={pool: int(features[pool].shape[1]) for pool in features},
            )
        except KeyError as exc:
            raise MedprobeError(
                f"cache {path} lacks {exc}; it is not a medprobe cache or is damaged: remove it and extract again"
            ) from exc


def feature_rows(path: Path, ids: list[str], pool: str) -> tuple[np.ndarray, int]:
    """The row of each id (in that order) and the pool's width; every id must be present and done."""
    contents = read_contents(path)
    if pool not in contents.dims:
        raise MedprobeError(f"cache {path} has no pool {pool!r}; it holds: {', '.join(contents.dims)}")
    row_of = contents.row_of
    missing = [i for i in ids if i not in row_of or not contents.done[row_of[i]]]
    if missing:
        raise MedprobeError(
            f"cache {path} lacks {len(missing)} sample(s) (first: {missing[0]}); run `medprobe extract` again"
        )
    return np.array([row_of[i] for i in ids], dtype=np.int64), contents.dims[pool]


def read_features(path: Path, ids: list[str], pool: str) -> np.ndarray:
    """Rows for `ids`, in that order, as float32. Every id must be present and done."""
    rows, dim = feature_rows(path, ids, pool)
    order = np.argsort(rows)
    with _open(path, "r") as handle:
        block = handle[layout.FEATURES][pool][rows[order]] if len(rows) else np.empty((0, dim))
    out = np.empty_like(block, dtype=np.float32)
    out[order] = block
    return out


def iter_feature_blocks(path: Path, pool: str, blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """The features of each block of rows (in the block's order) as float32, one block at a time, so memory
    holds one block whatever the cache's size. A block is read as the slice spanning it (h5py reads a
    slice far faster than a row list) unless that slice would be mostly rows nobody asked for."""
    with _open(path, "r") as handle:
        dataset = handle[layout.FEATURES][pool]
        for rows in blocks:
            rows = np.asarray(rows, dtype=np.int64)
            if not len(rows):
                yield np.empty((0, dataset.shape[1]), dtype=np.float32)
                continue
            low, high = int(rows.min()), int(rows.max()) + 1
            if high - low == len(rows) and (np.diff(rows) == 1).all():  # the common case: rows in file order
                yield dataset[low:high].astype(np.float32)
                continue
            if high - low <= 4 * len(rows):
                yield dataset[low:high][rows - low].astype(np.float32)
                continue
            order = np.argsort(rows)
            block = np.empty((len(rows), dataset.shape[1]), dtype=np.float32)
            block[order] = dataset[rows[order]]
            yield block


class cache_lock:  # noqa: N801 - used as a context manager, like open()
    """The exclusive right to extract into one cache, held for a whole extraction: a second extraction
    into the same cache is refused with a clear line instead of interleaving writes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path).with_suffix(".lock")

    def __enter__(self) -> cache_lock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "w")  # noqa: SIM115 - held until __exit__
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self._handle.close()
            raise MedprobeError(
                f"another medprobe process is extracting into {self.path.with_suffix('.h5')}; wait for it to "
                "finish, then run again (readers such as probe may use the cache meanwhile)"
            ) from exc
        return self

    def __exit__(self, *exc_info) -> None:
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()


class CacheWriter:
    """Appends and rewrites rows of one cache file. Extraction only ever uses it on a private copy that
    then replaces the cache atomically (see cache/journal.py)."""

    def __init__(self, path: Path, provenance: dict) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = _open(self.path, "a")
        if layout.IDS not in self.file:
            self._initialise()
        self.set_attrs(provenance)

    def _initialise(self) -> None:
        handle = self.file
        handle.create_dataset(layout.IDS, shape=(0,), maxshape=(None,), dtype=_STR, chunks=(layout.ROW_CHUNK,))
        handle.create_dataset(layout.FINGERPRINT, shape=(0,), maxshape=(None,), dtype=_STR,
                              chunks=(layout.ROW_CHUNK,))
        handle.create_dataset(layout.STAT, shape=(0,), maxshape=(None,), dtype=_STR, chunks=(layout.ROW_CHUNK,))
        handle.create_dataset(layout.DONE, shape=(0,), maxshape=(None,), dtype="u1", chunks=(layout.ROW_CHUNK,))
        handle.create_group(layout.FEATURES)
        handle.attrs["format_version"] = layout.FORMAT_VERSION
        handle.attrs["created_at"] = now_iso()

    def set_attrs(self, values: dict) -> None:
        for key, value in values.items():
            if value is None:
                value = ""
            if key in layout.JSON_ATTRS:
                value = json.dumps(value, sort_keys=True)
            self.file.attrs[key] = value

    def clear(self) -> None:
        """Forget every row (the weights or preprocessing changed): all samples are extracted anew."""
        for name in (layout.IDS, layout.FINGERPRINT, layout.STAT, layout.DONE, layout.FEATURES):
            del self.file[name]
        self._initialise()

    @property
    def ids(self) -> list[str]:
        return _decode(self.file[layout.IDS][()])

    def append_rows(self, ids: list[str]) -> None:
        start = self.file[layout.IDS].shape[0]
        end = start + len(ids)
        for name in (layout.IDS, layout.FINGERPRINT, layout.STAT, layout.DONE):
            self.file[name].resize((end,))
        for dataset in self.file[layout.FEATURES].values():
            dataset.resize((end, dataset.shape[1]))
        self.file[layout.IDS][start:end] = ids
        self.file[layout.DONE][start:end] = 0

    def update_stats(self, new_stats: dict[str, str]) -> None:
        """Renew the stat of rows whose file was touched but whose bytes are unchanged."""
        if not new_stats:
            return
        row_of = {sample_id: row for row, sample_id in enumerate(self.ids)}
        pairs = sorted((row_of[sample_id], stat) for sample_id, stat in new_stats.items())
        self.file[layout.STAT][[row for row, _ in pairs]] = [stat for _, stat in pairs]

    def mark_pending(self, rows: list[int]) -> None:
        if rows:
            self.file[layout.DONE][sorted(rows)] = 0
            self.file.flush()

    def write(self, rows: np.ndarray, features: dict[str, np.ndarray], fingerprints: list[str],
              stats: list[str]) -> None:
        order = np.argsort(rows)
        rows = rows[order]
        if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
            rows = slice(int(rows[0]), int(rows[-1]) + 1)  # h5py writes a slice far faster than a row list
        group = self.file[layout.FEATURES]
        total = self.file[layout.IDS].shape[0]
        for pool, values in features.items():
            if pool not in group:
                dim = values.shape[1]
                group.create_dataset(pool, shape=(total, dim), maxshape=(None, dim), dtype="f2",
                                     chunks=(min(layout.ROW_CHUNK, max(total, 1)), dim))
            group[pool][rows] = values[order].astype(np.float16)
        self.file[layout.FINGERPRINT][rows] = [fingerprints[i] for i in order]
        self.file[layout.STAT][rows] = [stats[i] for i in order]
        self.file[layout.DONE][rows] = 1
        self.file.flush()

    def close(self) -> None:
        if self.file.id.valid:
            self.file.attrs["updated_at"] = now_iso()
            self.file.close()

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

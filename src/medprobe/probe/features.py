"""Finding the caches a probe reads and turning them into one feature matrix. Torch-free: model names
resolve through the registry only, and caches are read with h5py."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medprobe.cache import feature_rows, iter_feature_blocks, list_cache_files, plan_rows, read_contents
from medprobe.data.samples import Dataset
from medprobe.data.signature import unchanged_records
from medprobe.errors import MedprobeError
from medprobe.models.registry import auto_pools, resolve_model


@dataclass
class CacheRef:
    model: str  # the name shown in tables and records
    path: Path
    attrs: dict


def _extract_hint(dataset: Dataset, model: str) -> str:
    return f"run `medprobe extract {dataset.source} --model {model}`"


def skipped_in(attrs: dict, dataset: Dataset) -> dict[str, str]:
    """Samples the extraction left out as unreadable (--skip-bad) and that have not changed since."""
    unchanged = unchanged_records(attrs.get("skipped") or {}, dataset.samples, dataset.root)
    return {sample_id: entry["reason"] for sample_id, entry in unchanged.items()}


def _staleness(dataset: Dataset, contents) -> str | None:
    """Why a cache cannot serve `dataset`, or None when every sample is present and fresh (or recorded as
    unreadable by `extract --skip-bad`)."""
    skipped = skipped_in(contents.attrs, dataset)
    plan = plan_rows(contents, [s for s in dataset.samples if s.id not in skipped], dataset.root)
    if plan.up_to_date:
        return None
    changed = len(plan.changed)
    return f"{len(plan.todo) - changed} image(s) not extracted, {changed} changed since extraction"


def find_cache(dataset: Dataset, model: str, cache_dir: Path) -> CacheRef:
    """The newest cache of `model` that covers every sample of `dataset` with fresh features."""
    spec = resolve_model(model)
    candidates = list_cache_files(cache_dir, dataset.cache_slug, spec.slug)
    if not candidates:
        raise MedprobeError(f"no feature cache of {model} for {dataset.name} in {cache_dir}; "
                            f"{_extract_hint(dataset, model)}")
    problems = []
    for path in sorted(candidates, key=lambda p: p.stat().st_mtime, reverse=True):
        contents = read_contents(path)
        problem = _staleness(dataset, contents)
        if problem is None:
            return CacheRef(spec.name, path, contents.attrs)  # the name extract recorded, also for folders
        problems.append(problem)
    raise MedprobeError(f"the cache of {model} for {dataset.name} is stale ({problems[0]}); "
                        f"{_extract_hint(dataset, model)}")


def extracted_models(dataset: Dataset, cache_dir: Path) -> list[CacheRef]:
    """Every backbone with a complete, fresh cache for `dataset` (the newest file per model)."""
    refs: dict[str, CacheRef] = {}
    for path in sorted(list_cache_files(cache_dir, dataset.cache_slug), key=lambda p: p.stat().st_mtime):
        contents = read_contents(path)
        if _staleness(dataset, contents) is None:
            name = str(contents.attrs.get("model_name") or path.stem.split("--")[0])
            refs[name] = CacheRef(name, path, contents.attrs)  # newer files replace older ones
    if not refs:
        raise MedprobeError(f"no complete feature cache for {dataset.name} in {cache_dir}; "
                            f"run `medprobe extract {dataset.source} --model dinov2-small` (or another model)")
    return [refs[name] for name in sorted(refs)]


def resolve_pools(pool: str, ref: CacheRef) -> list[str]:
    stored = list(ref.attrs.get("pools") or [])
    if pool == "auto":
        return auto_pools(stored)
    wanted = pool.split("+")
    missing = [p for p in wanted if p not in stored]
    if missing:
        raise MedprobeError(f"--pool {pool}: {ref.model} stores no {', '.join(missing)} features "
                            f"(it has: {', '.join(stored)}); use one of those or auto")
    return wanted


@dataclass
class FeatureStream:
    """A job's feature matrix (samples x concatenated pools) as a recipe: which cache rows to read. It is
    read whole (`matrix`) or block by block (`blocks`, out of core), never both."""

    parts: list[tuple[Path, str, np.ndarray]]  # (cache, pool, the cache row of every sample position)
    dims: list[int]

    @property
    def n_samples(self) -> int:
        return len(self.parts[0][2])

    @property
    def dim(self) -> int:
        return sum(self.dims)

    @property
    def nbytes(self) -> int:
        """Size of the float32 matrix in memory."""
        return self.n_samples * self.dim * 4

    def matrix(self) -> np.ndarray:
        blocks = [next(iter_feature_blocks(path, pool, [rows])) for path, pool, rows in self.parts]
        return blocks[0] if len(blocks) == 1 else np.hstack(blocks)  # one pool: no copy of the whole matrix

    def blocks(self, positions: np.ndarray, block_rows: int,
               rng: np.random.Generator | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(positions, features) for the given sample positions, `block_rows` dataset rows at a time, in
        dataset order; with `rng`, blocks come in random order and rows shuffled within each (for SGD)."""
        positions = np.sort(np.asarray(positions, dtype=np.int64))
        edges = np.flatnonzero(np.diff(positions // block_rows)) + 1
        chunks = [chunk for chunk in np.split(positions, edges) if len(chunk)]
        if rng is not None:
            chunks = [rng.permutation(chunks[i]) for i in rng.permutation(len(chunks))]
        readers = [iter_feature_blocks(path, pool, [rows[chunk] for chunk in chunks])
                   for path, pool, rows in self.parts]
        for chunk, *features in zip(chunks, *readers, strict=True):
            yield chunk, np.hstack(features)


def feature_stream(datasets: list[Dataset], refs_per_dataset: list[list[CacheRef]], pool: str,
                   ids: list[str]) -> tuple[FeatureStream, list[dict]]:
    """Where the pooled features of every (dataset, cache) pair for `ids` of the first dataset live, in a
    fixed order, to be concatenated. Other datasets join on `Sample.join_key`: the same id, or for volume
    slices the same patient (group) and slice position, so per-modality datasets fuse."""
    main = {s.id: s.join_key for s in datasets[0].samples}
    keys = [main[i] for i in ids]
    parts, dims, sources = [], [], []
    for dataset, refs in zip(datasets, refs_per_dataset, strict=True):
        id_of = {s.join_key: s.id for s in dataset.samples}
        missing = [k for k in keys if k not in id_of]
        if missing:
            raise MedprobeError(f"{dataset.source} lacks sample {missing[0]} (and {len(missing) - 1} more) of the "
                                "main dataset; fused datasets must share sample ids (volumes: group and slices)")
        own_ids = [id_of[k] for k in keys]
        for ref in refs:
            pools = resolve_pools(pool, ref)
            for name in pools:
                rows, dim = feature_rows(ref.path, own_ids, name)
                parts.append((ref.path, name, rows))
                dims.append(dim)
            sources.append({"dataset": dataset.name, "model": ref.model, "pools": pools, "cache": str(ref.path),
                            "provenance": {k: ref.attrs.get(k) for k in (
                                "backend", "family", "licence", "source", "revision_resolved", "weights_identity",
                                "precision", "device_name", "num_parameters", "embed_dims", "images_per_second",
                                "peak_memory_mb", "preprocessing")}})
    return FeatureStream(parts, dims), sources


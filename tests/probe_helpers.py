"""Datasets with synthetic features written straight into a cache, so probe tests control the signal."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from medprobe.cache import CacheWriter, cache_path, layout
from medprobe.data import load_dataset
from medprobe.data.signature import sample_fingerprint, sample_stat
from medprobe.models.registry import resolve_model


def write_manifest(root: Path, labels: list[str], groups: list[str] | None = None,
                   splits: list[str] | None = None, name: str = "labels.csv",
                   columns: dict[str, list[str]] | None = None) -> Path:
    """`columns`: more manifest columns (sex, site), a value per row."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    columns = columns or {}
    fields = ["path", "label"] + (["group"] if groups else []) + (["split"] if splits else []) + list(columns)
    rows = []
    for i, label in enumerate(labels):
        image = root / "img" / f"{i:05d}.png"
        if not image.exists():
            Image.new("L", (2, 2), i % 256).save(image)
        row = {"path": f"img/{i:05d}.png", "label": label}
        if groups:
            row["group"] = groups[i]
        if splits:
            row["split"] = splits[i]
        row.update({column: values[i] for column, values in columns.items()})
        rows.append(row)
    path = root / name
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_cache(dataset, cache_dir: Path, model: str, features: dict[str, np.ndarray], **extra_provenance) -> Path:
    """A cache with chosen features and the provenance a real extraction records (plus `extra_provenance`).
    A second dataset over the same image folder (another manifest) appends its rows, as extraction does."""
    spec = resolve_model(model)
    path = cache_path(cache_dir, dataset.cache_slug, spec.slug, "synthetic")
    provenance = {"model_name": model, "backend": spec.backend, "pools": list(features), "precision": "fp32",
                  "weights_identity": "synthetic", "embed_dims": {k: v.shape[1] for k, v in features.items()},
                  **extra_provenance}
    memo: dict = {}
    with CacheWriter(path, provenance) as writer:
        start = len(writer.file[layout.IDS])
        writer.append_rows(dataset.ids)
        writer.write(start + np.arange(len(dataset.ids)), features,
                     [sample_fingerprint(s, memo) for s in dataset.samples],
                     [sample_stat(s, dataset.root) for s in dataset.samples])
    return path


def synthetic_study(root: Path, cache_dir: Path, labels: list[str], features: np.ndarray, *,
                    groups: list[str] | None = None, splits: list[str] | None = None, model: str = "dinov2-small",
                    pools: tuple[str, ...] = ("cls", "mean"), columns: dict[str, list[str]] | None = None):
    dataset = load_dataset(write_manifest(root, labels, groups, splits, columns=columns))
    half = features.shape[1] // 2 if len(pools) == 2 else features.shape[1]
    blocks = {pools[0]: features[:, :half]}
    if len(pools) == 2:
        blocks[pools[1]] = features[:, half:]
    write_cache(dataset, cache_dir, model, blocks)
    return dataset


class BlasThreadsProbe:
    """A stand-in probe whose search and fit report the BLAS threads they ran with (for the runner's
    one-BLAS-thread-per-task rule; importable by joblib's worker processes)."""

    name = "blas-threads"

    @staticmethod
    def _threads() -> int:
        from threadpoolctl import threadpool_info

        return max(pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas")

    def search(self, part, data, seed, *, coarse_to_fine=False):
        from medprobe.probe.protocol import SearchOutcome

        return SearchOutcome([({"blas_threads": self._threads()}, 1.0)])

    def fit(self, params, X, y, n_classes, seed):
        threads = self._threads()

        class Fitted:
            capped = False

            @staticmethod
            def scores(X, n_classes):
                return np.full((len(X), n_classes), float(threads))

        return Fitted()

"""Embedding maps: a 2-D projection of each backbone's cached features, one point per test prediction,
coloured by class, so a reader sees whether the classes separate before reading any number.

The features come straight from the HDF5 cache named in the probe record (medprobe.cache, torch-free);
the points and their labels from the record's predictions CSV, so the map shows exactly the samples the
scores were computed on, and marks the ones the run got wrong. Projections are a registry: PCA (numpy,
always), t-SNE (scikit-learn), UMAP (when umap-learn is installed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medprobe.errors import MedprobeError
from medprobe.report.records import Predictions, RunRecord

MAX_POINTS = 3000  # a sample of the test predictions beyond this (seeded), to keep t-SNE and the PNG small
DEFAULT_PROJECTION = "pca"


class Projection:
    name: str
    needs: str = ""  # the package it needs, when it is optional

    def available(self) -> bool:
        return True

    def project(self, features: np.ndarray, seed: int) -> np.ndarray:
        raise NotImplementedError


PROJECTIONS: dict[str, Projection] = {}


def register(cls: type[Projection]) -> type[Projection]:
    PROJECTIONS[cls.name] = cls()
    return cls


def _standardised(features: np.ndarray) -> np.ndarray:
    centred = features - features.mean(axis=0)
    return centred / np.maximum(centred.std(axis=0), 1e-8)


@register
class PCA(Projection):
    """The two leading principal components of the standardised features (what the logreg probe sees)."""

    name = "pca"

    def project(self, features: np.ndarray, seed: int) -> np.ndarray:
        x = _standardised(features)
        _, _, components = np.linalg.svd(x, full_matrices=False)
        points = x @ components[:2].T
        if points.shape[1] < 2:
            points = np.column_stack([points, np.zeros(len(points))])
        signs = np.sign(points[np.abs(points).argmax(axis=0), range(2)])  # a fixed orientation for a fixed input
        return points * np.where(signs == 0, 1, signs)


@register
class TSNE(Projection):
    name = "tsne"

    def project(self, features: np.ndarray, seed: int) -> np.ndarray:
        from sklearn.manifold import TSNE as SkTSNE

        x = _standardised(features)
        perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
        return SkTSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


@register
class UMAP(Projection):
    name = "umap"
    needs = "umap-learn"

    def available(self) -> bool:
        import importlib.util

        return importlib.util.find_spec("umap") is not None

    def project(self, features: np.ndarray, seed: int) -> np.ndarray:
        import warnings

        import umap

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reducer = umap.UMAP(n_components=2, n_neighbors=min(15, len(features) - 1), random_state=seed)
            return reducer.fit_transform(_standardised(features))


def projection(name: str) -> Projection:
    if name not in PROJECTIONS:
        raise MedprobeError(f"--embedding {name!r} is not one of {', '.join(PROJECTIONS)}")
    chosen = PROJECTIONS[name]
    if not chosen.available():
        raise MedprobeError(f"--embedding {name} needs the {chosen.needs} package: pip install {chosen.needs}, "
                            f"or use --embedding {DEFAULT_PROJECTION}")
    return chosen


@dataclass
class EmbeddingMap:
    label: str  # the table row's label (backbone, and pool when several)
    points: np.ndarray  # (n, 2)
    y: np.ndarray  # class index per point
    wrong: np.ndarray  # bool: the run's prediction for this sample was wrong
    classes: tuple[str, ...]
    source: str  # what the features are: model, pool, cache file name


def map_source(records: list[RunRecord]) -> RunRecord | None:
    """The record whose features (and errors) a backbone's map shows: a probe on one cache (not fused), the
    one with the best validation score."""
    usable = [r for r in records if r.kind == "probe" and len(r.data.get("features") or []) == 1]
    return max(usable, key=lambda r: (r.validation_score or -1.0, r.name)) if usable else None


def embedding_map(label: str, record: RunRecord, predictions: Predictions, chosen: Projection,
                  seed: int) -> EmbeddingMap:
    """MedprobeError when the cache the record names is gone or no longer holds its samples."""
    from pathlib import Path

    from medprobe.cache import read_features

    source = record.data["features"][0]
    path = Path(str(source.get("cache") or ""))
    if not path.is_file():
        raise MedprobeError(f"cache {path} of {record.name} is not here (the report reads the features from it)")
    keep = np.arange(len(predictions.ids))
    if len(keep) > MAX_POINTS:
        keep = np.sort(np.random.default_rng(seed).choice(keep, MAX_POINTS, replace=False))
    ids = [str(i) for i in predictions.ids[keep]]
    features = np.concatenate([read_features(path, ids, pool) for pool in source.get("pools") or [record.pool]],
                              axis=1)
    y = predictions.y[keep]
    wrong = predictions.scores[keep].argmax(axis=1) != y
    pools = "+".join(source.get("pools") or [record.pool])
    return EmbeddingMap(label, chosen.project(features.astype(np.float64), seed), y, wrong, predictions.classes,
                        f"{source.get('model', record.model)} {pools} ({path.name})")

"""knn: L2-normalised float32 features, cosine similarity, k from K_GRID capped by the training size, uniform
or DINOv2-style softmax(similarity / 0.07) weights. One neighbour search per fold (the largest k) serves
every candidate."""

from __future__ import annotations

import numpy as np

from medprobe.probe.protocol import FittedProbe, FoldData, Probe, SearchOutcome, as_float32, register
from medprobe.results.metrics import balanced_accuracy

K_GRID = (1, 3, 5, 10, 20, 50, 100, 200)
WEIGHTINGS = ("uniform", "softmax")
KNN_TEMPERATURE = 0.07
SIMILARITY_BLOCK = 2**25  # float32 query x train similarities held at once (128 MB)


def l2_normalise(X: np.ndarray) -> np.ndarray:
    X = as_float32(X)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


class KnnIndex:
    """Cosine kNN over L2-normalised training features; `k` and `weighting` fixed for scores()."""

    def __init__(self, X: np.ndarray, y: np.ndarray, n_classes: int, k: int = 20, weighting: str = "softmax"):
        self.X = l2_normalise(X)
        self.y = y
        self.n_classes = n_classes
        self.k, self.weighting = k, weighting

    def neighbours(self, X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (similarity, label) per query, most similar first."""
        queries = l2_normalise(X)
        k = min(k, len(self.X))
        chunk = max(1, min(2048, SIMILARITY_BLOCK // len(self.X)))  # bounds the similarity block's memory
        sims, labels = [], []
        for start in range(0, len(queries), chunk):
            similarity = queries[start:start + chunk] @ self.X.T
            top = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
            top_sim = np.take_along_axis(similarity, top, axis=1)
            order = np.argsort(-top_sim, axis=1, kind="stable")
            sims.append(np.take_along_axis(top_sim, order, axis=1))
            labels.append(self.y[np.take_along_axis(top, order, axis=1)])
        return np.concatenate(sims), np.concatenate(labels)

    def vote(self, sims: np.ndarray, labels: np.ndarray, k: int, weighting: str) -> np.ndarray:
        sims, labels = sims[:, :k], labels[:, :k]
        weights = np.exp(sims / KNN_TEMPERATURE) if weighting == "softmax" else np.ones_like(sims)
        votes = np.zeros((len(sims), self.n_classes))
        for c in range(self.n_classes):
            votes[:, c] = (weights * (labels == c)).sum(axis=1)
        return votes / votes.sum(axis=1, keepdims=True)

    def scores(self, X: np.ndarray, n_classes: int) -> np.ndarray:
        sims, labels = self.neighbours(X, self.k)
        return self.vote(sims, labels, self.k, self.weighting)


@register
class Knn(Probe):
    name = "knn"
    rank = 2
    few_shot = {"k": 20, "weighting": "softmax"}
    scores_are = "neighbour vote shares"
    standardised = False

    def settings(self) -> dict:
        return {"k_grid": list(K_GRID), "weightings": list(WEIGHTINGS), "temperature": KNN_TEMPERATURE,
                "similarity": "cosine"}

    def search(self, part: tuple, data: FoldData, seed: int, *, coarse_to_fine: bool = False) -> SearchOutcome:
        index = KnnIndex(data.Xtr, data.ytr, data.n_classes)
        ks = [k for k in K_GRID if k <= len(data.Xtr)] or [len(data.Xtr)]
        sims, labels = index.neighbours(data.Xval, max(ks))
        return SearchOutcome([({"k": k, "weighting": w}, balanced_accuracy(data.yval, index.vote(sims, labels, k, w)))
                              for w in WEIGHTINGS for k in ks])

    def fit(self, params: dict, X: np.ndarray, y: np.ndarray, n_classes: int, seed: int) -> FittedProbe:
        return FittedProbe(self.name, params, KnnIndex(X, y, n_classes, params["k"], params["weighting"]))

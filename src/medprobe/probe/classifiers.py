"""The three probes. Each offers a hyperparameter search on validation data and a final fit; each
returns per-class scores that sum to 1 (logreg: probabilities; svm: a softmax of decision values;
knn: normalised neighbour votes).

- logreg: standardised features, L2 LogisticRegression, C from DINOv2's 45-value log grid 1e-6..1e5, all
  45 tried (warm-started in increasing C). `coarse_to_fine` tries every 4th value, then the 3 neighbours
  each side of the two best peaks (at most 24 fits); it is faster but does not always find the full grid's
  optimum (BENCHMARKS.md), so it is opt-in.
- svm: standardised features; linear (LinearSVC, C in 1e-4..1) and RBF (SVC, gamma="scale", C in 0.1..100). Above
  RBF_EXACT_LIMIT training samples the RBF kernel is approximated (Nystroem, 1024 components) to keep the
  cost linear in N; the record says so.
- knn: L2-normalised features, cosine similarity, k from K_GRID capped by the training size, uniform or
  DINOv2-style softmax(similarity / 0.07) weights.
Validation selection maximises balanced accuracy (robust to class imbalance); ties go to the earlier,
more regularised candidate.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC

from medprobe.results.metrics import balanced_accuracy

CLASSIFIERS = ("logreg", "svm", "knn")
LOGREG_GRID = tuple(float(c) for c in np.logspace(-6, 5, 45))
SVM_LINEAR_GRID = tuple(float(c) for c in np.logspace(-4, 0, 5))
SVM_RBF_GRID = tuple(float(c) for c in np.logspace(-1, 2, 4))
K_GRID = (1, 3, 5, 10, 20, 50, 100, 200)
KNN_TEMPERATURE = 0.07
RBF_EXACT_LIMIT = 4000
NYSTROEM_COMPONENTS = 1024
SIMILARITY_BLOCK = 2**25  # float32 query x train similarities held at once (128 MB)
# fixed hyperparameters for few-shot training, where no validation data exists
FEW_SHOT_PARAMS = {"logreg": {"C": 1.0}, "svm": {"kernel": "linear", "C": 1.0},
                   "knn": {"k": 20, "weighting": "softmax"}}


def softmax(values: np.ndarray) -> np.ndarray:
    shifted = values - values.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def decision_scores(estimator, Z: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-class scores summing to 1 for every class index (also classes a training subset lacked)."""
    if isinstance(estimator, LogisticRegression | SGDClassifier):  # SGD: log loss (probe.streaming)
        partial = estimator.predict_proba(Z)
    else:
        decision = estimator.decision_function(Z)
        if decision.ndim == 1:
            decision = np.stack([-decision, decision], axis=1) / 2
        partial = softmax(decision)
    out = np.zeros((len(Z), n_classes))
    out[:, estimator.classes_] = partial
    return out


def full_scores(model, X: np.ndarray, n_classes: int) -> np.ndarray:
    """decision_scores of a fitted pipeline (its last step sees the transformed features)."""
    return decision_scores(model[-1], model[:-1].transform(X), n_classes)


@dataclass
class FittedProbe:
    name: str
    params: dict
    model: object  # a scikit-learn estimator, or KnnIndex

    def scores(self, X: np.ndarray, n_classes: int) -> np.ndarray:
        if isinstance(self.model, KnnIndex):
            return self.model.scores(X, self.params["k"], self.params["weighting"])
        return full_scores(self.model, X, n_classes)


def _estimator(name: str, params: dict, seed: int, *, warm_start: bool = False):
    """The final classifier of a probe; search and final fit share it."""
    if name == "logreg":
        return LogisticRegression(C=params["C"], max_iter=1000, tol=1e-4, warm_start=warm_start)
    if params["kernel"] == "linear" or params.get("approximate"):
        return LinearSVC(C=params["C"], max_iter=5000, random_state=seed)
    return SVC(kernel="rbf", C=params["C"], gamma="scale")


def _nystroem(n_features: int, seed: int) -> Nystroem:
    # gamma = 1 / n_features equals SVC's gamma="scale" on standardised features (variance 1)
    return Nystroem(gamma=1.0 / n_features, n_components=NYSTROEM_COMPONENTS, random_state=seed)


def _fitted(estimator, Z: np.ndarray, y: np.ndarray):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return estimator.fit(Z, y)


def _fit_sklearn(name: str, params: dict, X: np.ndarray, y: np.ndarray, seed: int):
    steps = [StandardScaler()]
    if params.get("approximate"):
        steps.append(_nystroem(X.shape[1], seed))
    return _fitted(make_pipeline(*steps, _estimator(name, params, seed)), X, y)


class KnnIndex:
    """Cosine kNN over L2-normalised training features."""

    def __init__(self, X: np.ndarray, y: np.ndarray, n_classes: int) -> None:
        self.X = _l2_normalise(X)
        self.y = y
        self.n_classes = n_classes

    def neighbours(self, X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (similarity, label) per query, most similar first."""
        queries = _l2_normalise(X)
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

    def scores(self, X: np.ndarray, k: int, weighting: str) -> np.ndarray:
        sims, labels = self.neighbours(X, k)
        return self.vote(sims, labels, k, weighting)


def _l2_normalise(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def best(candidates: list[tuple[dict, float]]) -> tuple[dict, float]:
    """The highest validation score; ties go to the earlier, more regularised candidate."""
    best_index = max(range(len(candidates)), key=lambda i: (candidates[i][1], -i))
    return candidates[best_index]


def _best_peaks(values: list[float], positions: list[int], count: int) -> list[int]:
    """Positions of the `count` highest local maxima (a plateau counts once, at its first point): small
    validation sets give bumpy curves, and refining around two peaks finds the grid optimum more often
    than refining around one (BENCHMARKS.md)."""
    peaks = []
    for j, value in enumerate(values):
        left = values[j - 1] if j > 0 else -np.inf
        right = values[j + 1] if j + 1 < len(values) else -np.inf
        if value > left and value >= right:
            peaks.append((-value, j))
    return [positions[j] for _, j in sorted(peaks)[:count]]


def _search_logreg(Xtr, ytr, Xval, yval, n_classes, seed, coarse_to_fine: bool) -> list[tuple[dict, float]]:
    scaler = StandardScaler().fit(Xtr)
    Ztr, Zval = scaler.transform(Xtr), scaler.transform(Xval)
    # one warm-started model: each C starts from the previous solution, in increasing C order
    model = _estimator("logreg", {"C": LOGREG_GRID[0]}, seed, warm_start=True)
    tried: dict[int, float] = {}

    def evaluate(indices) -> None:
        for i in sorted(set(indices) - set(tried)):
            _fitted(model.set_params(C=LOGREG_GRID[i]), Ztr, ytr)
            tried[i] = balanced_accuracy(yval, decision_scores(model, Zval, n_classes))

    coarse = list(range(0, len(LOGREG_GRID), 4)) if coarse_to_fine else list(range(len(LOGREG_GRID)))
    evaluate(coarse)
    if coarse_to_fine:
        for centre in _best_peaks([tried[i] for i in coarse], coarse, count=2):
            evaluate(range(max(0, centre - 3), min(len(LOGREG_GRID), centre + 4)))
    return [({"C": LOGREG_GRID[i]}, tried[i]) for i in sorted(tried)]


def _search_svm(Xtr, ytr, Xval, yval, n_classes, seed, part: tuple) -> list[tuple[dict, float]]:
    """One part of the SVM grid: the linear C values, or one RBF C. Features are standardised (and, for
    approximate RBF, mapped) once per part, not once per C."""
    scaler = StandardScaler().fit(Xtr)
    Ztr, Zval = scaler.transform(Xtr), scaler.transform(Xval)
    candidates = []

    def score(params: dict, train: np.ndarray, val: np.ndarray) -> None:
        estimator = _fitted(_estimator("svm", params, seed), train, ytr)
        candidates.append((params, balanced_accuracy(yval, decision_scores(estimator, val, n_classes))))

    if part[0] == "linear":
        for c in SVM_LINEAR_GRID:
            score({"kernel": "linear", "C": c}, Ztr, Zval)
    elif len(Xtr) > RBF_EXACT_LIMIT:
        mapping = _nystroem(Xtr.shape[1], seed).fit(Ztr)  # seeded: every part maps identically
        score({"kernel": "rbf", "C": part[1], "approximate": True}, mapping.transform(Ztr), mapping.transform(Zval))
    else:
        score({"kernel": "rbf", "C": part[1]}, Ztr, Zval)
    return candidates


def _search_knn(Xtr, ytr, Xval, yval, n_classes) -> list[tuple[dict, float]]:
    index = KnnIndex(Xtr, ytr, n_classes)
    ks = [k for k in K_GRID if k <= len(Xtr)] or [len(Xtr)]
    sims, labels = index.neighbours(Xval, max(ks))
    return [({"k": k, "weighting": w}, balanced_accuracy(yval, index.vote(sims, labels, k, w)))
            for w in ("uniform", "softmax") for k in ks]


def search_parts(name: str) -> list[tuple]:
    """The independent parts of a classifier's hyperparameter search, in candidate order, so that a cluster
    can run them side by side: the SVM's linear grid and each RBF C; logreg's warm-started C path and kNN's
    shared neighbour search stay one part each."""
    if name == "svm":
        return [("linear",)] + [("rbf", c) for c in SVM_RBF_GRID]
    return [("all",)]


def search_part(name: str, part: tuple, Xtr: np.ndarray, ytr: np.ndarray, Xval: np.ndarray, yval: np.ndarray,
                n_classes: int, seed: int, *, coarse_to_fine: bool = False) -> list[tuple[dict, float]]:
    """(hyperparameters, validation balanced accuracy) of every candidate in one part of the search."""
    if name == "logreg":
        return _search_logreg(Xtr, ytr, Xval, yval, n_classes, seed, coarse_to_fine)
    if name == "svm":
        return _search_svm(Xtr, ytr, Xval, yval, n_classes, seed, part)
    return _search_knn(Xtr, ytr, Xval, yval, n_classes)


def search(name: str, Xtr: np.ndarray, ytr: np.ndarray, Xval: np.ndarray, yval: np.ndarray, n_classes: int,
           seed: int, *, coarse_to_fine: bool = False) -> tuple[dict, float]:
    """Best hyperparameters on the validation data, and their validation balanced accuracy."""
    candidates = [candidate for part in search_parts(name)
                  for candidate in search_part(name, part, Xtr, ytr, Xval, yval, n_classes, seed,
                                               coarse_to_fine=coarse_to_fine)]
    return best(candidates)


def fit(name: str, params: dict, X: np.ndarray, y: np.ndarray, n_classes: int, seed: int) -> FittedProbe:
    if name == "knn":
        return FittedProbe(name, params, KnnIndex(X, y, n_classes))
    if name == "svm" and params["kernel"] == "rbf" and len(X) > RBF_EXACT_LIMIT:
        params = {**params, "approximate": True}
    return FittedProbe(name, params, _fit_sklearn(name, params, X, y, seed))

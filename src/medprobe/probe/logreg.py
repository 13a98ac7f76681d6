"""logreg: standardised float32 features, L2 LogisticRegression (L-BFGS, multinomial), C from DINOv2's 45-value
log grid 1e-6..1e5.

The C path is warm-started, and deterministically so: the solution at grid index i always starts from the
solution at i - 1, except at every ANCHOR_STEP-th index (an anchor), which starts from the previous anchor
(index 0 starts from zero). The value at an index therefore depends on the index alone, never on which other
C values were tried or in what order: the full grid and `coarse_to_fine` (the anchors, then the three
neighbours each side of the two best anchor peaks, i.e. the two blocks around each) share every value they
both compute, so coarse-to-fine can only match or miss the full grid's optimum, never beat it.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from medprobe.probe.protocol import (
    FittedProbe,
    FoldData,
    Probe,
    SearchOutcome,
    SolverLimits,
    as_float32,
    decision_scores,
    fit_scaler,
    quiet_fit,
    register,
)
from medprobe.results.metrics import PROBABILITIES, balanced_accuracy

LOGREG_GRID = tuple(float(c) for c in np.logspace(-6, 5, 45))
ANCHOR_STEP = 4  # the coarse grid of coarse_to_fine: every 4th C
PEAKS = 2  # coarse_to_fine refines around this many anchor peaks
LIMITS = SolverLimits(tol=1e-4, max_iter=1000)


def estimator(C: float) -> LogisticRegression:
    return LogisticRegression(C=C, tol=LIMITS.tol, max_iter=LIMITS.max_iter)


def start_of(i: int) -> int | None:
    """The grid index whose solution starts the fit at index i (None: from zero)."""
    if i % ANCHOR_STEP:
        return i - 1
    return i - ANCHOR_STEP if i else None


def best_peaks(values: list[float], positions: list[int], count: int) -> list[int]:
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


class CPath:
    """The warm-started C path on one fold's standardised data, computed lazily index by index."""

    def __init__(self, Ztr: np.ndarray, ytr: np.ndarray, Zval: np.ndarray, yval: np.ndarray, n_classes: int):
        self.data = (Ztr, ytr, Zval, yval, n_classes)
        self.solutions: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.scores: dict[int, float] = {}
        self.capped = 0

    def score(self, i: int) -> float:
        if i not in self.scores:
            Ztr, ytr, Zval, yval, n_classes = self.data
            start = start_of(i)
            model = estimator(LOGREG_GRID[i])
            if start is not None:
                self.score(start)  # its solution first (recursively; each index is solved once)
                model.set_params(warm_start=True)
                model.coef_, model.intercept_ = (a.copy() for a in self.solutions[start])
            quiet_fit(model, Ztr, ytr)
            self.capped += int(np.max(model.n_iter_) >= LIMITS.max_iter)
            self.solutions[i] = (model.coef_, model.intercept_)
            self.scores[i] = balanced_accuracy(yval, decision_scores(model, Zval, n_classes))
        return self.scores[i]


@register
class LogReg(Probe):
    name = "logreg"
    rank = 0
    few_shot = {"C": 1.0}
    scores_are = PROBABILITIES

    def settings(self) -> dict:
        return {"C_grid": list(LOGREG_GRID), "solver": "lbfgs", **LIMITS.record(),
                "warm_start": f"from the previous C; every {ANCHOR_STEP}th C from the previous {ANCHOR_STEP}th"}

    def search(self, part: tuple, data: FoldData, seed: int, *, coarse_to_fine: bool = False) -> SearchOutcome:
        Ztr, Zval = data.standardised()
        path = CPath(Ztr, data.ytr, Zval, data.yval, data.n_classes)
        if coarse_to_fine:
            anchors = list(range(0, len(LOGREG_GRID), ANCHOR_STEP))
            for centre in best_peaks([path.score(i) for i in anchors], anchors, count=PEAKS):
                for i in range(max(0, centre - ANCHOR_STEP + 1), min(len(LOGREG_GRID), centre + ANCHOR_STEP)):
                    path.score(i)
        else:
            for i in range(len(LOGREG_GRID)):
                path.score(i)
        candidates = [({"C": LOGREG_GRID[i]}, path.scores[i]) for i in sorted(path.scores)]
        return SearchOutcome(candidates, fits=len(path.scores), capped=path.capped)

    def fit(self, params: dict, X: np.ndarray, y: np.ndarray, n_classes: int, seed: int) -> FittedProbe:
        scaler = fit_scaler(X)
        model = quiet_fit(estimator(params["C"]), as_float32(scaler.transform(X)), y)
        return FittedProbe(self.name, params, make_pipeline(scaler, model),
                           capped=bool(np.max(model.n_iter_) >= LIMITS.max_iter))

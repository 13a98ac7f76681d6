"""The probe protocol. A probe is one class registered by name (`@register`): its hyperparameter grid, the
independent parts its search splits into (so folds x parts run side by side through joblib), the search of
one part on one fold, the final fit, and fixed few-shot hyperparameters. Adding a probe is one class in its
own module, imported by probe/classifiers.py, plus its test.

Every search returns its candidates with their validation balanced accuracy and how many solver fits ran
and how many stopped at their iteration cap before their tolerance; the runner records both and warns
when a cap was hit."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import StandardScaler

from medprobe.results.metrics import softmax


@dataclass(frozen=True)
class SolverLimits:
    """A solver's stopping rule: tolerance, and the iteration cap after which it stops unconverged."""

    tol: float
    max_iter: int

    def record(self) -> dict:
        return {"tol": self.tol, "max_iter": self.max_iter}


@dataclass
class SearchOutcome:
    """One search part on one fold: (hyperparameters, validation balanced accuracy) per candidate, in grid
    order, and the solver fits it ran, of which `capped` stopped at their iteration cap."""

    candidates: list[tuple[dict, float]]
    fits: int = 0
    capped: int = 0


@dataclass
class FoldData:
    """One fold's search data. The standardisation (fitted on the training part only) is computed once per
    fold, in the parent, and shared by every standardised probe and search part of that fold."""

    Xtr: np.ndarray
    ytr: np.ndarray
    Xval: np.ndarray
    yval: np.ndarray
    n_classes: int
    scaler: StandardScaler | None = None

    def standardised(self) -> tuple[np.ndarray, np.ndarray]:
        scaler = self.scaler if self.scaler is not None else fit_scaler(self.Xtr)
        return as_float32(scaler.transform(self.Xtr)), as_float32(scaler.transform(self.Xval))


def fit_scaler(X: np.ndarray) -> StandardScaler:
    return StandardScaler().fit(as_float32(X))


def as_float32(X: np.ndarray) -> np.ndarray:
    return np.asarray(X, dtype=np.float32)


def quiet_fit(estimator, Z: np.ndarray, y: np.ndarray):
    """Fits without scikit-learn's ConvergenceWarning on the terminal: probes count capped fits themselves."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return estimator.fit(Z, y)


def decision_scores(estimator, Z: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-class scores summing to 1 for every class index (also classes a training subset lacked):
    probabilities where the estimator has them, else a softmax of decision values."""
    if hasattr(estimator, "predict_proba"):  # logistic models (SVC has it only with probability=True)
        partial = estimator.predict_proba(Z)
    else:
        decision = estimator.decision_function(Z)
        if decision.ndim == 1:
            decision = np.stack([-decision, decision], axis=1) / 2
        partial = softmax(decision)
    out = np.zeros((len(Z), n_classes))
    out[:, estimator.classes_] = partial
    return out


def best(candidates: list[tuple[dict, float]]) -> tuple[dict, float]:
    """The highest validation score. Ties go to the centre of the longest run of tied neighbours in grid
    order (the earlier run, and of two centres the earlier, more regularised one): when a small validation
    set saturates, the regularised end of the plateau is a near-constant model whose argmax hangs on tiny
    margins (logreg at C = 1e-6 scored 1.0 on validation and 0.575 on test in the demo)."""
    top = max(score for _, score in candidates)
    runs: list[list[int]] = []
    for i, (_, score) in enumerate(candidates):
        if score != top:
            continue
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    longest = max(runs, key=len)  # the first of equally long runs
    return candidates[longest[(len(longest) - 1) // 2]]


@dataclass
class FittedProbe:
    name: str
    params: dict
    model: object  # a scikit-learn pipeline, or a probe's own index (kNN) with a scores(X, n_classes) method
    capped: bool = False  # its solver stopped at the iteration cap

    def scores(self, X: np.ndarray, n_classes: int) -> np.ndarray:
        if hasattr(self.model, "steps"):
            return decision_scores(self.model[-1], as_float32(self.model[:-1].transform(X)), n_classes)
        return self.model.scores(X, n_classes)


class Probe:
    """The base of every probe; subclasses set the class attributes and implement the four methods."""

    name: ClassVar[str]
    few_shot: ClassVar[dict]  # fixed hyperparameters where no validation data exists (--shots)
    standardised: ClassVar[bool] = True  # its search reads FoldData.standardised()
    rank: ClassVar[int] = 100  # position in listings and in --clf all
    # metrics.PROBABILITIES (then calibration is measured), or what the scores are instead
    scores_are: ClassVar[str] = "the probe's own scores"

    def settings(self) -> dict:
        """Grids and solver limits, for the run record."""
        raise NotImplementedError

    def parts(self, n_train: int, n_features: int, n_classes: int) -> list[tuple]:
        """The independent parts of the search, in candidate order; where it is known, the costliest first (the
        runner dispatches every fold's first part before any fold's second)."""
        return [("all",)]

    def search(self, part: tuple, data: FoldData, seed: int, *, coarse_to_fine: bool = False) -> SearchOutcome:
        raise NotImplementedError

    def fit(self, params: dict, X: np.ndarray, y: np.ndarray, n_classes: int, seed: int) -> FittedProbe:
        raise NotImplementedError


PROBES: dict[str, type[Probe]] = {}  # filled by @register; probe/classifiers.py imports every probe module


def register(cls: type[Probe]) -> type[Probe]:
    PROBES[cls.name] = cls
    return cls

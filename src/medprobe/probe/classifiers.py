"""The probes, by name: logreg (probe/logreg.py), svm (probe/svm.py), knn (probe/knn.py), each one class
registered under probe/protocol.py's protocol. Each returns per-class scores that sum to 1 (logreg:
probabilities; svm: a softmax of decision values; knn: normalised neighbour votes). Validation selection
maximises balanced accuracy (robust to class imbalance); ties go to the centre of the tied plateau
(protocol.best).
"""

from __future__ import annotations

import numpy as np

from medprobe.errors import MedprobeError
from medprobe.probe import knn, logreg, svm  # noqa: F401  (each registers its probe)
from medprobe.probe.protocol import PROBES, FittedProbe, FoldData, Probe, SearchOutcome, best


def probe_names() -> tuple[str, ...]:
    return tuple(sorted(PROBES, key=lambda name: PROBES[name].rank))


def get_probe(name: str) -> Probe:
    if name not in PROBES:
        raise MedprobeError(f"--clf {name!r} is not one of {', '.join(probe_names())}, all")
    return PROBES[name]()


CLASSIFIERS = probe_names()


def search(name: str, Xtr: np.ndarray, ytr: np.ndarray, Xval: np.ndarray, yval: np.ndarray, n_classes: int,
           seed: int, *, coarse_to_fine: bool = False) -> tuple[dict, float]:
    """Best hyperparameters on the validation data, and their validation balanced accuracy (every part of
    the search in one process; the runner spreads the parts over workers)."""
    probe = get_probe(name)
    data = FoldData(Xtr, ytr, Xval, yval, n_classes)
    outcomes: list[SearchOutcome] = [probe.search(part, data, seed, coarse_to_fine=coarse_to_fine)
                                     for part in probe.parts(*Xtr.shape, n_classes)]
    return best([candidate for outcome in outcomes for candidate in outcome.candidates])


def fit(name: str, params: dict, X: np.ndarray, y: np.ndarray, n_classes: int, seed: int) -> FittedProbe:
    return get_probe(name).fit(params, X, y, n_classes, seed)

"""A saved linear probe as per-class evidence that is affine in the features, so that applied to every
position of a spatial feature map it averages to the evidence on the pooled (mean) embedding.

- logreg, and the squared-hinge linear SVM (standardisation, then coef_): binary probes score the second
  class (the decision value; the first class its negative); multiclass ones a class's decision value
  relative to the mean over classes (what softmax sees).
- The libsvm linear SVM (standardisation, the linear kernel against the training rows, SVC(kernel=
  "precomputed")): each one-vs-one pair's decision is linear in the standardised features, with weights
  the pair's dual coefficients times its support vectors; a class's evidence is the sum of its pairs'
  decisions turned towards it (binary: scikit-learn's decision value, as above). The SVC's own multiclass
  decision_function counts votes, which is not linear, so its map is of these pairwise margins.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
from sklearn.metrics.pairwise import linear_kernel

from medprobe.errors import MedprobeError


@dataclass(frozen=True)
class LinearEvidence:
    """evidence(X)[:, t] = standardise(X) @ weights[t] + offsets[t]."""

    mean: np.ndarray  # (d,) the probe's standardisation
    scale: np.ndarray  # (d,)
    weights: np.ndarray  # (classes, d), in standardised units
    offsets: np.ndarray  # (classes,)

    def evidence(self, X: np.ndarray) -> np.ndarray:
        return ((X - self.mean) / self.scale) @ self.weights.T + self.offsets


def _from_coefficients(coef: np.ndarray, intercept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(coef) == 1:  # binary: the decision value scores the second class
        return np.vstack([-coef[0], coef[0]]), np.array([-intercept[0], intercept[0]])
    return coef - coef.mean(0), intercept - intercept.mean()


def _from_one_vs_one(svc, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """libsvm's layout: pair (i, j), i < j, takes dual_coef_[j - 1] over class i's support vectors and
    dual_coef_[i] over class j's; a positive decision votes for i (multiclass)."""
    n_classes = len(svc.classes_)
    starts = np.concatenate([[0], np.cumsum(svc.n_support_)])
    vectors = reference[svc.support_]
    weights, offsets = np.zeros((n_classes, reference.shape[1])), np.zeros(n_classes)
    for pair, (i, j) in enumerate(combinations(range(n_classes), 2)):
        rows_i, rows_j = slice(starts[i], starts[i + 1]), slice(starts[j], starts[j + 1])
        w = svc.dual_coef_[j - 1, rows_i] @ vectors[rows_i] + svc.dual_coef_[i, rows_j] @ vectors[rows_j]
        weights[i] += w
        weights[j] -= w
        offsets[i] += svc.intercept_[pair]
        offsets[j] -= svc.intercept_[pair]
    if n_classes == 2:  # scikit-learn flips a binary SVC's dual_coef_ and intercept_: positive votes for class 1
        return -weights, -offsets
    return weights, offsets


def linear_evidence(fitted, record_path: Path) -> LinearEvidence:
    """The saved fold probe as LinearEvidence; an RBF SVM or a kNN is refused with the reason."""
    pipeline = getattr(fitted, "model", None)
    steps = list(pipeline) if hasattr(pipeline, "__getitem__") else []
    scaler, final = (steps[0], steps[-1]) if steps else (None, None)
    if len(steps) == 2 and hasattr(final, "coef_"):
        weights, offsets = _from_coefficients(np.asarray(final.coef_, float), np.asarray(final.intercept_, float))
    elif (len(steps) == 3 and getattr(steps[1], "func", None) is linear_kernel
          and getattr(final, "kernel", None) == "precomputed"):
        weights, offsets = _from_one_vs_one(final, np.asarray(steps[1].kw_args["Y"], float))
    else:
        raise MedprobeError(f"{record_path}: its probe is not linear (an RBF SVM or kNN); explain a logreg or linear "
                            "SVM record")
    return LinearEvidence(np.asarray(scaler.mean_, float), np.asarray(scaler.scale_, float), weights, offsets)

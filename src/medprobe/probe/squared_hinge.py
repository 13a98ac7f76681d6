"""The linear SVM above the exact-kernel limit: liblinear's L2-regularised squared-hinge problem (LinearSVC's,
one-vs-rest, the intercept a regularised feature of value 1), solved by trust-region Newton-CG on dense float32
products.

liblinear stores dense rows as sparse (index, value) pairs and solves one class after another; on 6,400 x 1,024
standardised features with 10 classes its primal took 4.5 s at C = 1e-4 and 171 s at C = 1 (581 iterations),
where these dense products fit all classes at once (BENCHMARKS.md; the liblinear timings were ad hoc). Newton
steps with the generalised Hessian (I + 2C X_A^T X_A over the samples A with positive slack, as in liblinear's
own primal solver) replaced L-BFGS, whose line searches at large C ran into float32 noise: hundreds of
iterations per fit where Newton takes tens (BENCHMARKS.md, `--profile-fold`). The objective per class is
1/2 |w|^2 + C sum_i max(0, 1 - y_i w.x_i)^2, the same as LinearSVC's: the result is a LinearSVC whose coef_ and
intercept_ are this solution, so saved probes stay plain scikit-learn pipelines.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from sklearn.svm import LinearSVC


def _signs(y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """+1/-1 per sample and one-vs-rest problem (one problem, for classes[1], when there are two classes)."""
    signs = np.where(y[:, None] == classes[None, :], 1.0, -1.0).astype(np.float32)
    return signs[:, 1:] if len(classes) == 2 else signs


class _Problem:
    """Value, gradient and generalised-Hessian products of the squared-hinge objective for all classes at once."""

    def __init__(self, rows: np.ndarray, signs: np.ndarray, C: float):
        self.rows, self.signs, self.C = rows, signs, C
        self.shape = (rows.shape[1], signs.shape[1])
        self._active_at: tuple[bytes, np.ndarray] | None = None

    def _slack(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        weights = flat.reshape(self.shape).astype(np.float32)
        return weights, np.maximum(0, 1 - self.signs * (self.rows @ weights))

    def value_and_gradient(self, flat: np.ndarray) -> tuple[float, np.ndarray]:
        weights, slack = self._slack(flat)
        value = 0.5 * float(np.square(weights, dtype=np.float64).sum())
        value += self.C * float(np.square(slack, dtype=np.float64).sum())
        gradient = weights - (2 * self.C) * (self.rows.T @ (self.signs * slack))
        return value, gradient.astype(np.float64).ravel()

    def hessian_product(self, flat: np.ndarray, direction: np.ndarray) -> np.ndarray:
        # The active set belongs to the point asked about: the optimiser may have evaluated a rejected trial
        # point since, so it is recomputed whenever the point changes, not taken from the last gradient.
        key = flat.tobytes()
        if self._active_at is None or self._active_at[0] != key:
            self._active_at = (key, (self._slack(flat)[1] > 0).astype(np.float32))
        step = direction.reshape(self.shape).astype(np.float32)
        curvature = self.rows.T @ (self._active_at[1] * (self.rows @ step))
        return (step + (2 * self.C) * curvature).astype(np.float64).ravel()


def fit_squared_hinge(X: np.ndarray, y: np.ndarray, C: float, *, tol: float, max_iter: int,
                      start: LinearSVC | None = None) -> LinearSVC:
    """A fitted LinearSVC(C) (squared hinge, L2, one-vs-rest, intercept_scaling 1). `start`: a solution to start
    from (e.g. the previous C's). Stops when the gradient's norm is `tol` times its norm at zero."""
    classes = np.unique(y)
    if len(classes) < 2:  # as LinearSVC.fit refuses it
        raise ValueError(f"a squared-hinge SVM needs samples of at least 2 classes; the data hold only {classes}")
    rows = np.hstack([np.asarray(X, dtype=np.float32), np.ones((len(X), 1), dtype=np.float32)])
    problem = _Problem(rows, _signs(y, classes), C)
    at_zero = np.linalg.norm(problem.value_and_gradient(np.zeros(problem.shape).ravel())[1])
    initial = np.zeros(problem.shape) if start is None else np.vstack([start.coef_.T, start.intercept_[None, :]])
    solution = minimize(problem.value_and_gradient, initial.ravel(), jac=True, hessp=problem.hessian_product,
                        method="trust-ncg", options={"maxiter": max_iter, "gtol": tol * at_zero})
    weights = solution.x.reshape(problem.shape)
    model = LinearSVC(C=C, tol=tol, max_iter=max_iter)
    model.classes_ = classes
    model.coef_, model.intercept_ = weights[:-1].T.copy(), weights[-1].copy()
    model.n_features_in_ = X.shape[1]
    model.n_iter_ = int(solution.nit)
    return model

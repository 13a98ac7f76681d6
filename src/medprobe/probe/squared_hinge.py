"""The linear SVM above the exact-kernel limit: liblinear's L2-regularised squared-hinge problem (LinearSVC's,
one-vs-rest, the intercept a regularised feature of value 1), solved by L-BFGS on dense float32 products.

liblinear stores dense rows as sparse (index, value) pairs and solves one class after another; on 6,400 x 1,024
standardised features with 10 classes its primal took 4.5 s at C = 1e-4 and 171 s at C = 1 (581 iterations),
where these dense products fit all classes at once (BENCHMARKS.md; the liblinear timings were ad hoc). The
objective per class is 1/2 |w|^2 + C sum_i max(0, 1 - y_i w.x_i)^2, the same as LinearSVC's: the result is a
LinearSVC whose coef_ and intercept_ are this solution, so saved probes stay plain scikit-learn pipelines.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from sklearn.svm import LinearSVC


def _signs(y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """+1/-1 per sample and one-vs-rest problem (one problem, for classes[1], when there are two classes)."""
    signs = np.where(y[:, None] == classes[None, :], 1.0, -1.0).astype(np.float32)
    return signs[:, 1:] if len(classes) == 2 else signs


def fit_squared_hinge(X: np.ndarray, y: np.ndarray, C: float, *, tol: float, max_iter: int,
                      start: LinearSVC | None = None) -> LinearSVC:
    """A fitted LinearSVC(C) (squared hinge, L2, one-vs-rest, intercept_scaling 1). `start`: a solution to start
    from (e.g. the previous C's). Stops when the largest gradient entry is `tol` times the one at zero."""
    classes = np.unique(y)
    if len(classes) < 2:  # as LinearSVC.fit refuses it
        raise ValueError(f"a squared-hinge SVM needs samples of at least 2 classes; the data hold only {classes}")
    signs = _signs(y, classes)
    rows = np.hstack([np.asarray(X, dtype=np.float32), np.ones((len(X), 1), dtype=np.float32)])
    shape = (rows.shape[1], signs.shape[1])

    def objective(flat: np.ndarray) -> tuple[float, np.ndarray]:
        weights = flat.reshape(shape).astype(np.float32)
        slack = np.maximum(0, 1 - signs * (rows @ weights))
        value = 0.5 * float(np.square(weights, dtype=np.float64).sum())
        value += C * float(np.square(slack, dtype=np.float64).sum())
        gradient = weights - (2 * C) * (rows.T @ (signs * slack))
        return value, gradient.astype(np.float64).ravel()

    at_zero = np.abs(objective(np.zeros(shape).ravel())[1]).max()
    initial = np.zeros(shape) if start is None else np.vstack([start.coef_.T, start.intercept_[None, :]])
    solution = minimize(objective, initial.ravel(), jac=True, method="L-BFGS-B",
                        options={"maxiter": max_iter, "gtol": tol * at_zero, "ftol": 0.0})
    weights = solution.x.reshape(shape)
    model = LinearSVC(C=C, tol=tol, max_iter=max_iter)
    model.classes_ = classes
    model.coef_, model.intercept_ = weights[:-1].T.copy(), weights[-1].copy()
    model.n_features_in_ = X.shape[1]
    model.n_iter_ = int(solution.nit)
    return model

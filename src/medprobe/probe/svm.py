"""svm: standardised float32 features; linear (C in 1e-4..1) and RBF (gamma="scale", C in 0.1..100).

- Up to KERNEL_LIMIT training samples, both are libsvm SVCs (hinge loss, one-vs-one) on kernel matrices
  computed once per fold and family from float32 products, block by block (`kernels`): the linear kernel is
  the Gram matrix itself, the RBF kernel follows from it, and every C of the family's grid reuses it
  (SVC(kernel="precomputed")), the rows grouped by class (`by_class`). The final fit trains the same way; its
  pipeline maps new rows by a kernel against the training rows (scikit-learn's linear_kernel, or
  `kernel_against` for the RBF, in a FunctionTransformer), then SVC(kernel="precomputed"), a pipeline that predicts as
  SVC(kernel="linear" | "rbf", gamma="scale") does; libsvm's own kernel evaluation took 37 s to fit and 13 s
  to predict 2,000 samples at 8,000 x 1024. One-vs-one:
  at 10 classes its 45 pairwise problems each hold a fifth of the data, cheaper than 10 full-size
  one-vs-rest problems; on the digits features this made the linear grid 30x faster than liblinear.
- Above it, the linear SVM is liblinear's LinearSVC problem (squared hinge, one-vs-rest), solved by
  trust-region Newton-CG on dense float32 products and warm-started along the C grid (`squared_hinge`:
  liblinear itself took 171 s for one fit at C = 1 on 6,400 x 1,024 features with 10 classes, and 384 s for
  the whole SVM on 20,000 x 768),
  and the RBF kernel is approximated (Nystroem, 1024 components, seeded), mapped once per fold, and fed to
  the same solver; the records say `solver` and `approximate`.
- A binary linear SVM with at least PRIMAL_SAMPLES_PER_FEATURE training samples per feature takes that
  primal path below the limit too (`solver_for`: the primal/dual choice by n against d).
The search of a fold is two parts, one per family (linear, RBF; each computes its kernel from its own Gram
matrix), so ten parts of five folds share two cores evenly. Along each exact grid, once a C's solution has
no dual multiplier at its bound C, every larger C has the same solution (no constraint it relaxes is
active): those candidates take its score without a fit and say `same_as_C` (on 10k x 1024 features with
10 classes, C = 1 repeats C = 0.1's hard-margin solution).
"""

from __future__ import annotations

import numpy as np
from sklearn.kernel_approximation import Nystroem
from sklearn.metrics.pairwise import linear_kernel
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.svm import SVC, LinearSVC

from medprobe.errors import MedprobeError
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
from medprobe.probe.squared_hinge import fit_squared_hinge
from medprobe.results.metrics import balanced_accuracy

LIBSVM = "libsvm"  # records' solver names: up to KERNEL_LIMIT training samples, and above it
SQUARED_HINGE = "squared-hinge-newton"

SVM_LINEAR_GRID = tuple(float(c) for c in np.logspace(-4, 0, 5))
SVM_RBF_GRID = tuple(float(c) for c in np.logspace(-1, 2, 4))
KERNEL_LIMIT = 8000  # training samples up to which the SVMs use exact kernel matrices (512 MB of float64 each)
KERNEL_BLOCK = 512  # rows per block of a kernel matrix: the block's float32 product is 16 MB at the limit
NYSTROEM_COMPONENTS = 1024
PRIMAL_SAMPLES_PER_FEATURE = 3  # binary linear SVMs from this many training samples per feature: the primal
LINEAR_LIMITS = SolverLimits(tol=1e-6, max_iter=1000)  # tol: of the gradient's norm at zero
KERNEL_LIMITS = SolverLimits(tol=1e-3, max_iter=100_000)


def solver_for(kernel: str, n_train: int, n_features: int, n_classes: int) -> str:
    """libsvm's dual on exact kernels up to KERNEL_LIMIT training samples, except a binary linear SVM with at
    least PRIMAL_SAMPLES_PER_FEATURE samples per feature: its primal (the squared hinge by Newton) is then the
    cheaper problem, and libsvm's dual can stop at its iteration cap (`benchmarks/probe_speed.py --primal-dual`,
    one fold's grid: 10,000 x 384, 16.7 per feature, 7.45 s against 0.24 s; with fewer samples per feature the
    dual wins, digits even/odd at 0.9 per feature 0.08 s against 1.83 s). With more classes one-vs-one keeps
    libsvm ahead (10,000 x 1,024 x 10: 8.0 s against 37 s)."""
    if n_train > KERNEL_LIMIT:
        return SQUARED_HINGE
    primal = kernel == "linear" and n_classes == 2 and n_train >= PRIMAL_SAMPLES_PER_FEATURE * n_features
    return SQUARED_HINGE if primal else LIBSVM


def linear_svm(C: float, Z: np.ndarray, y: np.ndarray, start: LinearSVC | None = None) -> LinearSVC:
    return fit_squared_hinge(Z, y, C, tol=LINEAR_LIMITS.tol, max_iter=LINEAR_LIMITS.max_iter, start=start)


def kernel_svc(C: float, kernel: str = "rbf") -> SVC:
    return SVC(kernel=kernel, C=C, gamma="scale", tol=KERNEL_LIMITS.tol, max_iter=KERNEL_LIMITS.max_iter)


def nystroem(n_samples: int, n_features: int, seed: int) -> Nystroem:
    # gamma = 1 / n_features equals SVC's gamma="scale" on standardised features (variance 1)
    return Nystroem(gamma=1.0 / n_features, n_components=min(NYSTROEM_COMPONENTS, n_samples), random_state=seed)


def at_bound(estimator: SVC, C: float) -> bool:
    """Whether any dual multiplier sits at its upper bound C. If none does, no constraint a larger C relaxes is
    active: the same solution stays optimal for every larger C (the dual problem is convex)."""
    return bool(np.any(np.abs(estimator.dual_coef_) >= C * (1 - 1e-9)))


def capped(estimator) -> bool:
    limit = KERNEL_LIMITS.max_iter if isinstance(estimator, SVC) else LINEAR_LIMITS.max_iter
    return bool(np.max(estimator.n_iter_) >= limit)


def scale_gamma(Z: np.ndarray) -> float:
    """SVC's gamma="scale"."""
    return 1.0 / (Z.shape[1] * Z.var())


def kernel_map(kernel: str, reference: np.ndarray) -> FunctionTransformer:
    """X -> its kernel against the training rows, the input SVC(kernel="precomputed") expects: scikit-learn's
    linear_kernel (a float32 product; explain/linear.py reads its weights), and for the RBF `kernel_against`
    (scikit-learn's rbf_kernel computes float64 products: 1.9x slower for 2,000 x 8,000 x 1,024 features,
    `benchmarks/probe_speed.py --kernel-timing`)."""
    if kernel == "linear":
        return FunctionTransformer(linear_kernel, kw_args={"Y": reference})
    return FunctionTransformer(kernel_against, kw_args={"Ztr": reference, "kernel": "rbf"})


def kernels(Ztr: np.ndarray, kernel: str, *others: np.ndarray) -> list[np.ndarray]:
    """The train x train `kernel` matrix (linear or RBF), then each of `others` x train, as float64 for libsvm.
    Computed KERNEL_BLOCK rows at a time: each block's float32 product (on and right of the diagonal only, for
    the symmetric train matrix, mirrored below it) is turned into the kernel in place while it is in cache and
    written once into the float64 matrix. The RBF's gamma is SVC's gamma="scale", its exponential taken in
    float32 (the kernel values differ from float64 ones by float32 rounding, below libsvm's tolerance).
    In a fresh process at 8,000 x 1,024 (as a task computes it) this was 1.8x (linear) and 1.5x (RBF) faster
    than one whole-matrix product, then the kernel, then a float64 copy (`benchmarks/probe_speed.py
    --kernel-timing`)."""
    Ztr = as_float32(Ztr)
    n = len(Ztr)
    transform = _kernel_transform(kernel, Ztr)
    train = np.empty((n, n))
    for start in range(0, n, KERNEL_BLOCK):
        stop = min(start + KERNEL_BLOCK, n)
        block = transform(Ztr[start:stop] @ Ztr[start:].T, slice(start, stop), slice(start, n))
        train[start:stop, start:] = block
        train[stop:, start:stop] = block[:, stop - start:].T
        diagonal = train[start:stop, start:stop]  # its product's own lower triangle may differ in rounding
        below = np.tril_indices(stop - start, -1)
        diagonal[below] = diagonal.T[below]
    if kernel == "rbf":
        np.fill_diagonal(train, 1.0)  # a row's distance to itself is 0, whatever the rounding of its norm
    return [train, *(kernel_against(Z, Ztr, kernel) for Z in others)]


def kernel_against(Z: np.ndarray, Ztr: np.ndarray, kernel: str) -> np.ndarray:
    """Rows of Z against the training rows Ztr: float64, KERNEL_BLOCK rows of Z at a time."""
    Z, Ztr = as_float32(Z), as_float32(Ztr)
    transform = _kernel_transform(kernel, Ztr, Z)
    matrix = np.empty((len(Z), len(Ztr)))
    for start in range(0, len(Z), KERNEL_BLOCK):
        stop = min(start + KERNEL_BLOCK, len(Z))
        matrix[start:stop] = transform(Z[start:stop] @ Ztr.T, slice(start, stop), slice(None))
    return matrix


def _kernel_transform(kernel: str, Ztr: np.ndarray, Z: np.ndarray | None = None):
    """(products of rows of Z (default Ztr) and columns of Ztr, their row slice, column slice) -> the kernel
    values, in place."""
    if kernel == "linear":
        return lambda products, rows, columns: products
    if kernel != "rbf":
        raise MedprobeError(f"svm kernel {kernel!r} is not one of linear, rbf")
    gamma = np.float32(scale_gamma(Ztr))
    norms_tr = np.einsum("ij,ij->i", Ztr, Ztr)
    norms = norms_tr if Z is None else np.einsum("ij,ij->i", Z, Z)

    def rbf(products: np.ndarray, rows: slice, columns: slice) -> np.ndarray:
        products *= -2  # the products become squared distances, then the kernel, without temporaries
        products += norms[rows, None]
        products += norms_tr[None, columns]
        np.maximum(products, 0, out=products)
        products *= -gamma
        return np.exp(products, out=products)

    return rbf


def by_class(Z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows grouped by class (stable). libsvm's one-vs-one pairs read their kernel entries by training-row
    index; with each class's rows together, a pair's entries are two contiguous blocks of every kernel row
    (the RBF grid at 6,400 x 1,024 with 10 classes: 2.9 -> 2.1 s)."""
    order = np.argsort(y, kind="stable")
    return Z[order], y[order]


@register
class Svm(Probe):
    name = "svm"
    rank = 1
    few_shot = {"kernel": "linear", "C": 1.0}
    scores_are = "a softmax of SVM decision values"

    def settings(self) -> dict:
        return {"linear_C_grid": list(SVM_LINEAR_GRID), "rbf_C_grid": list(SVM_RBF_GRID),
                "libsvm": {"use": f"up to {KERNEL_LIMIT} training samples, one-vs-one, precomputed kernels",
                           **KERNEL_LIMITS.record()},
                "squared_hinge": {"use": "above that, and for a binary linear SVM from "
                                          f"{PRIMAL_SAMPLES_PER_FEATURE} training samples per feature: "
                                          "LinearSVC's problem (squared hinge, one-vs-rest) by "
                                          "trust-region Newton-CG, warm-started along C",
                                  **LINEAR_LIMITS.record()},
                "nystroem_components": NYSTROEM_COMPONENTS}

    def parts(self, n_train: int, n_features: int, n_classes: int) -> list[tuple]:
        """Each family's grid is a part of its own, run side by side with the other folds' parts (two per fold
        keep both cores busy where five folds would leave one idle for the last)."""
        linear = ("kernel", "linear") if solver_for("linear", n_train, n_features, n_classes) == LIBSVM else ("linear",)
        return [linear, ("kernel", "rbf") if n_train <= KERNEL_LIMIT else ("nystroem",)]

    def search(self, part: tuple, data: FoldData, seed: int, *, coarse_to_fine: bool = False) -> SearchOutcome:
        Ztr, Zval = data.standardised()
        outcome = SearchOutcome([])

        def score(params: dict, estimator, val: np.ndarray):
            """Counts a fitted candidate and records its validation score."""
            outcome.fits += 1
            outcome.capped += capped(estimator)
            outcome.candidates.append((params, balanced_accuracy(data.yval, decision_scores(estimator, val,
                                                                                             data.n_classes))))
            return estimator

        if part[0] == "kernel":
            kernel = part[1]
            Ztr, ytr = by_class(Ztr, data.ytr)
            matrices = kernels(Ztr, kernel, Zval)
            saturated = None  # the first C whose solution has no multiplier at its bound
            for c in SVM_LINEAR_GRID if kernel == "linear" else SVM_RBF_GRID:
                params = {"kernel": kernel, "C": c, "solver": LIBSVM}
                if saturated is not None:  # a larger C changes nothing: that solution is optimal here too
                    outcome.candidates.append((params | {"same_as_C": saturated[0]}, saturated[1]))
                    continue
                fitted = score(params, quiet_fit(kernel_svc(c, "precomputed"), matrices[0], ytr), matrices[1])
                if not at_bound(fitted, c):
                    saturated = (c, outcome.candidates[-1][1])
        else:
            if part[0] == "linear":
                grid, extra, train, val = SVM_LINEAR_GRID, {"kernel": "linear"}, Ztr, Zval
            else:
                mapping = nystroem(*Ztr.shape, seed).fit(Ztr)  # seeded: every fold and refit map alike
                train, val = as_float32(mapping.transform(Ztr)), as_float32(mapping.transform(Zval))
                grid, extra = SVM_RBF_GRID, {"kernel": "rbf", "approximate": True}
            previous = None  # each C starts from the previous one's solution (the grid always runs in order)
            for c in grid:
                previous = score(extra | {"C": c, "solver": SQUARED_HINGE}, linear_svm(c, train, data.ytr, previous),
                                 val)
        return outcome

    def fit(self, params: dict, X: np.ndarray, y: np.ndarray, n_classes: int, seed: int) -> FittedProbe:
        """The search's formulation (params["solver"]); without one (few-shot), the one its size implies."""
        scaler = fit_scaler(X)
        Z = as_float32(scaler.transform(X))
        steps = [scaler]
        solver = params.get("solver", solver_for(params["kernel"], *X.shape, n_classes))
        if solver not in (LIBSVM, SQUARED_HINGE):
            raise MedprobeError(f"svm solver {solver!r} is not one of {LIBSVM}, {SQUARED_HINGE}")
        if solver == LIBSVM:
            Z, y = by_class(Z, y)
            # the pipeline maps new rows by scikit-learn's kernel; training uses the same kernel from one float32
            # product (as the search does), several times faster than the pipeline's own transform
            steps.append(kernel_map(params["kernel"], Z).fit(Z))
            model = kernel_svc(params["C"], "precomputed")
            quiet_fit(model, kernels(Z, params["kernel"])[0], y)
        else:
            if params["kernel"] == "rbf":
                steps.append(nystroem(*X.shape, seed).fit(Z))
                Z = as_float32(steps[-1].transform(Z))
            model = linear_svm(params["C"], Z, y)
        return FittedProbe(self.name, params, make_pipeline(*steps, model), capped=capped(model))

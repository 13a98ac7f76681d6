"""Out-of-core logistic regression, for feature caches larger than memory (`medprobe probe --out-of-core`,
and automatically when the float32 feature matrix would exceed --memory-fraction of the available memory).

The features are read from the HDF5 caches BLOCK_ROWS rows at a time and never held whole:
- standardisation from streamed means and variances (StandardScaler.partial_fit), one pass;
- SGDClassifier(loss="log_loss"), L2, with partial_fit over SGD_EPOCHS passes, blocks in a seeded random
  order and rows shuffled within each; one model per alpha in SGD_ALPHAS, all fed the same blocks, so a
  pass is one read of the cache whatever the grid;
- alpha chosen on the validation split (balanced accuracy, ties to the centre of the tied plateau), refit on
  train+val with its own scaler, test predictions streamed as well.
Memory holds one block, the models, and per-sample labels and scores, whatever the number of samples.
The price is accuracy: SGD stops after a fixed number of passes over a 7-value grid, where the in-memory
logreg solves to convergence for 45 C values; BENCHMARKS.md measures the gap. The records' method is
`logreg-sgd`, so the two are never mixed up.
"""

from __future__ import annotations

import os

import numpy as np
from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medprobe.data.splits import Fold
from medprobe.probe.features import FeatureStream
from medprobe.probe.protocol import FittedProbe, best, decision_scores
from medprobe.results.metrics import PROBABILITIES, balanced_accuracy

METHOD = "logreg-sgd"
SCORES_ARE = PROBABILITIES  # SGD on the log loss: predict_proba
BLOCK_ROWS = 8192  # a multiple of the cache's 256-row chunks: 12 MB of float32 at 384 features
SGD_ALPHAS = tuple(float(a) for a in np.logspace(0, -6, 7))  # most regularised first
SGD_EPOCHS = 5


def available_memory() -> int:
    """Bytes of memory available to a new allocation (Linux MemAvailable; else all physical memory)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _model(alpha: float, seed: int) -> SGDClassifier:
    return SGDClassifier(loss="log_loss", penalty="l2", alpha=alpha, random_state=seed)


def _scalers(stream: FeatureStream, train: np.ndarray, train_val: np.ndarray) -> tuple[StandardScaler, ...]:
    """Standardisation of train (for the search) and of train+val (for the final fit), in one pass."""
    in_train = np.zeros(stream.n_samples, dtype=bool)
    in_train[train] = True
    search_scaler, final_scaler = StandardScaler(), StandardScaler()
    for positions, X in stream.blocks(train_val, BLOCK_ROWS):
        mask = in_train[positions]
        if mask.any():
            search_scaler.partial_fit(X[mask])
        final_scaler.partial_fit(X)
    return search_scaler, final_scaler


def _train(models: list[SGDClassifier], scaler: StandardScaler, stream: FeatureStream, y: np.ndarray,
           positions: np.ndarray, n_classes: int, seed: list[int]) -> None:
    classes = np.arange(n_classes)
    for epoch in range(SGD_EPOCHS):
        rng = np.random.default_rng([*seed, epoch])
        for block, X in stream.blocks(positions, BLOCK_ROWS, rng=rng):
            Z = scaler.transform(X)
            for model in models:
                model.partial_fit(Z, y[block], classes=classes)


def _predict(models: list[SGDClassifier], scaler: StandardScaler, stream: FeatureStream, positions: np.ndarray,
             n_classes: int) -> list[np.ndarray]:
    """Scores of every model for `positions`, in that order."""
    order = np.argsort(positions)
    ordered = positions[order]
    scores = [np.zeros((len(positions), n_classes)) for _ in models]
    for block, X in stream.blocks(positions, BLOCK_ROWS):
        slots = order[np.searchsorted(ordered, block)]
        Z = scaler.transform(X)
        for model, out in zip(models, scores, strict=True):
            out[slots] = decision_scores(model, Z, n_classes)
    return scores


def stream_fold(stream: FeatureStream, y: np.ndarray, fold: Fold, n_classes: int, seed: int,
                keep_model: bool) -> dict:
    """One fold, out of core: the same result keys as the in-memory probes' folds."""
    train_val = np.concatenate([fold.train, fold.val])
    search_scaler, final_scaler = _scalers(stream, fold.train, train_val)
    models = [_model(alpha, seed) for alpha in SGD_ALPHAS]
    _train(models, search_scaler, stream, y, fold.train, n_classes, [seed, fold.index, 0])
    val_scores = _predict(models, search_scaler, stream, fold.val, n_classes)
    params, val_score = best([({"alpha": alpha}, balanced_accuracy(y[fold.val], scores))
                              for alpha, scores in zip(SGD_ALPHAS, val_scores, strict=True)])
    final = _model(params["alpha"], seed)
    _train([final], final_scaler, stream, y, train_val, n_classes, [seed, fold.index, 1])
    test_scores = _predict([final], final_scaler, stream, fold.test, n_classes)[0]
    fitted = FittedProbe(METHOD, params, make_pipeline(final_scaler, final)) if keep_model else None
    return {"params": params, "val_balanced_accuracy": val_score, "scores": test_scores, "model": fitted}


def settings_record(reason: str, stream: FeatureStream) -> dict:
    """What a record says about an out-of-core run."""
    return {"reason": reason, "feature_matrix_bytes": stream.nbytes, "available_memory_bytes": available_memory(),
            "block_rows": BLOCK_ROWS, "epochs": SGD_EPOCHS, "alpha_grid": list(SGD_ALPHAS)}

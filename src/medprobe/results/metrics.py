"""Classification metrics with bootstrap CIs, vectorised: every metric is a function of a *weighted*
confusion matrix (or weighted rank statistics for AUROC), and a bootstrap resample is just a weight
vector (how often each test sample, or each patient for a cluster bootstrap, was drawn). So 5000
resamples cost a few matrix products instead of 5000 x 10 scikit-learn calls.

Conventions follow scikit-learn with `labels=all classes`: precision of a never-predicted class and
recall of an absent class count as 0 in macro/weighted averages; balanced accuracy averages recall over
the classes present; AUROC is binary on the positive (second) class, else macro one-vs-rest; ties count
one half.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import numpy as np
from scipy import sparse

from medprobe.data.splits import patient_ids
from medprobe.results.schema import Calibration, ConfusionMatrix, MetricValue, PatientMetrics

CONFUSION_METRICS = ("accuracy", "balanced_accuracy", "precision_weighted", "recall_weighted", "f1_weighted",
                     "precision_macro", "recall_macro", "f1_macro")
CI_LEVEL = 95.0
CALIBRATION_BINS = 15
CALIBRATION_METRICS = ("ece", "brier", "nll")
PROBABILITIES = "probabilities"  # what a run's scores are when calibration means something
PROBABILITY_FLOOR = np.finfo(np.float64).eps  # before a log, as scikit-learn's log_loss clips


def softmax(values: np.ndarray) -> np.ndarray:
    """Rows of scores (decision values, log-probabilities) -> rows of probabilities."""
    shifted = values - values.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), 0.0)


def confusion_matrices(y: np.ndarray, pred: np.ndarray, n_classes: int, weights: np.ndarray) -> np.ndarray:
    """(B, K, K) weighted confusion matrices, rows = truth, columns = prediction."""
    code = y * n_classes + pred
    onehot = sparse.csr_matrix((np.ones(len(y)), (np.arange(len(y)), code)), shape=(len(y), n_classes**2))
    return np.asarray((onehot.T @ weights.T).T).reshape(len(weights), n_classes, n_classes)


def metrics_from_confusion(cm: np.ndarray, *, ordinal: bool) -> dict[str, np.ndarray]:
    total = cm.sum(axis=(1, 2))
    tp = np.diagonal(cm, axis1=1, axis2=2)
    support = cm.sum(axis=2)
    predicted = cm.sum(axis=1)
    recall = _safe_divide(tp, support)
    precision = _safe_divide(tp, predicted)
    f1 = _safe_divide(2 * tp, support + predicted)
    present = support > 0
    share = _safe_divide(support, total[:, None])
    out = {
        "accuracy": _safe_divide(tp.sum(1), total),
        "balanced_accuracy": _safe_divide((recall * present).sum(1), present.sum(1)),
        "precision_weighted": (precision * share).sum(1),
        "recall_weighted": (recall * share).sum(1),
        "f1_weighted": (f1 * share).sum(1),
        "precision_macro": precision.mean(1),
        "recall_macro": recall.mean(1),
        "f1_macro": f1.mean(1),
    }
    for k in range(cm.shape[1]):
        out[f"recall[{k}]"] = np.where(present[:, k], recall[:, k], np.nan)
    if ordinal:
        k = cm.shape[1]
        penalty = (np.subtract.outer(np.arange(k), np.arange(k)) ** 2) / max((k - 1) ** 2, 1)
        expected = _safe_divide(support[:, :, None] * predicted[:, None, :], total[:, None, None])
        observed_cost = (cm * penalty).sum((1, 2))
        expected_cost = (expected * penalty).sum((1, 2))
        out["kappa_quadratic"] = np.where(expected_cost > 0, 1 - _safe_divide(observed_cost, expected_cost), np.nan)
    return out


def binary_auroc(score: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted Mann-Whitney AUROC for each weight row; NaN where a resample lacks either class."""
    return _auroc_of_columns(score, positive, np.ascontiguousarray(weights.T))


def _auroc_of_columns(score: np.ndarray, positive: np.ndarray, weights_t: np.ndarray) -> np.ndarray:
    """binary_auroc with the weights transposed, (samples, resamples): gathering samples is then copying
    rows, both contiguous.

    The scores are fixed across resamples, so where each positive falls among the sorted negatives is
    found once. For a positive at `lo:hi` among them (ties in between), negatives below + half the tied
    ones = (cum[lo] + cum[hi]) / 2, cum being the negatives' cumulative weight. Only cum at those cut
    points is needed: each negative is assigned to the segment between two cuts, one sparse product sums
    every resample's weights per segment, and a cumulative sum over the (at most 2 x positives) segments
    gives cum at every cut (half the time of cumulating all negatives' weights, which numpy does slowly).
    Resampling weights are counts, so every sum here is of integers and exact in float64."""
    negatives, positives = np.flatnonzero(~positive), np.flatnonzero(positive)
    order = np.argsort(score[negatives], kind="mergesort")
    sorted_negative = score[negatives][order]
    lo = np.searchsorted(sorted_negative, score[positives], side="left")
    hi = np.searchsorted(sorted_negative, score[positives], side="right")
    cuts = np.unique(np.concatenate([lo, hi]))
    rank = np.empty(len(negatives), dtype=np.int64)
    rank[order] = np.arange(len(negatives))
    # a negative of rank r counts towards cum[cut] iff r < cut: its segment is the number of cuts <= r
    segment = np.searchsorted(cuts, rank, side="right")
    members = sparse.csr_matrix((np.ones(len(negatives)), (segment, negatives)), shape=(len(cuts) + 1, len(score)))
    cumulative = np.cumsum(members @ weights_t, axis=0)  # row s: cum[cuts[s]]; the last row: all negatives
    w_pos = weights_t[positives]
    below = cumulative[np.searchsorted(cuts, lo)] + cumulative[np.searchsorted(cuts, hi)]
    numerator = np.einsum("ib,ib->b", w_pos, below) / 2
    denominator = w_pos.sum(0) * cumulative[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


def auroc(y: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    n_classes = scores.shape[1]
    weights_t = np.ascontiguousarray(weights.T)  # once for all classes
    if n_classes == 2:
        return _auroc_of_columns(scores[:, 1], y == 1, weights_t)
    per_class = np.stack([_auroc_of_columns(scores[:, k], y == k, weights_t) for k in range(n_classes)], axis=1)
    return per_class.mean(axis=1)  # NaN when a class is absent, like scikit-learn's refusal


def equal_mass_bins(confidence: np.ndarray, bins: int = CALIBRATION_BINS) -> np.ndarray:
    """Each sample's calibration bin: samples sorted by confidence (ties in index order) and cut into `bins`
    groups of equal size (within one)."""
    order = np.argsort(confidence, kind="mergesort")
    bin_of = np.empty(len(confidence), dtype=np.int64)
    bin_of[order] = np.arange(len(confidence)) * bins // max(len(confidence), 1)
    return bin_of


def calibration_metrics(y: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Expected calibration error of the top-class confidence (equal-mass bins of these scores, kept for every
    weight row, so a bootstrap resample keeps each sample's bin), Brier score (scikit-learn's: squared error
    summed over classes, halved for two) and negative log-likelihood (p floored at float64 eps, as
    scikit-learn's log_loss), for each weight row."""
    n, n_classes = scores.shape
    confidence = scores.max(axis=1)
    gap = confidence - (scores.argmax(axis=1) == y)
    bin_of = equal_mass_bins(confidence)
    members = sparse.csr_matrix((gap, (np.arange(n), bin_of)), shape=(n, int(bin_of.max()) + 1))
    per_bin = np.asarray((members.T @ weights.T).T)
    total = weights.sum(axis=1)
    brier = ((scores - np.eye(n_classes)[y]) ** 2).sum(axis=1) * (0.5 if n_classes == 2 else 1.0)
    nll = -np.log(np.maximum(scores[np.arange(n), y], PROBABILITY_FLOOR))
    return {"ece": _safe_divide(np.abs(per_bin).sum(axis=1), total), "brier": _safe_divide(weights @ brier, total),
            "nll": _safe_divide(weights @ nll, total)}


def all_metrics(y: np.ndarray, scores: np.ndarray, weights: np.ndarray, *, ordinal: bool,
                calibration: bool = False) -> dict[str, np.ndarray]:
    """Every metric for each weight row; `calibration`: the scores are probabilities, so ECE, Brier and NLL too."""
    n_classes = scores.shape[1]
    pred = scores.argmax(axis=1)
    out = metrics_from_confusion(confusion_matrices(y, pred, n_classes, weights), ordinal=ordinal)
    out["auroc"] = auroc(y, scores, weights)
    if calibration:
        out.update(calibration_metrics(y, scores, weights))
    return out


def calibration_block(scores_are: str) -> Calibration:
    """What the record says about calibration: how it was measured, or why it was not."""
    if scores_are != PROBABILITIES:
        return Calibration(False, why=f"the scores are {scores_are}, not probabilities; ECE, Brier and NLL are not "
                                      "computed")
    return Calibration(
        True, ece_bins=CALIBRATION_BINS,
        ece_binning="equal-mass over the pooled test predictions' top-class confidence, kept for the bootstrap",
        brier="squared error summed over classes (halved for two classes, scikit-learn's convention)",
        nll="mean -log p(true class), p floored at float64 eps")


def balanced_accuracy(y: np.ndarray, scores: np.ndarray) -> float:
    """Validation score used for every hyperparameter and checkpoint choice."""
    return float(all_metrics(y, scores, np.ones((1, len(y))), ordinal=False)["balanced_accuracy"][0])


def bootstrap_weights(n: int, replicates: int, seed: int, clusters: np.ndarray | None = None,
                      max_cells: int = 4_000_000) -> Iterator[np.ndarray]:
    """Chunks of (b, n) resampling weights. With `clusters` (a code per sample), whole clusters (patients)
    are drawn with replacement, so correlated slices are not counted as independent evidence."""
    rng = np.random.default_rng(seed)
    units = n if clusters is None else int(clusters.max()) + 1
    chunk = max(1, min(replicates, max_cells // max(n, 1)))
    done = 0
    while done < replicates:
        size = min(chunk, replicates - done)
        draws = rng.integers(0, units, size=(size, units))
        counts = np.bincount((draws + units * np.arange(size)[:, None]).ravel(), minlength=size * units)
        counts = counts.reshape(size, units).astype(np.float64)
        yield counts if clusters is None else counts[:, clusters]
        done += size


def evaluate(y: np.ndarray, scores: np.ndarray, *, ordinal: bool, replicates: int, seed: int,
             clusters: np.ndarray | None = None, calibration: bool = False) -> tuple[dict[str, float],
                                                                                 dict[str, np.ndarray]]:
    """Point estimates on all test predictions, and each metric's bootstrap distribution."""
    point = {name: float(values[0]) for name, values in
             all_metrics(y, scores, np.ones((1, len(y))), ordinal=ordinal, calibration=calibration).items()}
    chunks = [all_metrics(y, scores, w, ordinal=ordinal, calibration=calibration)
              for w in bootstrap_weights(len(y), replicates, seed, clusters)] if replicates else []
    distributions = {name: np.concatenate([c[name] for c in chunks]) if chunks else np.empty(0) for name in point}
    return point, distributions


def interval(distribution: np.ndarray, level: float = CI_LEVEL) -> list[float] | None:
    finite = distribution[np.isfinite(distribution)]
    if finite.size == 0:
        return None
    tail = (100 - level) / 2
    return [float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail))]


def evaluate_mean(y: np.ndarray, repeated_scores: list[np.ndarray], *, ordinal: bool, replicates: int, seed: int,
                  clusters: np.ndarray | None = None, calibration: bool = False) -> tuple[dict[str, float],
                                                                                      dict[str, float],
                                                                                      dict[str, np.ndarray]]:
    """Metrics averaged over repeats that predict the same test samples (few-shot draws): mean and std of
    the point values, and the bootstrap distribution of the mean (each resample scores every repeat)."""
    ones = np.ones((1, len(y)))
    points = [all_metrics(y, s, ones, ordinal=ordinal, calibration=calibration) for s in repeated_scores]
    names = list(points[0])
    mean = {n: float(np.mean([p[n][0] for p in points])) for n in names}
    std = {n: float(np.std([p[n][0] for p in points])) for n in names}
    chunks = []
    for weights in (bootstrap_weights(len(y), replicates, seed, clusters) if replicates else []):
        per_repeat = [all_metrics(y, s, weights, ordinal=ordinal, calibration=calibration) for s in repeated_scores]
        chunks.append({n: np.mean([r[n] for r in per_repeat], axis=0) for n in names})
    distributions = {n: np.concatenate([c[n] for c in chunks]) if chunks else np.empty(0) for n in names}
    return mean, std, distributions


def metric_value(value: float, distribution: np.ndarray) -> MetricValue:
    """A point value (None when not finite) with the percentile CI of its bootstrap distribution."""
    ci = interval(distribution)
    return MetricValue(float(value) if np.isfinite(value) else None, tuple(ci) if ci else None)


def summarize_metrics(point: dict, distributions: dict,
                      classes: list[str]) -> tuple[dict[str, MetricValue], dict[str, MetricValue]]:
    """Each metric as a MetricValue for the record, with per-class recall keyed by class name."""
    metrics, per_class = {}, {}
    for name, value in point.items():
        entry = metric_value(value, distributions[name])
        if name.startswith("recall["):
            per_class[classes[int(name[7:-1])]] = entry
        else:
            metrics[name] = entry
    return metrics, per_class


def group_codes(groups: list[str | None]) -> np.ndarray | None:
    """Patient ids as integer codes 0..G-1 (None without groups)."""
    ids = patient_ids(groups)
    return None if ids is None else np.unique(ids, return_inverse=True)[1]


def patient_level(y: np.ndarray, scores: np.ndarray, groups: list[str | None]) -> tuple | None:
    """Mean slice scores per patient; None when a patient's slices disagree on the label."""
    codes = group_codes(groups)
    if codes is None:
        return None
    n_groups = codes.max() + 1
    counts = np.bincount(codes, minlength=n_groups)
    mean_scores = np.zeros((n_groups, scores.shape[1]))
    np.add.at(mean_scores, codes, scores)
    mean_scores /= counts[:, None]
    labels = np.full(n_groups, -1)
    for code, label in zip(codes, y, strict=True):
        if labels[code] not in (-1, label):
            return None
        labels[code] = label
    return labels, mean_scores


def patient_block(y: np.ndarray, repeated_scores: list[np.ndarray], groups: list[str | None], classes: list[str], *,
                  ordinal: bool, replicates: int, seed: int, calibration: bool = False) -> PatientMetrics | None:
    """Patient-level metrics from mean slice scores (averaged over repeats, if several); None without
    groups or when a patient's slices disagree on the label."""
    per_patient = [patient_level(y, scores, groups) for scores in repeated_scores]
    if per_patient[0] is None:
        return None
    labels = per_patient[0][0]
    mean, _, distributions = evaluate_mean(labels, [p[1] for p in per_patient], ordinal=ordinal,
                                           replicates=replicates, seed=seed, calibration=calibration)
    metrics, per_class = summarize_metrics(mean, distributions, classes)
    return PatientMetrics(len(labels), "mean slice score", metrics, per_class_recall=per_class)


def test_report(y: np.ndarray, scores: np.ndarray, *, fold_of: np.ndarray, groups: list[str | None],
                classes: list[str], ordinal: bool, replicates: int, seed: int, scores_are: str) -> dict:
    """The metric part of a run record, from pooled test predictions: values with bootstrap CIs (patients
    resampled when grouped), fold mean and std, per-class recall, confusion matrix, patient level; calibration
    where `scores_are` PROBABILITIES."""
    codes = group_codes(groups)
    calibration = scores_are == PROBABILITIES
    point, distributions = evaluate(y, scores, ordinal=ordinal, replicates=replicates, seed=seed, clusters=codes,
                                    calibration=calibration)
    metrics, per_class = summarize_metrics(point, distributions, classes)
    fold_points = [evaluate(y[fold_of == f], scores[fold_of == f], ordinal=ordinal, replicates=0, seed=seed,
                            calibration=calibration)[0] for f in np.unique(fold_of)]
    for name, entry in metrics.items():
        values = np.array([p[name] for p in fold_points], dtype=float)
        if np.isfinite(values).any():
            metrics[name] = replace(entry, fold_mean=float(np.nanmean(values)), fold_std=float(np.nanstd(values)))
    confusion = np.zeros((len(classes),) * 2, dtype=int)
    np.add.at(confusion, (y, scores.argmax(axis=1)), 1)
    return {
        "metrics": metrics, "per_class_recall": per_class,
        "confusion_matrix": ConfusionMatrix(list(classes), confusion.tolist()),
        "calibration": calibration_block(scores_are),
        "patient_metrics": patient_block(y, [scores], groups, classes, ordinal=ordinal, replicates=replicates,
                                         seed=seed, calibration=calibration),
    }

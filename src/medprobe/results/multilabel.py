"""Multi-label metrics with bootstrap CIs: per finding AUROC, average precision and F1 at its validated
threshold, and macro AUROC, micro AUROC, mAP and macro F1, each for every weight row (a bootstrap resample
is a weight vector, as in results.metrics). A finding's unknown labels (NaN) are left out of its metrics;
micro AUROC pools every known (image, finding) pair. Conventions follow scikit-learn: average precision is
`average_precision_score` (precision at each distinct score, weighted by the recall gained there), F1 of a
finding never predicted and never present is 0."""

from __future__ import annotations

import warnings

import numpy as np

from medprobe.results.metrics import (
    CALIBRATION_BINS,
    CALIBRATION_METRICS,
    _auroc_of_columns,
    _safe_divide,
    bootstrap_weights,
    calibration_metrics,
    metric_value,
)
from medprobe.results.schema import Calibration, FindingMetrics, PatientMetrics

SUMMARY_METRICS = ("macro_auroc", "micro_auroc", "mean_average_precision", "macro_f1")
FINDING_METRICS = ("auroc", "average_precision", "f1")
# with probabilities: ECE, Brier and NLL per finding (a binary problem each), and as summaries their means


def two_class(p: np.ndarray) -> np.ndarray:
    """A finding's probabilities p as the two-class rows [1 - p, p] that the calibration code scores."""
    return np.stack([1 - p, p], axis=1)


def finding_calibration_block(scores_are_probabilities: bool, why: str = "") -> Calibration:
    """A multi-label record's `calibration`: how ECE, Brier and NLL were measured per finding, or why not."""
    if not scores_are_probabilities:
        return Calibration(False, why=why)
    return Calibration(
        True, ece_bins=CALIBRATION_BINS,
        ece_binning="per finding: equal-mass over its known test images' confidence max(p, 1 - p), kept for the "
                    "bootstrap; metrics.ece (and brier, nll) is the mean over findings",
        brier="per finding: mean (p - y)^2 over its known test images (scikit-learn's brier_score_loss)",
        nll="per finding: binary log loss, p floored at float64 eps (scikit-learn's log_loss)")


def average_precision(score: np.ndarray, positive: np.ndarray, weights_t: np.ndarray) -> np.ndarray:
    """Weighted average precision per resample; `weights_t` (samples, resamples). Samples with equal scores
    share one threshold, so ties count as scikit-learn counts them."""
    order = np.argsort(-score, kind="mergesort")
    sorted_score = score[order]
    starts = np.flatnonzero(np.r_[True, sorted_score[1:] != sorted_score[:-1]])
    w = weights_t[order]
    tp_per_threshold = np.add.reduceat(w * positive[order][:, None], starts, axis=0)
    all_per_threshold = np.add.reduceat(w, starts, axis=0)
    tp, predicted = np.cumsum(tp_per_threshold, axis=0), np.cumsum(all_per_threshold, axis=0)
    total_positive = tp[-1]
    precision = _safe_divide(tp, predicted)
    return np.where(total_positive > 0, _safe_divide((tp_per_threshold * precision).sum(axis=0), total_positive),
                    np.nan)


def f1_at(score: np.ndarray, positive: np.ndarray, threshold: np.ndarray, weights_t: np.ndarray) -> np.ndarray:
    """F1 of `score >= threshold` (a threshold per sample: its fold's) for each resample."""
    predicted = score >= threshold
    tp = (weights_t * (predicted & positive)[:, None]).sum(axis=0)
    fp = (weights_t * (predicted & ~positive)[:, None]).sum(axis=0)
    fn = (weights_t * (~predicted & positive)[:, None]).sum(axis=0)
    return _safe_divide(2 * tp, 2 * tp + fp + fn)


def multilabel_metrics(Y: np.ndarray, scores: np.ndarray, thresholds: np.ndarray, weights: np.ndarray,
                       calibration: bool = False) -> dict[str, np.ndarray]:
    """Every metric for each weight row. Y (samples, findings) with NaN unknown; thresholds (samples,
    findings): the threshold each sample's fold chose for each finding; `calibration`: the scores are
    probabilities, so ECE, Brier and NLL per finding and their means too."""
    weights_t = np.ascontiguousarray(weights.T)
    out: dict[str, np.ndarray] = {}
    pair_scores, pair_positive, pair_rows = [], [], []
    for f in range(Y.shape[1]):
        known = np.flatnonzero(~np.isnan(Y[:, f]))
        positive = Y[known, f] == 1
        w = weights_t[known]
        out[f"auroc[{f}]"] = _auroc_of_columns(scores[known, f], positive, w)
        out[f"average_precision[{f}]"] = average_precision(scores[known, f], positive, w)
        out[f"f1[{f}]"] = f1_at(scores[known, f], positive, thresholds[known, f], w)
        pair_scores.append(scores[known, f])
        pair_positive.append(positive)
        pair_rows.append(known)
    rows = np.concatenate(pair_rows)
    out["micro_auroc"] = _auroc_of_columns(np.concatenate(pair_scores), np.concatenate(pair_positive),
                                           weights_t[rows])
    _add_means(out, (("macro_auroc", "auroc"), ("mean_average_precision", "average_precision"),
                     ("macro_f1", "f1")), Y.shape[1])
    if calibration:
        out.update(finding_calibration(Y, scores, weights))
    return out


def finding_calibration(Y: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """ECE, Brier and NLL of each finding (a two-class problem on its known labels) and their means over
    findings, for each weight row."""
    out: dict[str, np.ndarray] = {}
    for f in range(Y.shape[1]):
        known = np.flatnonzero(~np.isnan(Y[:, f]))
        scored = calibration_metrics((Y[known, f] == 1).astype(int), two_class(scores[known, f]), weights[:, known])
        out.update({f"{name}[{f}]": scored[name] for name in CALIBRATION_METRICS})
    _add_means(out, ((m, m) for m in CALIBRATION_METRICS), Y.shape[1])
    return out


def _add_means(out: dict[str, np.ndarray], pairs, findings: int) -> None:
    """out[summary] = the mean over findings of out[name[f]], for each (summary, name)."""
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        # a resample lacking every finding's positives has no macro value (NaN), without a RuntimeWarning
        warnings.simplefilter("ignore", RuntimeWarning)
        for summary, name in pairs:
            out[summary] = np.nanmean(np.stack([out[f"{name}[{f}]"] for f in range(findings)]), axis=0)


def _bootstrapped(compute, n: int, *, replicates: int, seed: int, clusters: np.ndarray | None):
    """`compute(weights)` on all samples and on each bootstrap resample; returns name -> MetricValue."""
    point = {k: float(v[0]) for k, v in compute(np.ones((1, n))).items()}
    chunks = [compute(w) for w in bootstrap_weights(n, replicates, seed, clusters)] if replicates else []

    def entry(name: str):
        return metric_value(point[name], np.concatenate([c[name] for c in chunks]) if chunks else np.empty(0))

    return entry


def calibration_summary(Y: np.ndarray, scores: np.ndarray, *, replicates: int, seed: int,
                        clusters: np.ndarray | None) -> dict:
    """The means over findings of ECE, Brier and NLL with their bootstrap CIs (no ranking metrics computed)."""
    entry = _bootstrapped(lambda w: finding_calibration(Y, scores, w), len(Y), replicates=replicates, seed=seed,
                          clusters=clusters)
    return {name: entry(name) for name in CALIBRATION_METRICS}


def multilabel_report(Y: np.ndarray, scores: np.ndarray, thresholds: np.ndarray, findings: list[str], *,
                      replicates: int, seed: int, clusters: np.ndarray | None, calibration: bool = False) -> dict:
    """The record's `metrics` (the summary metrics) and `per_finding` (AUROC, AP and F1 per finding, with
    its known, positive counts; with `calibration` also ECE, Brier and NLL), values with 95% bootstrap CIs
    (patients resampled when grouped)."""
    entry = _bootstrapped(lambda w: multilabel_metrics(Y, scores, thresholds, w, calibration), len(Y),
                          replicates=replicates, seed=seed, clusters=clusters)
    measured = (*FINDING_METRICS, *(CALIBRATION_METRICS if calibration else ()))

    per_finding = {}
    for f, finding in enumerate(findings):
        known = ~np.isnan(Y[:, f])
        per_finding[finding] = FindingMetrics(int(known.sum()), int((Y[known, f] == 1).sum()),
                                              **{metric: entry(f"{metric}[{f}]") for metric in measured})
    summaries = (*SUMMARY_METRICS, *(CALIBRATION_METRICS if calibration else ()))
    return {"metrics": {name: entry(name) for name in summaries}, "per_finding": per_finding}


def per_patient(Y: np.ndarray, scores: np.ndarray, thresholds: np.ndarray,
                clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patient-level arrays: each finding's mean image score per patient; the patient has the finding when any
    of its known images has it, lacks it when all its known images lack it, unknown when none is known; the
    threshold is its fold's (a patient lies in one fold)."""
    n = int(clusters.max()) + 1
    counts = np.bincount(clusters, minlength=n)[:, None]
    mean_scores = np.zeros((n, Y.shape[1]))
    np.add.at(mean_scores, clusters, scores)
    known = np.zeros((n, Y.shape[1]))
    positive = np.zeros((n, Y.shape[1]))
    np.add.at(known, clusters, ~np.isnan(Y))
    np.add.at(positive, clusters, np.nan_to_num(Y) == 1)
    truth = np.where(known > 0, (positive > 0).astype(float), np.nan)
    first = np.unique(clusters, return_index=True)[1]
    return truth, mean_scores / counts, thresholds[first]


def multilabel_records(Y: np.ndarray, scores: np.ndarray, thresholds: np.ndarray, findings: list[str], *,
                       replicates: int, seed: int, clusters: np.ndarray | None, probabilities: bool,
                       why_not: str = "") -> dict:
    """A record's metric part: multilabel_report per image, and with patients, `patient_metrics` (the same
    metrics on patient-level arrays, patients resampled); `calibration`: measured where the scores are
    `probabilities`, else `why_not`."""
    report = multilabel_report(Y, scores, thresholds, findings, replicates=replicates, seed=seed, clusters=clusters,
                               calibration=probabilities)
    report["calibration"] = finding_calibration_block(probabilities, why_not)
    report["patient_metrics"] = None
    if clusters is not None:
        truth, patient_scores, patient_thresholds = per_patient(Y, scores, thresholds, clusters)
        patient = multilabel_report(truth, patient_scores, patient_thresholds, findings, replicates=replicates,
                                    seed=seed, clusters=None, calibration=probabilities)
        report["patient_metrics"] = PatientMetrics(
            len(truth), "mean image score per finding; a patient has a finding when any of its known images has it",
            patient["metrics"], per_finding=patient["per_finding"])
    return report


def best_f1_threshold(score: np.ndarray, positive: np.ndarray) -> float:
    """The score threshold maximising F1 on validation predictions (>= threshold is positive); the midpoint
    between the chosen score and the next lower one, so the rule generalises beyond those exact values.
    No positive: 1.0 (predict none)."""
    if not positive.any():
        return 1.0
    distinct = np.unique(score)[::-1]
    best_value, best_index = -1.0, 0
    for i, threshold in enumerate(distinct):
        predicted = score >= threshold
        tp = np.sum(predicted & positive)
        f1 = 2 * tp / (predicted.sum() + positive.sum())
        if f1 > best_value:
            best_value, best_index = f1, i
    chosen = distinct[best_index]
    lower = distinct[best_index + 1] if best_index + 1 < len(distinct) else chosen
    return float((chosen + lower) / 2) if lower < chosen else float(chosen)


def finding_thresholds(Y: np.ndarray, scores: np.ndarray) -> list[float]:
    """best_f1_threshold of each finding on its known validation labels."""
    thresholds = []
    for f in range(Y.shape[1]):
        known = ~np.isnan(Y[:, f])
        thresholds.append(best_f1_threshold(scores[known, f], Y[known, f] == 1))
    return thresholds

"""Post-hoc calibration of probabilities, fitted on validation predictions only and applied to the test
predictions of the same fold. A calibrator is a small registered class; `--calibrate NAME` picks one."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from medprobe.errors import MedprobeError
from medprobe.results.metrics import CALIBRATION_METRICS, PROBABILITY_FLOOR, evaluate, softmax, summarize_metrics
from medprobe.results.multilabel import calibration_summary, two_class
from medprobe.results.schema import Calibrated

CALIBRATORS: dict[str, type[Calibrator]] = {}
TEMPERATURE_BOUNDS = (0.05, 20.0)  # searched in log space; a bound hit is recorded as such


class Calibrator:
    name: ClassVar[str]
    summary: ClassVar[str]

    def fit(self, scores: np.ndarray, y: np.ndarray) -> dict:
        """Parameters from validation probabilities and labels."""
        raise NotImplementedError

    def apply(self, params: dict, scores: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def register(cls: type[Calibrator]) -> type[Calibrator]:
    CALIBRATORS[cls.name] = cls
    return cls


def get_calibrator(name: str) -> Calibrator:
    try:
        return CALIBRATORS[name]()
    except KeyError:
        raise MedprobeError(f"--calibrate {name!r} is not one of {', '.join(sorted(CALIBRATORS))}") from None


def _log_probabilities(scores: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(scores, PROBABILITY_FLOOR))


@register
class Temperature(Calibrator):
    """Guo et al. 2017: one temperature T for all classes, p' = softmax(log p / T), T minimising the validation
    negative log-likelihood. It rescales confidence without changing any prediction (argmax)."""

    name = "temperature"
    summary = "one temperature on the log-probabilities, minimising validation NLL"

    def fit(self, scores, y):
        from scipy.optimize import minimize_scalar

        logits = _log_probabilities(scores)
        rows = np.arange(len(y))

        def nll(log_temperature: float) -> float:
            scaled = logits / np.exp(log_temperature)
            scaled -= scaled.max(axis=1, keepdims=True)
            return float(np.mean(np.log(np.exp(scaled).sum(axis=1)) - scaled[rows, y]))

        low, high = np.log(TEMPERATURE_BOUNDS)
        found = minimize_scalar(nll, bounds=(low, high), method="bounded", options={"xatol": 1e-6})
        temperature = float(np.exp(found.x))
        at_bound = bool(min(found.x - low, high - found.x) < 1e-3)
        return {"temperature": temperature, "at_bound": at_bound, "val_nll_before": nll(0.0),
                "val_nll_after": float(found.fun)}

    def apply(self, params, scores):
        return softmax(_log_probabilities(scores) / params["temperature"])


def calibrated_block(name: str, fitted: list[tuple[int, dict, np.ndarray]], y: np.ndarray, *,
                     clusters: np.ndarray | None, replicates: int, seed: int, fitted_on: str) -> Calibrated:
    """A record's `calibrated`: per fold (index, the calibrator's parameters, its test scores in pooled order),
    the calibrator applied, and the calibration metrics of the result with their bootstrap CIs."""
    calibrator = get_calibrator(name)
    scaled = np.concatenate([calibrator.apply(params, scores) for _, params, scores in fitted])
    point, distributions = evaluate(y, scaled, ordinal=False, replicates=replicates, seed=seed, clusters=clusters,
                                    calibration=True)
    metrics, _ = summarize_metrics({m: point[m] for m in CALIBRATION_METRICS},
                                   {m: distributions[m] for m in CALIBRATION_METRICS}, [])
    return Calibrated(name, True, summary=calibrator.summary, fitted_on=fitted_on,
                      per_fold=[{"fold": index, **params} for index, params, _ in fitted], metrics=metrics)


def fit_findings(calibrator: Calibrator, Y: np.ndarray, scores: np.ndarray) -> list[dict]:
    """Multi-label: one calibrator per finding, fitted on its known validation labels as a two-class problem."""
    fitted = []
    for f in range(Y.shape[1]):
        known = ~np.isnan(Y[:, f])
        fitted.append(calibrator.fit(two_class(scores[known, f]), Y[known, f].astype(int)))
    return fitted


def calibrated_findings_block(name: str, fitted: list[tuple[int, list[dict]]], scores: np.ndarray,
                              fold_of: np.ndarray, Y: np.ndarray, findings: list[str], *,
                              clusters: np.ndarray | None, replicates: int, seed: int, fitted_on: str) -> Calibrated:
    """A multi-label record's `calibrated`: per fold index, one fitted calibrator per finding applied to that
    fold's test scores (rows where `fold_of` is the index), then ECE, Brier and NLL per finding and their means
    with bootstrap CIs (the record's `metrics` ece/brier/nll are the raw ones)."""
    calibrator = get_calibrator(name)
    scaled = scores.copy()
    for index, per_finding in fitted:
        rows = fold_of == index
        for f, params in enumerate(per_finding):
            scaled[rows, f] = calibrator.apply(params, two_class(scores[rows, f]))[:, 1]
    metrics = calibration_summary(Y, scaled, replicates=replicates, seed=seed, clusters=clusters)
    return Calibrated(name, True, summary=calibrator.summary + ", per finding", fitted_on=fitted_on,
                      per_fold=[{"fold": index, "finding": findings[f], **params}
                                for index, per_finding in fitted for f, params in enumerate(per_finding)],
                      metrics=metrics)


def not_applied(name: str, why: str) -> Calibrated:
    return Calibrated(name, False, why=why)

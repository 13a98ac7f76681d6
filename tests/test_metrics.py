"""The bootstrap's AUROC against scikit-learn's, resample by resample."""

from __future__ import annotations

import numpy as np
import pytest
import sklearn.metrics as skm

from medprobe.results.metrics import auroc, binary_auroc, bootstrap_weights, evaluate


@pytest.mark.parametrize("levels", [None, 4])  # continuous scores, and scores with many ties
def test_weighted_auroc_equals_scikit_learn_on_every_resample(levels):
    rng = np.random.default_rng(1)
    n, k = 300, 4
    y = rng.integers(0, k, n)
    scores = rng.random((n, k)) + 0.4 * np.eye(k)[y]
    if levels:
        scores = np.round(scores * levels) / levels
    weights = next(bootstrap_weights(n, 20, seed=3))
    per_resample = auroc(y, scores, weights)
    for w, value in zip(weights, per_resample, strict=True):
        keep = w > 0  # scikit-learn refuses zero weights for classes it then sees as absent
        per_class = [skm.roc_auc_score(y[keep] == c, scores[keep, c], sample_weight=w[keep]) for c in range(k)]
        assert value == pytest.approx(np.mean(per_class), abs=1e-12)
    binary = binary_auroc(scores[:, 0], y == 0, weights)
    assert binary[0] == pytest.approx(skm.roc_auc_score(y == 0, scores[:, 0], sample_weight=weights[0]), abs=1e-12)


def test_a_resample_without_positives_has_no_auroc():
    weights = np.array([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    values = binary_auroc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([False, False, True, True]), weights)
    assert np.isnan(values[0]) and values[1] == 1.0


def test_bootstrap_draws_do_not_depend_on_the_chunk_size():
    whole = np.concatenate(list(bootstrap_weights(50, 30, seed=7, max_cells=10_000)))
    chunked = np.concatenate(list(bootstrap_weights(50, 30, seed=7, max_cells=400)))
    assert chunked.shape == (30, 50) and np.array_equal(whole, chunked)


def scorer(confidence: float, accuracy: float, n: int = 4000, seed: int = 0):
    """Binary predictions right `accuracy` of the time, each with top-class probability `confidence`."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    predicted = np.where(rng.random(n) < accuracy, y, 1 - y)
    scores = np.where(predicted[:, None] == np.arange(2), confidence, 1 - confidence)
    return y, scores


def test_an_over_confident_scorer_has_a_high_ece_and_a_calibrated_one_does_not():
    over, _ = evaluate(*scorer(0.99, 0.7), ordinal=False, replicates=200, seed=0, calibration=True)
    calibrated, spread = evaluate(*scorer(0.7, 0.7), ordinal=False, replicates=200, seed=0, calibration=True)
    assert over["ece"] == pytest.approx(0.29, abs=0.02) and calibrated["ece"] < 0.06  # binomial noise per bin
    assert over["nll"] > 2 * calibrated["nll"] and over["brier"] > calibrated["brier"]
    y, scores = scorer(0.7, 0.7)
    assert calibrated["brier"] == pytest.approx(skm.brier_score_loss(y, scores[:, 1]), abs=1e-12)
    assert calibrated["nll"] == pytest.approx(skm.log_loss(y, scores), abs=1e-12)
    assert spread["ece"].shape == (200,) and np.isfinite(spread["ece"]).all()


def test_without_probabilities_no_calibration_metric_is_computed():
    point, _ = evaluate(*scorer(0.7, 0.7), ordinal=False, replicates=0, seed=0)
    assert not {"ece", "brier", "nll"} & set(point)


def test_temperature_scaling_cools_an_over_confident_scorer_without_changing_a_prediction():
    from medprobe.results.calibration import get_calibrator

    rng = np.random.default_rng(4)
    n, k = 3000, 4
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    # the true posterior is softmax(1.5 logits) (unit Gaussian noise, margin 1.5); 4 logits: over-confident
    over = np.exp(4 * logits) / np.exp(4 * logits).sum(1, keepdims=True)
    calibrator = get_calibrator("temperature")
    params = calibrator.fit(over[:1500], y[:1500])  # fitted on one half, judged on the other
    assert params["temperature"] == pytest.approx(4 / 1.5, rel=0.1) and not params["at_bound"]
    assert params["val_nll_after"] < params["val_nll_before"]
    cooled = calibrator.apply(params, over[1500:])
    before, _ = evaluate(y[1500:], over[1500:], ordinal=False, replicates=0, seed=0, calibration=True)
    after, _ = evaluate(y[1500:], cooled, ordinal=False, replicates=0, seed=0, calibration=True)
    assert before["ece"] > 0.15 and after["ece"] < before["ece"] / 3 and after["nll"] < before["nll"]
    assert (cooled.argmax(1) == over[1500:].argmax(1)).all() and np.allclose(cooled.sum(1), 1)


def test_an_unknown_calibrator_is_an_error_naming_the_choices():
    from medprobe.errors import MedprobeError
    from medprobe.results.calibration import get_calibrator

    with pytest.raises(MedprobeError, match="is not one of temperature"):
        get_calibrator("isotonic")

"""Every metric a probe or fine-tune record carries — value, 95% CI, fold mean and std, per-class recall,
patient level — recomputed from its predictions CSV alone, with scikit-learn on explicitly resampled rows and
a plain numpy percentile bootstrap seeded with the record's seed. medprobe computes them differently
(weighted confusion matrices, one weight matrix for all resamples), so agreement checks both."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from conftest import blob_patients
from probe_helpers import synthetic_study
from scipy.stats import rankdata
from sklearn import metrics as skm

from medprobe.data import load_dataset
from medprobe.data.splits import dataset_splits
from medprobe.finetune.runner import FinetuneSettings, finetune
from medprobe.probe.runner import ProbeSettings, probe

# float32 softmax rows sum to one within 1e-7, which scikit-learn's check calls "not probabilities"
pytestmark = pytest.mark.filterwarnings("ignore:The y_prob values do not sum to one")


def read_predictions(path: Path):
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    classes = [c[len("score_"):] for c in rows[0] if c.startswith("score_")]
    y = np.array([classes.index(r["label"]) for r in rows])
    scores = np.array([[float(r[f"score_{c}"]) for c in classes] for r in rows])
    return rows, classes, y, scores


def rank_sum_auroc(positive: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney U from average ranks (ties count one half)."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return np.nan
    return float((rankdata(score)[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def one_vs_rest_auroc(y: np.ndarray, scores: np.ndarray) -> float:
    if scores.shape[1] == 2:
        return rank_sum_auroc(y == 1, scores[:, 1])
    return float(np.mean([rank_sum_auroc(y == k, scores[:, k]) for k in range(scores.shape[1])]))


def plain_bins(scores: np.ndarray, bins: int = 15) -> np.ndarray:
    """Equal-mass calibration bins: the rank of each top-class confidence (ties by row order), cut in 15."""
    ranks = np.empty(len(scores), dtype=int)
    ranks[np.argsort(scores.max(1), kind="stable")] = np.arange(len(scores))
    return ranks * bins // len(scores)


def plain_calibration(y: np.ndarray, scores: np.ndarray, bin_of: np.ndarray) -> dict[str, float]:
    labels = list(range(scores.shape[1]))
    gaps = scores.max(1) - (scores.argmax(1) == y)
    return {"ece": sum(abs(gaps[bin_of == b].sum()) for b in np.unique(bin_of)) / len(y),
            "brier": skm.brier_score_loss(y, scores, labels=labels), "nll": skm.log_loss(y, scores, labels=labels)}


def plain_metrics(y: np.ndarray, scores: np.ndarray, n_classes: int, ordinal: bool,
                  bin_of: np.ndarray | None = None) -> dict[str, float]:
    """`bin_of`: the scores are probabilities; each row's calibration bin (fixed on the unresampled rows)."""
    pred, labels = scores.argmax(1), list(range(n_classes))
    out = {"accuracy": skm.accuracy_score(y, pred), "auroc": one_vs_rest_auroc(y, scores)}
    present = [k for k in labels if (y == k).any()]
    out["balanced_accuracy"] = float(np.mean([((pred == k) & (y == k)).sum() / (y == k).sum() for k in present]))
    *per_class, support = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    for name, values in zip(("precision", "recall", "f1"), per_class, strict=True):
        out[f"{name}_weighted"] = float((values * support).sum() / support.sum())
        out[f"{name}_macro"] = float(values.mean())
    for k in labels:
        out[f"recall[{k}]"] = ((pred == k) & (y == k)).sum() / (y == k).sum() if (y == k).any() else np.nan
    if ordinal:
        out["kappa_quadratic"] = skm.cohen_kappa_score(y, pred, weights="quadratic", labels=labels) \
            if len(set(y)) > 1 or len(set(pred)) > 1 else np.nan
    if bin_of is not None:
        out |= plain_calibration(y, scores, bin_of)
    return out


def plain_bootstrap(y, scores, units: np.ndarray, replicates: int, seed: int, ordinal: bool,
                    calibration: bool) -> dict[str, list]:
    """Percentile bootstrap: draw `units` (patients, or samples) with replacement, score the drawn rows."""
    return plain_bootstrap_of_the_mean(y, [scores], units, replicates, seed, ordinal, calibration)


def plain_bootstrap_of_the_mean(y, repeated: list[np.ndarray], units: np.ndarray, replicates: int, seed: int,
                                ordinal: bool, calibration: bool) -> dict[str, list]:
    """The same, each draw scoring every repeat's predictions of the drawn rows and taking their mean."""
    bins = [plain_bins(scores) if calibration else None for scores in repeated]
    codes, members = np.unique(units, return_inverse=True)[1], {}
    for row, code in enumerate(codes):
        members.setdefault(code, []).append(row)
    draws = np.random.default_rng(seed).integers(0, codes.max() + 1, size=(replicates, codes.max() + 1))
    values: dict[str, list] = {}
    for draw in draws:
        rows = np.concatenate([members[unit] for unit in draw])
        per_repeat = [plain_metrics(y[rows], scores[rows], scores.shape[1], ordinal,
                                    bin_of[rows] if calibration else None)
                      for scores, bin_of in zip(repeated, bins, strict=True)]
        for name in per_repeat[0]:
            values.setdefault(name, []).append(np.mean([found[name] for found in per_repeat]))
    return {name: [float(np.percentile(v[np.isfinite(v)], q)) for q in (2.5, 97.5)]
            for name, v in ((n, np.array(v, dtype=float)) for n, v in values.items())}


def assert_block_recomputes(block: dict, y, scores, units, classes, *, replicates, seed, ordinal,
                            calibration) -> None:
    point = plain_metrics(y, scores, len(classes), ordinal, plain_bins(scores) if calibration else None)
    cis = plain_bootstrap(y, scores, units, replicates, seed, ordinal, calibration)
    carried = {**block["metrics"], **{f"recall[{classes.index(c)}]": v for c, v in block["per_class_recall"].items()}}
    assert set(carried) == set(point)  # every metric the record carries, and no other, is recomputed here
    for name, entry in carried.items():
        assert entry["value"] == pytest.approx(point[name], abs=1e-9), name
        assert entry["ci"] == pytest.approx(cis[name], abs=1e-9), name


def assert_record_recomputes(record: dict, csv_path: Path) -> None:
    rows, classes, y, scores = read_predictions(csv_path)
    seed, replicates, ordinal = record["bootstrap"]["seed"], record["bootstrap"]["replicates"], record["ordinal"]
    grouped = record["bootstrap"]["unit"] == "patient"
    calibration = record["calibration"]["scores_are_probabilities"]
    units = np.array([r["group"] for r in rows]) if grouped else np.arange(len(rows))
    assert_block_recomputes(record, y, scores, units, classes, replicates=replicates, seed=seed, ordinal=ordinal,
                            calibration=calibration)
    folds = np.array([r["fold"] for r in rows])
    per_fold = [plain_metrics(y[folds == f], scores[folds == f], len(classes), ordinal,
                              plain_bins(scores[folds == f]) if calibration else None) for f in np.unique(folds)]
    for name, entry in record["metrics"].items():
        values = np.array([p[name] for p in per_fold], dtype=float)
        assert entry["fold_mean"] == pytest.approx(np.nanmean(values), abs=1e-9), name
        assert entry["fold_std"] == pytest.approx(np.nanstd(values), abs=1e-9), name
    if grouped:  # patient level: each patient's mean slice score, patients resampled
        patients = sorted(set(units))
        patient_y = np.array([y[units == p][0] for p in patients])
        patient_scores = np.array([scores[units == p].mean(0) for p in patients])
        assert record["patient_metrics"]["patients"] == len(patients)
        assert_block_recomputes(record["patient_metrics"], patient_y, patient_scores, np.arange(len(patients)),
                                classes, replicates=replicates, seed=seed, ordinal=ordinal, calibration=calibration)


@pytest.mark.parametrize("method", ["logreg", "knn"])
def test_probe_record_recomputes_from_its_predictions_with_patients_resampled(tmp_path, method):
    rng = np.random.default_rng(2)
    labels = [f"grade{k}" for k in np.repeat(np.arange(3), 20)]
    features = np.repeat(rng.normal(0, 1, (3, 8)), 20, axis=0) + 1.5 * rng.normal(0, 1, (60, 8))
    groups = [f"p{i // 2}" for i in range(60)]
    dataset = synthetic_study(tmp_path / "d", tmp_path / "cache", labels, features.astype(np.float32),
                              groups=groups)
    [record] = probe(dataset=dataset, models=None, cache_dir=tmp_path / "cache", out_dir=tmp_path / "out",
                     settings=ProbeSettings(classifiers=(method,), bootstrap=200, ordinal=True, seed=4),
                     show_progress=False)
    assert record["bootstrap"] == {"replicates": 200, "unit": "patient", "seed": 4, **{
        k: v for k, v in record["bootstrap"].items() if k not in ("replicates", "unit", "seed")}}
    assert_record_recomputes(record, Path(record["record_path"]).with_name(record["predictions"]))


def test_probe_record_recomputes_from_its_predictions_with_samples_resampled(tmp_path):
    rng = np.random.default_rng(3)
    labels = list(rng.choice(["neg", "pos"], size=50))
    features = rng.normal(size=(50, 6)) + np.array([[1.0 * (label == "pos")] * 6 for label in labels])
    dataset = synthetic_study(tmp_path / "d", tmp_path / "cache", labels, features.astype(np.float32))
    [record] = probe(dataset=dataset, models=None, cache_dir=tmp_path / "cache", out_dir=tmp_path / "out",
                     settings=ProbeSettings(classifiers=("logreg",), bootstrap=200), show_progress=False)
    assert record["bootstrap"]["unit"] == "sample"
    assert_record_recomputes(record, Path(record["record_path"]).with_name(record["predictions"]))


def test_finetune_record_recomputes_from_its_predictions(tmp_path, tiny_timm_models):
    dataset = load_dataset(blob_patients(tmp_path / "blobs", patients=15, per_patient=2, size=(48, 44)))
    record = finetune(dataset=dataset, model=str(tiny_timm_models["resnet"]), out_dir=tmp_path / "out",
                      settings=FinetuneSettings(epochs=2, batch_size=8, workers=0, folds=3, fold=0, bootstrap=200,
                                                precision="fp32", device="cpu", seed=1, calibrate="temperature"),
                      show_progress=False)[0]
    assert record["bootstrap"]["unit"] == "patient" and record["bootstrap"]["seed"] == 1
    train = len(dataset_splits(dataset, folds=3, seed=1).folds[0].train)  # full batches only: the rest waits
    assert record["cost"]["optimizer_steps"] == 2 * (train // 8)
    assert record["cost"]["train_images"] == 2 * (train // 8) * 8
    assert_record_recomputes(record, Path(record["record_path"]).with_name(record["predictions"]))
    assert [f["fold"] for f in record["calibrated"]["per_fold"]] == [0]  # --fold 0: that fold's temperature
    assert_calibrated_recomputes(record)


def test_temperature_calibrated_metrics_recompute_from_the_predictions_and_the_recorded_temperatures(
        tmp_path, monkeypatch):
    from medprobe.results import calibration

    rng = np.random.default_rng(5)
    labels = [f"c{k}" for k in np.repeat(np.arange(3), 30)]
    features = np.repeat(rng.normal(0, 1, (3, 8)), 30, axis=0) + 1.2 * rng.normal(0, 1, (90, 8))
    dataset = synthetic_study(tmp_path / "d", tmp_path / "cache", labels, features.astype(np.float32))
    seen = []
    original = calibration.Temperature.fit
    monkeypatch.setattr(calibration.Temperature, "fit", lambda self, s, y: seen.append(len(y)) or original(self, s, y))
    records = probe(dataset=dataset, models=None, cache_dir=tmp_path / "cache", out_dir=tmp_path / "out",
                    settings=ProbeSettings(classifiers=("logreg", "svm"), bootstrap=200, seed=1, n_jobs=1,
                                           calibrate="temperature"), show_progress=False)
    logreg, svm = records
    folds = dataset_splits(dataset, folds=5, seed=1).folds
    assert seen == [len(f.val) for f in folds]  # fitted on each fold's validation part, nothing else
    assert not svm["calibrated"]["applied"] and "not probabilities" in svm["calibrated"]["why"]
    assert [f["fold"] for f in logreg["calibrated"]["per_fold"]] == [f.index for f in folds]
    assert_calibrated_recomputes(logreg)


def assert_calibrated_recomputes(record: dict) -> None:
    """The calibrated metrics from the predictions CSV's raw scores and each fold's recorded temperature."""
    calibrated = record["calibrated"]
    assert calibrated["applied"]
    rows, classes, y, scores = read_predictions(Path(record["record_path"]).with_name(record["predictions"]))
    temperature = {str(f["fold"]): f["temperature"] for f in calibrated["per_fold"]}
    logits = np.log(np.maximum(scores, np.finfo(float).eps)) / np.array([[temperature[r["fold"]]] for r in rows])
    scaled = np.exp(logits - logits.max(1, keepdims=True))
    scaled /= scaled.sum(1, keepdims=True)
    grouped = record["bootstrap"]["unit"] == "patient"
    units = np.array([r["group"] for r in rows]) if grouped else np.arange(len(rows))
    point = plain_calibration(y, scaled, plain_bins(scaled))
    cis = plain_bootstrap(y, scaled, units, record["bootstrap"]["replicates"], record["bootstrap"]["seed"], False,
                          True)
    for name in ("ece", "brier", "nll"):
        assert calibrated["metrics"][name]["value"] == pytest.approx(point[name], abs=1e-9), name
        assert calibrated["metrics"][name]["ci"] == pytest.approx(cis[name], abs=1e-9), name
    assert (scaled.argmax(1) == scores.argmax(1)).all()


def test_a_label_budget_record_is_the_mean_over_repeats_with_its_std_and_a_bootstrap_ci_of_that_mean(
        tmp_path, monkeypatch):
    """README: with --shots and --repeats the value is the mean over repeats, with its std and a bootstrap CI of
    that mean; recomputed here from each repeat's test scores (caught on their way to the metrics) with
    scikit-learn and the plain bootstrap, patients resampled."""
    from medprobe.probe import runner

    rng = np.random.default_rng(5)
    labels = ["neg", "pos"] * 20
    features = rng.normal(size=(40, 6)) + np.array([[0.8 * (label == "pos")] * 6 for label in labels])
    groups = [f"p{i // 2}" for i in range(40)]
    dataset = synthetic_study(tmp_path / "d", tmp_path / "cache", labels, features.astype(np.float32),
                              groups=groups)
    caught, real = [], runner.evaluate_mean
    monkeypatch.setattr(runner, "evaluate_mean", lambda y, repeated, **kw: caught.append(
        (y, [s.copy() for s in repeated])) or real(y, repeated, **kw))
    records = probe(dataset=dataset, models=None, cache_dir=tmp_path / "cache", out_dir=tmp_path / "out",
                    settings=ProbeSettings(classifiers=("logreg",), shots=(2,), repeats=3, bootstrap=100, seed=2),
                    show_progress=False)
    [few] = [r for r in records if r.get("shots") == 2]
    [(y, repeated)] = caught
    assert few["repeats"] == len(repeated) == 3 and few["bootstrap"]["unit"] == "patient"
    rows, _, y_csv, mean_scores = read_predictions(Path(few["record_path"]).with_name(few["predictions"]))
    np.testing.assert_array_equal(y_csv, y)
    np.testing.assert_allclose(mean_scores, np.mean(repeated, axis=0), atol=1e-6)  # the CSV: the repeats' mean
    per_repeat = [plain_metrics(y, scores, 2, False, plain_bins(scores)) for scores in repeated]
    cis = plain_bootstrap_of_the_mean(y, repeated, np.array([r["group"] for r in rows]), 100, 2, False, True)
    assert np.std([p["accuracy"] for p in per_repeat]) > 0  # the repeats differ: the mean and std say something
    for name, entry in few["metrics"].items():
        values = [found[name] for found in per_repeat]
        assert entry["value"] == pytest.approx(np.mean(values), abs=1e-9), name
        assert entry["repeat_std"] == pytest.approx(np.std(values), abs=1e-9), name
        assert entry["ci"] == pytest.approx(cis[name], abs=1e-9), name

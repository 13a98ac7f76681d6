from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from probe_helpers import synthetic_study, write_cache, write_manifest
from sklearn import metrics as skm
from torch_blocker import BLOCK_TORCH

from medprobe.cli import main
from medprobe.data import load_dataset
from medprobe.errors import MedprobeError
from medprobe.probe.runner import ProbeSettings, probe


def run_probe(dataset, cache_dir, out_dir, models=None, **settings):
    options = {"bootstrap": 1000, "classifiers": ("logreg",)}
    options.update(settings)
    with_datasets = options.pop("with_datasets", [])
    return probe(dataset=dataset, models=models, cache_dir=cache_dir, out_dir=out_dir,
                 settings=ProbeSettings(**options), with_datasets=with_datasets, show_progress=False)


def clustered(n_per_class: int, n_classes: int, dim: int, spread: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (n_classes, dim))
    labels = np.repeat(np.arange(n_classes), n_per_class)
    features = centres[labels] + spread * rng.normal(0, 1, (len(labels), dim))
    return [f"class{c}" for c in labels], features.astype(np.float32)


def test_separable_features_give_near_perfect_scores(tmp_path):
    labels, features = clustered(30, 3, 16, 0.1)
    dataset = synthetic_study(tmp_path / "d", tmp_path / "cache", labels, features)
    records = run_probe(dataset, tmp_path / "cache", tmp_path / "out", classifiers=("logreg", "svm", "knn"))
    assert [r["method"] for r in records] == ["logreg", "svm", "knn"]
    for record in records:
        assert record["metrics"]["accuracy"]["value"] >= 0.97, record["method"]
        assert record["metrics"]["auroc"]["value"] >= 0.99
        assert record["pool"] == "cls+mean" and record["feature_dim"] == 16


def test_random_labels_give_chance_inside_the_ci(tmp_path):
    rng = np.random.default_rng(5)
    labels = list(rng.choice(["neg", "pos"], size=200))
    dataset = synthetic_study(tmp_path / "d", tmp_path / "cache", labels, rng.normal(size=(200, 32)))
    for record in run_probe(dataset, tmp_path / "cache", tmp_path / "out", classifiers=("logreg", "knn")):
        low, high = record["metrics"]["accuracy"]["ci"]
        assert low <= 0.5 <= high, record["method"]
        low, high = record["metrics"]["auroc"]["ci"]
        assert low <= 0.5 <= high, record["method"]


def test_patient_grouping_prevents_leakage_that_slice_splits_suffer(tmp_path):
    """Near-duplicate slices within a patient, labels random per patient: a grouped split shows chance,
    a slice-level split (same data, groups dropped) lets kNN find each slice's sibling and look perfect."""
    rng = np.random.default_rng(1)
    patients, per_patient = 40, 5
    patient_vectors = rng.normal(size=(patients, 24))
    patient_labels = rng.choice(["low", "high"], size=patients)
    features = np.repeat(patient_vectors, per_patient, axis=0) + 0.01 * rng.normal(size=(patients * per_patient, 24))
    labels = list(np.repeat(patient_labels, per_patient))
    groups = [f"p{i}" for i in np.repeat(np.arange(patients), per_patient)]
    grouped = synthetic_study(tmp_path / "grouped", tmp_path / "cache", labels, features, groups=groups)
    leaky = synthetic_study(tmp_path / "leaky", tmp_path / "cache", labels, features)
    honest = run_probe(grouped, tmp_path / "cache", tmp_path / "out", classifiers=("knn",))[0]
    assert honest["bootstrap"]["unit"] == "patient"
    low, high = honest["metrics"]["accuracy"]["ci"]
    assert low <= 0.5 <= high and honest["metrics"]["accuracy"]["value"] < 0.7
    assert honest["patient_metrics"]["patients"] == patients
    leaked = run_probe(leaky, tmp_path / "cache", tmp_path / "out", classifiers=("knn",))[0]
    assert leaked["metrics"]["accuracy"]["value"] > 0.95


def read_predictions(path):
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    classes = [c[len("score_"):] for c in rows[0] if c.startswith("score_")]
    y = np.array([classes.index(r["label"]) for r in rows])
    scores = np.array([[float(r[f"score_{c}"]) for c in classes] for r in rows])
    return rows, classes, y, scores


@pytest.mark.parametrize("method", ["logreg", "svm", "knn"])
def test_calibration_is_measured_for_probabilities_and_refused_for_other_scores(tmp_path, method):
    labels, features = clustered(20, 3, 8, 1.2, seed=2)
    dataset = synthetic_study(tmp_path / "d", tmp_path / "cache", labels, features)
    record = run_probe(dataset, tmp_path / "cache", tmp_path / "out", classifiers=(method,))[0]
    calibration = record["calibration"]
    if method == "logreg":
        assert calibration["scores_are_probabilities"] and calibration["ece_bins"] == 15
        for name in ("ece", "brier", "nll"):
            entry = record["metrics"][name]
            assert entry["value"] >= 0 and entry["ci"][0] <= entry["value"] <= entry["ci"][1], name
    else:
        assert not calibration["scores_are_probabilities"] and "not probabilities" in calibration["why"]
        assert not {"ece", "brier", "nll"} & set(record["metrics"])


@pytest.mark.parametrize("method", ["logreg", "svm", "knn"])
def test_record_metrics_recompute_exactly_from_the_predictions_csv(tmp_path, method):
    labels, features = clustered(20, 3, 8, 1.2, seed=2)
    groups = [f"p{i // 2}" for i in range(len(labels))]
    dataset = synthetic_study(tmp_path / "d", tmp_path / "cache", labels, features, groups=groups)
    record = run_probe(dataset, tmp_path / "cache", tmp_path / "out", classifiers=(method,), ordinal=True)[0]
    json_path = tmp_path / "out" / "d-labels" / f"dinov2-small__cls+mean__{method}__kfold5-seed0.json"
    assert json.loads(json_path.read_text())["metrics"] == json.loads(json.dumps(record["metrics"]))
    rows, classes, y, scores = read_predictions(json_path.with_name(record["predictions"]))
    assert len(rows) == 60 and [r["prediction"] for r in rows] == [classes[i] for i in scores.argmax(1)]
    pred = scores.argmax(1)
    labels_all = list(range(len(classes)))
    expected = {
        "accuracy": skm.accuracy_score(y, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        "f1_weighted": skm.f1_score(y, pred, average="weighted", labels=labels_all),
        "precision_weighted": skm.precision_score(y, pred, average="weighted", labels=labels_all, zero_division=0),
        "recall_macro": skm.recall_score(y, pred, average="macro", labels=labels_all),
        "f1_macro": skm.f1_score(y, pred, average="macro", labels=labels_all),
        # the recorded scores as they are: renormalising saturated probabilities reorders near-ties
        "auroc": skm.roc_auc_score(y, scores, multi_class="ovr"),
        "kappa_quadratic": skm.cohen_kappa_score(y, pred, weights="quadratic"),
    }
    for name, value in expected.items():
        assert record["metrics"][name]["value"] == pytest.approx(value, abs=1e-9), name
        low, high = record["metrics"][name]["ci"]
        assert low <= high
    assert record["confusion_matrix"]["matrix"] == skm.confusion_matrix(y, pred).tolist()
    folds = {r["fold"] for r in rows}
    assert folds == {"0", "1", "2", "3", "4"}
    fold_accuracy = [skm.accuracy_score(y[[r["fold"] == f for r in rows]], pred[[r["fold"] == f for r in rows]])
                     for f in sorted(folds)]
    assert record["metrics"]["accuracy"]["fold_mean"] == pytest.approx(np.mean(fold_accuracy))
    by_patient = {}
    for row, label, score in zip(rows, y, scores, strict=True):
        by_patient.setdefault(row["group"], (label, []))[1].append(score)
    patient_y = np.array([v[0] for v in by_patient.values()])
    patient_pred = np.array([np.mean(v[1], axis=0).argmax() for v in by_patient.values()])
    assert record["patient_metrics"]["metrics"]["accuracy"]["value"] == pytest.approx(
        skm.accuracy_score(patient_y, patient_pred))


def test_fusion_of_two_backbones_combines_their_information(tmp_path):
    """Backbone A sees one bit of a 4-class label, backbone B the other: only the fusion sees both."""
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(4), 25)
    bit_a, bit_b = y % 2, y // 2
    feats_a = np.c_[bit_a * 3.0, np.zeros(100)] + 0.3 * rng.normal(size=(100, 2))
    feats_b = np.c_[bit_b * 3.0, np.zeros(100)] + 0.3 * rng.normal(size=(100, 2))
    dataset = load_dataset(write_manifest(tmp_path / "d", [f"c{v}" for v in y]))
    write_cache(dataset, tmp_path / "cache", "dinov2-small", {"cls": feats_a[:, :1], "mean": feats_a[:, 1:]})
    write_cache(dataset, tmp_path / "cache", "resnet50", {"gap": feats_b})
    alone = run_probe(dataset, tmp_path / "cache", tmp_path / "out")  # every cached backbone
    assert sorted(r["model"] for r in alone) == ["dinov2-small", "resnet50"]
    assert all(r["metrics"]["accuracy"]["value"] < 0.6 for r in alone)
    fused = run_probe(dataset, tmp_path / "cache", tmp_path / "out", models=["dinov2-small", "resnet50"], fuse=True)
    assert fused[0]["model"] == "dinov2-small+resnet50" and fused[0]["pool"] == "mixed"
    assert fused[0]["metrics"]["accuracy"]["value"] > 0.95


def test_with_another_modality_joins_on_sample_ids(tmp_path):
    rng = np.random.default_rng(4)
    y = np.repeat([0, 1], 30)
    labels = [f"g{v}" for v in y]
    t1 = load_dataset(write_manifest(tmp_path / "t1", labels))
    flair = load_dataset(write_manifest(tmp_path / "flair", labels))
    write_cache(t1, tmp_path / "cache", "resnet50", {"gap": rng.normal(size=(60, 4))})
    write_cache(flair, tmp_path / "cache", "resnet50", {"gap": np.c_[y * 4.0, rng.normal(size=(60, 3))]})
    record = run_probe(t1, tmp_path / "cache", tmp_path / "out", models=["resnet50"], with_datasets=[flair])[0]
    assert record["model"] == "resnet50+flair-labels" and record["feature_dim"] == 8
    assert record["metrics"]["accuracy"]["value"] > 0.95
    assert [s["dataset"] for s in record["features"]] == ["t1-labels", "flair-labels"]


def test_label_efficiency_records(tmp_path):
    labels, features = clustered(20, 2, 8, 0.8, seed=6)
    groups = [f"p{i // 2}" for i in range(len(labels))]
    dataset = synthetic_study(tmp_path / "d", tmp_path / "cache", labels, features, groups=groups)
    records = run_probe(dataset, tmp_path / "cache", tmp_path / "out", classifiers=("logreg", "knn"),
                        shots=(1, 4, "all"), repeats=3)
    protocols = [(r["method"], r["protocol"]) for r in records]
    assert protocols == [("logreg", "kfold5"), ("logreg", "shots1x3-kfold5"), ("logreg", "shots4x3-kfold5"),
                         ("knn", "kfold5"), ("knn", "shots1x3-kfold5"), ("knn", "shots4x3-kfold5")]
    one_shot = records[1]
    assert one_shot["shots"] == 1 and one_shot["train_sizes"] == {"min": 4, "max": 4}  # 1 patient x 2 slices x 2
    assert 0 <= one_shot["metrics"]["accuracy"]["repeat_std"] <= 0.5
    low, high = one_shot["metrics"]["accuracy"]["ci"]
    assert low <= one_shot["metrics"]["accuracy"]["value"] <= high
    assert one_shot["patient_metrics"]["patients"] == 20
    assert 0 <= one_shot["patient_metrics"]["metrics"]["accuracy"]["value"] <= 1


def test_parallel_folds_and_saved_model(tmp_path, monkeypatch):
    import joblib

    from medprobe.probe import runner

    labels, features = clustered(15, 2, 6, 1.0, seed=7)
    dataset = synthetic_study(tmp_path / "d", tmp_path / "cache", labels, features)
    serial = run_probe(dataset, tmp_path / "cache", tmp_path / "a", classifiers=("svm",))[0]
    monkeypatch.setattr(runner, "SERIAL_LIMIT", 0)  # worker processes even for these few features
    parallel = run_probe(dataset, tmp_path / "cache", tmp_path / "b", classifiers=("svm",), n_jobs=2,
                         save_model=True)[0]
    assert serial["metrics"] == parallel["metrics"] and serial["hyperparameters"] == parallel["hyperparameters"]
    saved = joblib.load(tmp_path / "b" / "d-labels" / parallel["model_file"])
    assert len(saved["fold_models"]) == 5 and saved["classes"] == ["class0", "class1"]
    assert saved["fold_models"][0].scores(features[:3], 2).shape == (3, 2)


def test_probe_errors_name_the_fix(tmp_path):
    labels, features = clustered(6, 2, 4, 0.5)
    dataset = synthetic_study(tmp_path / "d", tmp_path / "cache", labels, features)
    with pytest.raises(MedprobeError, match="no feature cache of resnet50 .*medprobe extract .* --model resnet50"):
        run_probe(dataset, tmp_path / "cache", tmp_path / "out", models=["resnet50"])
    with pytest.raises(MedprobeError, match="--pool gap: dinov2-small stores no gap features"):
        run_probe(dataset, tmp_path / "cache", tmp_path / "out", pool="gap")
    with pytest.raises(MedprobeError, match="fewer than --folds 10"):
        run_probe(dataset, tmp_path / "cache", tmp_path / "out", folds=10)
    (dataset.samples[0].path).write_bytes(b"changed")
    with pytest.raises(MedprobeError, match="stale .*1 changed since extraction.*medprobe extract"):
        run_probe(dataset, tmp_path / "cache", tmp_path / "out", models=["dinov2-small"])
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.json"))


def test_probe_cli_runs_without_torch(tmp_path):
    labels, features = clustered(10, 2, 6, 0.3)
    dataset = synthetic_study(tmp_path / "d", tmp_path / "cache", labels, features)
    script = BLOCK_TORCH + f"""
from medprobe.cli import main
try:
    main(["probe", {str(dataset.source)!r}, "--cache-dir", {str(tmp_path / "cache")!r}, "--clf", "all",
          "--out", {str(tmp_path / "out")!r}, "--bootstrap", "200", "--n-jobs", "2"])
except SystemExit as exit:
    assert not exit.code, exit.code
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "test metrics, 95% bootstrap CI" in result.stdout and "dinov2-small" in result.stdout
    assert len(list((tmp_path / "out" / "d-labels").glob("*.json"))) == 3


def test_probe_cli_bad_input_exits_2(tmp_path, capsys):
    labels, features = clustered(10, 2, 6, 0.3)
    dataset = synthetic_study(tmp_path / "d", tmp_path / "cache", labels, features)
    with pytest.raises(SystemExit) as info:
        main(["probe", str(dataset.source), "--cache-dir", str(tmp_path / "cache"), "--clf", "forest"])
    assert info.value.code == 2 and "--clf 'forest' is not one of" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["probe", str(dataset.source), "--cache-dir", str(tmp_path / "cache"), "--clf", ","])
    assert info.value.code == 2 and "--clf names no classifier" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["probe", str(dataset.source), "--cache-dir", str(tmp_path / "cache"), "--shots", "4,many"])
    assert info.value.code == 2 and "--shots '4,many'" in capsys.readouterr().err


def test_the_extraction_cost_travels_with_the_record_once_the_cache_is_gone(tmp_path):
    from medprobe.report.records import load_records

    labels, features = clustered(20, 2, 8, 0.5)
    dataset = load_dataset(write_manifest(tmp_path / "d", labels))
    cache = write_cache(dataset, tmp_path / "cache", "dinov2-small", {"cls": features}, peak_memory_mb=1234.5,
                        images_per_second=56.7, device_name="Some CPU (2 cores)")
    [record] = run_probe(dataset, tmp_path / "cache", tmp_path / "out", bootstrap=50)
    assert record["features"][0]["provenance"]["peak_memory_mb"] == 1234.5
    cache.unlink()  # the report of a copied results folder has no caches to read
    [loaded] = load_records([tmp_path / "out"], "balanced_accuracy").records
    assert (loaded.backbone.peak_memory_mb, loaded.backbone.images_per_second) == (1234.5, 56.7)


def test_any_plus_joined_list_of_stored_pools_is_probed(tmp_path):
    labels, informative = clustered(20, 2, 6, 0.3, seed=4)
    noise = np.random.default_rng(5).normal(size=(len(labels), 6)).astype(np.float32)
    dataset = load_dataset(write_manifest(tmp_path / "d", labels))
    write_cache(dataset, tmp_path / "cache", "dinov2-small", {"cls": noise[:, :3], "mean": noise[:, 3:],
                                                              "cls4": informative})
    joined = run_probe(dataset, tmp_path / "cache", tmp_path / "out", pool="cls4+mean", bootstrap=50)[0]
    plain = run_probe(dataset, tmp_path / "cache", tmp_path / "out", pool="cls+mean", bootstrap=50)[0]
    assert joined["pool"] == "cls4+mean" and plain["pool"] == "cls+mean"
    assert joined["metrics"]["balanced_accuracy"]["value"] > 0.9 > plain["metrics"]["balanced_accuracy"]["value"]


def test_record_files_appear_only_complete_through_a_rename(tmp_path, monkeypatch):
    """README: both files are written to a temporary name and renamed. Every final file arrives by one
    os.replace from its .partial twin, already complete; a run stopped before the record's rename leaves no
    record under its final name (only the .partial, which the report lists as an interrupted write)."""
    import os

    from medprobe.results import record as record_module

    labels, features = clustered(20, 2, 8, 0.5)
    dataset = synthetic_study(tmp_path / "d", tmp_path / "cache", labels, features)
    renames, real_replace = [], os.replace

    def replace(source, target):
        source, target = str(source), str(target)
        assert source == target + ".partial" and os.path.getsize(source) > 0
        renames.append(os.path.basename(target))
        if target.endswith(".json"):
            raise OSError("disk gone")  # stops the run between the predictions' rename and the record's
        return real_replace(source, target)

    monkeypatch.setattr(record_module.os, "replace", replace)
    with pytest.raises(OSError, match="disk gone"):
        run_probe(dataset, tmp_path / "cache", tmp_path / "out", bootstrap=50)
    assert len(renames) == 2 and renames[0] == renames[1].removesuffix(".json") + ".predictions.csv"
    written = {path.name for path in (tmp_path / "out").rglob("*") if path.is_file()}
    assert written == {renames[0], renames[1] + ".partial"}
    json.loads((tmp_path / "out").rglob("*.json.partial").__next__().read_text())  # complete, just not renamed


def test_few_shot_runs_fit_the_fixed_hyperparameters_the_readme_names(tmp_path, monkeypatch):
    """README: --shots runs use fixed hyperparameters (logreg C=1, linear SVM C=1, kNN k=20 softmax): every
    fit of every repeat and fold gets exactly those, and the record says so."""
    from medprobe.probe.classifiers import get_probe

    fixed = {"logreg": {"C": 1.0}, "svm": {"kernel": "linear", "C": 1.0}, "knn": {"k": 20, "weighting": "softmax"}}
    fitted_with: dict[str, list[dict]] = {name: [] for name in fixed}
    for name in fixed:
        probe_class = type(get_probe(name))
        real_fit = probe_class.fit

        def fit(self, params, *args, real_fit=real_fit, **kwargs):
            fitted_with[self.name].append(dict(params))
            return real_fit(self, params, *args, **kwargs)

        monkeypatch.setattr(probe_class, "fit", fit)
    labels, features = clustered(20, 2, 8, 0.8, seed=6)
    dataset = synthetic_study(tmp_path / "d", tmp_path / "cache", labels, features)
    records = run_probe(dataset, tmp_path / "cache", tmp_path / "out", classifiers=tuple(fixed), shots=(2,),
                        repeats=2, bootstrap=50)
    assert [r["protocol"] for r in records] == ["shots2x2-kfold5"] * 3
    for record in records:
        assert record["hyperparameters"] == [fixed[record["method"]]]
        assert fitted_with[record["method"]] == [fixed[record["method"]]] * (2 * 5)  # repeats x folds


def test_search_parts_and_final_fits_run_with_one_blas_thread_in_worker_processes():
    """README: folds and search parts run side by side in worker processes, one BLAS thread each (so two
    tasks on two cores do not oversubscribe them). Workers allowed two BLAS threads (a plain function there
    sees two) run the runner's task functions with one."""
    from joblib import Parallel, delayed, parallel_config
    from probe_helpers import BlasThreadsProbe

    from medprobe.data.splits import Fold
    from medprobe.probe import runner

    X, y = np.random.default_rng(0).normal(size=(12, 4)), np.arange(12) % 2
    fold = Fold(index=0, train=np.arange(8), val=np.arange(8, 10), test=np.arange(10, 12))
    with parallel_config(backend="loky", inner_max_num_threads=2), Parallel(n_jobs=2) as parallel:
        plain = parallel(delayed(BlasThreadsProbe._threads)() for _ in range(2))
        searched = parallel(delayed(runner._search_part)(BlasThreadsProbe(), ("all",), X, y, fold, None, 2, 0, False)
                            for _ in range(2))
        fitted = parallel(delayed(runner._fit_fold)(BlasThreadsProbe(), {}, X, y, fold, 2, 0, False)
                          for _ in range(2))
    assert plain == [2, 2]
    assert [outcome.candidates[0][0]["blas_threads"] for outcome in searched] == [1, 1]
    assert all((result["scores"] == 1).all() for result in fitted)

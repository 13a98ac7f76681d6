"""Multi-label findings: manifests, finding-stratified patient-grouped splits, one probe per finding with a
validated threshold, and metrics that recompute from the predictions CSV."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from probe_helpers import write_cache
from sklearn import metrics as skm

from medprobe.cli import main
from medprobe.data import load_dataset
from medprobe.data.splits import dataset_splits
from medprobe.errors import MedprobeError
from medprobe.probe.runner import ProbeSettings, probe

FINDINGS = ("effusion", "nodule")


def write_multilabel(root, rows, header="path,labels,group"):
    from PIL import Image

    (root / "img").mkdir(parents=True, exist_ok=True)
    lines = [header]
    for i, row in enumerate(rows):
        Image.new("L", (2, 2), i % 256).save(root / "img" / f"{i:04d}.png")
        lines.append(f"img/{i:04d}.png,{row}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root / "labels.csv"


def two_finding_study(tmp_path, n_patients=80, per_patient=2, seed=0, root="d", shift=0.0):
    """Effusion is in the features (its images shifted along 8 dimensions); nodule is drawn independently
    of them (a shuffled label: no probe can find it). Patients alternate sex F/M; `shift` moves every
    feature (another site's intensities)."""
    rng = np.random.default_rng(seed)
    effusion = rng.random(n_patients) < 0.4
    nodule = rng.random(n_patients) < 0.3
    rows, present = [], []
    for p in range(n_patients):
        for _ in range(per_patient):
            names = [name for name, on in zip(FINDINGS, (effusion[p], nodule[p]), strict=True) if on]
            rows.append(f"{'|'.join(names)},patient{p:03d},{'FM'[p % 2]}")
            present.append(effusion[p])
    dataset = load_dataset(write_multilabel(tmp_path / root, rows, header="path,labels,group,sex"))
    features = rng.normal(0, 1, (len(rows), 16)).astype(np.float32) + np.float32(shift)
    features[np.array(present), :8] += 1.2
    write_cache(dataset, tmp_path / "cache", "dinov2-small", {"cls": features[:, :8], "mean": features[:, 8:]})
    return dataset, features


def read_rows(path):
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_multilabel_manifests_pipe_and_columns_with_each_uncertain_option(tmp_path):
    data = load_dataset(write_multilabel(tmp_path / "a", ["effusion|nodule,p1", ",p1", "nodule,p2"]))
    assert data.multilabel and data.findings == ["effusion", "nodule"]
    np.testing.assert_array_equal(data.finding_matrix(), [[1, 1], [0, 0], [0, 1]])
    assert [s.label for s in data.samples] == ["effusion|nodule", "(no finding)", "nodule"]
    manifest = write_multilabel(tmp_path / "b", ["1,-1,F", "0,,M", "-1,1,F"], header="path,Effusion,Edema,sex")
    expected = {"ignore": [[1, np.nan], [0, np.nan], [np.nan, 1]], "zero": [[1, 0], [0, np.nan], [0, 1]],
                "one": [[1, 1], [0, np.nan], [1, 1]]}
    for option, matrix in expected.items():
        manifest.with_name("spec.toml").write_text(f'manifest = "labels.csv"\nlabels = ["Effusion", "Edema"]\n'
                                                   f'uncertain = "{option}"\n')
        data = load_dataset(manifest.with_name("spec.toml"))
        np.testing.assert_array_equal(data.finding_matrix(), matrix)
        assert data.attribute_columns == ["sex"]  # finding columns are not subgroups
    manifest.write_text("path,Effusion,Edema\nimg/0000.png,1,yes\n")
    with pytest.raises(MedprobeError, match=r"labels.csv:2: Edema = 'yes'; a finding column holds 1, 0, -1"):
        load_dataset(manifest.with_name("spec.toml"))
    manifest.with_name("spec.toml").write_text('manifest = "labels.csv"\nlabels = ["Effusion"]\nuncertain = "maybe"\n')
    with pytest.raises(MedprobeError, match="uncertain = 'maybe' is not one of ignore, zero, one"):
        load_dataset(manifest.with_name("spec.toml"))


def test_multilabel_folds_keep_patients_whole_and_finding_rates_close(tmp_path):
    dataset, _ = two_finding_study(tmp_path, n_patients=120)
    plan = dataset_splits(dataset, folds=5, seed=0)
    Y = dataset.finding_matrix()
    groups = np.array([s.group for s in dataset.samples])
    tested = np.concatenate([f.test for f in plan.folds])
    assert sorted(tested.tolist()) == list(range(len(Y)))  # every image tested once
    overall = Y.mean(axis=0)
    for fold in plan.folds:
        parts = (fold.train, fold.val, fold.test)
        for a in range(3):
            for b in range(a + 1, 3):
                assert not set(groups[parts[a]]) & set(groups[parts[b]])  # no patient on two sides
        assert np.abs(Y[fold.test].mean(axis=0) - overall).max() < 0.05
        assert np.abs(Y[fold.val].mean(axis=0) - Y[fold.train].mean(axis=0)).max() < 0.08


def test_a_feature_borne_finding_scores_high_and_a_shuffled_one_at_chance_recomputed_from_the_csv(tmp_path):
    dataset, _ = two_finding_study(tmp_path)
    [record] = probe(dataset=dataset, models=None, cache_dir=tmp_path / "cache", out_dir=tmp_path / "out",
                     settings=ProbeSettings(bootstrap=200), show_progress=False)
    assert record["task"] == "multilabel" and record["findings"] == list(FINDINGS)
    per = record["per_finding"]
    assert per["effusion"]["auroc"]["value"] > 0.85
    assert abs(per["nodule"]["auroc"]["value"] - 0.5) < 0.15
    rows = read_rows(tmp_path / "out" / dataset.name / record["predictions"])
    assert len(rows) == len(dataset.samples)
    truth = np.array([[float(r[f"true_{f}"]) for f in FINDINGS] for r in rows])
    scores = np.array([[float(r[f"score_{f}"]) for f in FINDINGS] for r in rows])
    predicted = np.array([[float(r[f"score_{f}"]) >= float(r[f"threshold_{f}"]) for f in FINDINGS] for r in rows])
    for f, name in enumerate(FINDINGS):
        assert per[name]["auroc"]["value"] == pytest.approx(skm.roc_auc_score(truth[:, f], scores[:, f]), abs=1e-12)
        assert per[name]["average_precision"]["value"] == pytest.approx(
            skm.average_precision_score(truth[:, f], scores[:, f]), abs=1e-12)
        assert per[name]["f1"]["value"] == pytest.approx(skm.f1_score(truth[:, f], predicted[:, f]), abs=1e-12)
        low, high = per[name]["auroc"]["ci"]
        assert low < per[name]["auroc"]["value"] < high
    metrics = record["metrics"]
    assert metrics["macro_auroc"]["value"] == pytest.approx(skm.roc_auc_score(truth, scores, average="macro"))
    assert metrics["micro_auroc"]["value"] == pytest.approx(skm.roc_auc_score(truth, scores, average="micro"))
    assert metrics["mean_average_precision"]["value"] == pytest.approx(
        skm.average_precision_score(truth, scores, average="macro"))
    assert metrics["macro_f1"]["value"] == pytest.approx(skm.f1_score(truth, predicted, average="macro"))
    assert {h["finding"] for h in record["hyperparameters"]} == set(FINDINGS) and len(record["hyperparameters"]) == 10
    # patient level: mean image score per finding, a patient positive when any of its images is
    patients = sorted({r["group"] for r in rows})
    members = {p: [i for i, r in enumerate(rows) if r["group"] == p] for p in patients}
    patient_truth = np.array([truth[members[p]].max(axis=0) for p in patients])
    patient_scores = np.array([scores[members[p]].mean(axis=0) for p in patients])
    block = record["patient_metrics"]
    assert block["patients"] == len(patients) == 80
    for f, name in enumerate(FINDINGS):
        assert block["per_finding"][name]["auroc"]["value"] == pytest.approx(
            skm.roc_auc_score(patient_truth[:, f], patient_scores[:, f]), abs=1e-12)


def test_thresholds_never_see_the_test_part(tmp_path):
    dataset, features = two_finding_study(tmp_path)
    plan = dataset_splits(dataset, folds=5, seed=0)
    first = probe(dataset=dataset, models=None, cache_dir=tmp_path / "cache", out_dir=tmp_path / "a",
                  settings=ProbeSettings(bootstrap=0, classifiers=("logreg", "knn")), show_progress=False)
    changed = features.copy()
    changed[plan.folds[0].test] = np.random.default_rng(9).normal(0, 5, changed[plan.folds[0].test].shape)
    write_cache(dataset, tmp_path / "cache2", "dinov2-small", {"cls": changed[:, :8], "mean": changed[:, 8:]})
    second = probe(dataset=dataset, models=None, cache_dir=tmp_path / "cache2", out_dir=tmp_path / "b",
                   settings=ProbeSettings(bootstrap=0, classifiers=("logreg", "knn")), show_progress=False)
    for before, after in zip(first, second, strict=True):
        fold0 = [(h["finding"], h["threshold"], h.get("C"), h.get("k")) for h in before["hyperparameters"]
                 if h["fold"] == 0]
        assert fold0 == [(h["finding"], h["threshold"], h.get("C"), h.get("k")) for h in after["hyperparameters"]
                         if h["fold"] == 0]
        assert before["per_finding"]["effusion"]["auroc"] != after["per_finding"]["effusion"]["auroc"]


def test_unknown_labels_are_left_out_of_their_findings_metrics(tmp_path):
    dataset, features = two_finding_study(tmp_path)
    lines = (tmp_path / "d" / "labels.csv").read_text().splitlines()
    header = "path,effusion,nodule,group"
    rows = []
    matrix = dataset.finding_matrix()
    for i, line in enumerate(lines[1:]):
        path, _, group, _ = line.split(",")
        nodule = "-1" if i % 5 == 0 else str(int(matrix[i, 1]))
        rows.append(f"{path},{int(matrix[i, 0])},{nodule},{group}")
    (tmp_path / "d" / "cols.csv").write_text("\n".join([header, *rows]) + "\n")
    (tmp_path / "d" / "cols.toml").write_text('manifest = "cols.csv"\nlabels = ["effusion", "nodule"]\n')
    columns = load_dataset(tmp_path / "d" / "cols.toml")
    write_cache(columns, tmp_path / "cache2", "dinov2-small", {"cls": features[:, :8], "mean": features[:, 8:]})
    [record] = probe(dataset=columns, models=None, cache_dir=tmp_path / "cache2", out_dir=tmp_path / "out",
                     settings=ProbeSettings(bootstrap=0), show_progress=False)
    assert record["per_finding"]["nodule"]["known"] == len(rows) - len(range(0, len(rows), 5))
    assert record["per_finding"]["effusion"]["known"] == len(rows)
    csv_rows = read_rows(tmp_path / "out" / columns.name / record["predictions"])
    assert sum(r["true_nodule"] == "" for r in csv_rows) == len(range(0, len(rows), 5))


def test_multilabel_refusals_name_the_option(tmp_path, capsys):
    dataset, _ = two_finding_study(tmp_path, n_patients=30)
    with pytest.raises(SystemExit) as info:
        main(["probe", str(dataset.source), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "o"),
              "--shots", "4"])
    assert info.value.code == 2 and "--shots is not available for multi-label datasets" in capsys.readouterr().err
    with pytest.raises(MedprobeError, match="finding 'effusion': only"):
        dataset_splits(dataset, folds=20, seed=0)


def test_the_report_has_a_findings_table_heatmap_and_summary_columns(tmp_path, capsys):
    from medprobe.report import build_report

    dataset, _ = two_finding_study(tmp_path)
    records = probe(dataset=dataset, models=None, cache_dir=tmp_path / "cache", out_dir=tmp_path / "out",
                    settings=ProbeSettings(bootstrap=100, classifiers=("logreg", "knn")), show_progress=False)
    report = build_report(results_dirs=[tmp_path / "out"], out_dir=tmp_path / "report", replicates=100)
    assert not report.content.problems and not report.tables  # not in the single-label tables, not a problem
    calibration, table = report.content.sections  # logreg's probabilities are calibrated; knn's are not
    assert calibration.title.endswith("calibration") and [row[1] for row in calibration.rows] == ["logreg", "knn"]
    logreg = next(r for r in records if r["method"] == "logreg")
    assert calibration.rows[0][3].startswith(f"{logreg['metrics']['ece']['value']:.3f} [")
    assert calibration.rows[1][3] == "not probabilities"
    assert table.columns == ["finding", "positives", "dinov2-small logreg", "dinov2-small knn"]
    effusion = next(row for row in table.rows if row[0] == "effusion")
    logreg = next(r for r in records if r["method"] == "logreg")
    assert effusion[2].startswith(f"{logreg['per_finding']['effusion']['auroc']['value']:.3f} [")
    assert [row[0] for row in table.rows][-5:] == ["macro AUROC", "micro AUROC", "mAP", "macro F1",
                                                   "paired test vs best macro AUROC"]
    macro = [r["metrics"]["macro_auroc"]["value"] for r in sorted(records, key=lambda r: r["method"] != "logreg")]
    paired = table.rows[-1][2:]
    assert paired[int(np.argmax(macro))] == "best" and paired[int(np.argmin(macro))].startswith("p")
    assert "AUROC per finding (multi-label)" in report.markdown.read_text()
    assert (tmp_path / "report" / "figures" / f"{dataset.name}__findings.png").is_file()
    with report.summary_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    assert {row["method"] for row in rows} == {"logreg", "knn"} and all(row["macro_auroc"] for row in rows)
    with pytest.raises(SystemExit) as info:  # the console shows the findings table as a dataset's own table
        main(["report", str(tmp_path / "out"), "--out", str(tmp_path / "report2"), "--bootstrap", "50"])
    out = capsys.readouterr().out
    assert info.value.code in (0, None) and "AUROC per finding (multi-label)" in out and "macro AUROC" in out


def test_probe_cli_prints_the_multilabel_summary_metrics(tmp_path, capsys):
    dataset, _ = two_finding_study(tmp_path, n_patients=40)
    with pytest.raises(SystemExit) as info:
        main(["probe", str(dataset.source), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "o"),
              "--bootstrap", "20"])
    out = capsys.readouterr().out
    assert info.value.code == 0 and "macro_auroc" in out and "mean_average_precision" in out


def test_multilabel_blocks_read_back_through_the_schema(tmp_path):
    from medprobe.report.records import RunRecord
    from medprobe.results.schema import to_json

    dataset, _ = two_finding_study(tmp_path, n_patients=40)
    [record] = probe(dataset=dataset, models=None, cache_dir=tmp_path / "cache", out_dir=tmp_path / "out",
                     settings=ProbeSettings(bootstrap=50), show_progress=False)
    read = RunRecord(Path(record["record_path"]), json.loads(Path(record["record_path"]).read_text()))
    assert read.findings == ["effusion", "nodule"] and to_json(read.per_finding) == record["per_finding"]
    assert to_json(read.patient_metrics) == record["patient_metrics"]
    assert set(read.patient_metrics.per_finding) == {"effusion", "nodule"}
    assert read.per_finding["effusion"].known == 80 and read.per_finding["effusion"].auroc.value > 0.85


def test_a_multilabel_external_cohort_is_scored_by_one_refit_per_finding_on_all_of_data(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    dataset, features = two_finding_study(tmp_path)
    tested, test_features = two_finding_study(tmp_path, n_patients=40, seed=5, root="site2", shift=0.6)
    features, test_features = (f.astype(np.float16).astype(np.float32) for f in (features, test_features))  # cached
    internal, external = probe(dataset=dataset, models=None, cache_dir=tmp_path / "cache", out_dir=tmp_path / "out",
                               settings=ProbeSettings(bootstrap=100), tested=tested, show_progress=False)
    assert internal["protocol"] == "kfold5" and external["protocol"] == "external"
    assert external["external"]["internal_record"] == Path(internal["record_path"]).name
    assert external["record_path"].endswith(f"__external-{tested.name}-seed0.json")
    [size] = external["sizes"]
    assert size["refit"] == len(dataset.samples) and size["test"] == len(tested.samples) == 80
    assert size["train"] + size["val"] == len(dataset.samples)
    rows = read_rows(tmp_path / "out" / dataset.name / external["predictions"])
    assert [r["id"] for r in rows] == tested.ids and {r["fold"] for r in rows} == {"-1"}
    truth = np.array([[float(r[f"true_{f}"]) for f in FINDINGS] for r in rows])
    scores = np.array([[float(r[f"score_{f}"]) for f in FINDINGS] for r in rows])
    for f, name in enumerate(FINDINGS):
        [chosen] = [h for h in external["hyperparameters"] if h["finding"] == name]
        assert {float(r[f"threshold_{name}"]) for r in rows} == {chosen["threshold"]}
        # the refit: a plain scikit-learn model with the recorded C on all of DATA gives the same scores
        labels = dataset.finding_matrix()[:, f]
        scaler = StandardScaler().fit(features)
        model = LogisticRegression(C=chosen["C"], tol=1e-4, max_iter=1000).fit(
            scaler.transform(features).astype(np.float32), labels)
        expected = model.predict_proba(scaler.transform(test_features).astype(np.float32))[:, 1]
        np.testing.assert_allclose(scores[:, f], expected, atol=1e-6)
        assert external["per_finding"][name]["auroc"]["value"] == pytest.approx(
            skm.roc_auc_score(truth[:, f], scores[:, f]), abs=1e-12)
    assert external["per_finding"]["effusion"]["auroc"]["value"] > 0.8  # the finding carries over to site 2


def test_multilabel_subgroups_recompute_from_the_predictions_csv(tmp_path):
    dataset, _ = two_finding_study(tmp_path)
    [record] = probe(dataset=dataset, models=None, cache_dir=tmp_path / "cache", out_dir=tmp_path / "out",
                     settings=ProbeSettings(bootstrap=100, subgroups=("sex",), subgroup_min=20), show_progress=False)
    rows = read_rows(tmp_path / "out" / dataset.name / record["predictions"])
    block = record["subgroups"]["columns"]["sex"]
    assert [g["value"] for g in block["groups"]] == ["F", "M"]
    for group in block["groups"]:
        mine = [r for r in rows if r["subgroup_sex"] == group["value"]]
        truth = np.array([[float(r[f"true_{f}"]) for f in FINDINGS] for r in mine])
        scores = np.array([[float(r[f"score_{f}"]) for f in FINDINGS] for r in mine])
        predicted = scores >= np.array([[float(r[f"threshold_{f}"]) for f in FINDINGS] for r in mine])
        assert group["samples"] == len(mine) == 80 and group["patients"] == 40
        metrics = group["metrics"]
        assert metrics["macro_auroc"]["value"] == pytest.approx(skm.roc_auc_score(truth, scores), abs=1e-12)
        assert metrics["macro_f1"]["value"] == pytest.approx(skm.f1_score(truth, predicted, average="macro"),
                                                             abs=1e-12)
        low, high = metrics["macro_auroc"]["ci"]
        assert low < metrics["macro_auroc"]["value"] < high
    assert {"ece", "brier", "nll"} <= set(block["groups"][0]["metrics"])  # logreg: probabilities
    values = {g["value"]: g["metrics"]["macro_auroc"]["value"] for g in block["groups"]}
    assert block["worst"]["macro_auroc"]["group"] == min(values, key=values.get)


def test_a_multilabel_external_cohort_needs_the_same_findings_and_kind(tmp_path, capsys):
    dataset, _ = two_finding_study(tmp_path)
    rows = [f"{'effusion|pleural_thickening' if i % 3 else ''},p{i},F" for i in range(20)]
    other = load_dataset(write_multilabel(tmp_path / "other", rows, header="path,labels,group,sex"))
    with pytest.raises(MedprobeError, match=r"finding\(s\) pleural_thickening not in .*; no finding nodule"):
        probe(dataset=dataset, models=None, cache_dir=tmp_path / "cache", out_dir=tmp_path / "out",
              settings=ProbeSettings(bootstrap=10), tested=other, show_progress=False)
    single = tmp_path / "single"
    (single / "img").mkdir(parents=True)
    from PIL import Image

    for i in range(4):
        Image.new("L", (2, 2), i).save(single / "img" / f"{i}.png")
    (single / "labels.csv").write_text("path,label\n" + "".join(f"img/{i}.png,{'ab'[i % 2]}\n" for i in range(4)))
    with pytest.raises(SystemExit) as info:
        main(["probe", str(dataset.source), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "o"),
              "--test", str(single / "labels.csv")])
    assert info.value.code == 2 and "is single-label but" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").rglob("*.json"))


def _ece(truth: np.ndarray, p: np.ndarray, bins: int = 15) -> float:
    """Equal-mass ECE of a binary problem written out: top-class confidence max(p, 1-p), sorted (stable) and
    cut by rank * bins // n, then sum over bins of |sum(confidence - correct)| / n."""
    confidence = np.maximum(p, 1 - p)
    correct = (p >= 0.5) == (truth == 1)
    order = np.argsort(confidence, kind="mergesort")
    bin_of = np.empty(len(p), dtype=int)
    bin_of[order] = np.arange(len(p)) * bins // len(p)
    gaps = confidence - correct
    return float(sum(abs(gaps[bin_of == b].sum()) for b in range(bins)) / len(p))


def test_multilabel_calibration_per_finding_recomputes_and_temperature_scaling_is_fitted_on_validation(tmp_path):
    dataset, _ = two_finding_study(tmp_path)
    records = probe(dataset=dataset, models=None, cache_dir=tmp_path / "cache", out_dir=tmp_path / "out",
                    settings=ProbeSettings(bootstrap=100, classifiers=("logreg", "svm"), calibrate="temperature"),
                    show_progress=False)
    logreg, svm = (next(r for r in records if r["method"] == m) for m in ("logreg", "svm"))
    assert not svm["calibration"]["scores_are_probabilities"] and "ece" not in svm["metrics"]
    assert not svm["calibrated"]["applied"] and "not probabilities" in svm["calibrated"]["why"]
    assert logreg["calibration"]["scores_are_probabilities"] and logreg["calibration"]["ece_bins"] == 15
    rows = read_rows(tmp_path / "out" / dataset.name / logreg["predictions"])
    truth = np.array([[float(r[f"true_{f}"]) for f in FINDINGS] for r in rows])
    scores = np.array([[float(r[f"score_{f}"]) for f in FINDINGS] for r in rows])
    folds = np.array([int(r["fold"]) for r in rows])
    for f, name in enumerate(FINDINGS):
        entry = logreg["per_finding"][name]
        assert entry["brier"]["value"] == pytest.approx(skm.brier_score_loss(truth[:, f], scores[:, f]), abs=1e-12)
        assert entry["nll"]["value"] == pytest.approx(skm.log_loss(truth[:, f], scores[:, f]), abs=1e-9)
        assert entry["ece"]["value"] == pytest.approx(_ece(truth[:, f], scores[:, f]), abs=1e-12)
    assert logreg["metrics"]["brier"]["value"] == pytest.approx(
        np.mean([skm.brier_score_loss(truth[:, f], scores[:, f]) for f in range(2)]), abs=1e-12)
    # the calibrated metrics: each fold's recorded temperature per finding applied to its test scores
    temperatures = {(e["fold"], e["finding"]): e["temperature"] for e in logreg["calibrated"]["per_fold"]}
    assert len(temperatures) == 5 * 2
    scaled = scores.copy()
    for (fold, name), temperature in temperatures.items():
        rows_of = folds == fold
        f = FINDINGS.index(name)
        two = np.stack([1 - scores[rows_of, f], scores[rows_of, f]], axis=1)
        logits = np.log(np.maximum(two, np.finfo(np.float64).eps)) / temperature  # floored, as documented
        logits -= logits.max(axis=1, keepdims=True)  # the stable softmax (a tail of 1e-10 needs it at 1e-9)
        scaled[rows_of, f] = np.exp(logits[:, 1]) / np.exp(logits).sum(axis=1)
    expected = np.mean([skm.brier_score_loss(truth[:, f], scaled[:, f]) for f in range(2)])
    assert logreg["calibrated"]["metrics"]["brier"]["value"] == pytest.approx(expected, abs=1e-9)
    eps = np.finfo(np.float64).eps  # -log p(true), p floored at eps (log_loss clips and renormalises instead)
    nll = [np.mean(-np.log(np.maximum(np.where(truth[:, f] == 1, scaled[:, f], 1 - scaled[:, f]), eps)))
           for f in range(2)]
    assert logreg["calibrated"]["metrics"]["nll"]["value"] == pytest.approx(np.mean(nll), abs=1e-9)

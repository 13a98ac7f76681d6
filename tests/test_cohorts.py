"""External test cohorts (--test) and subgroup analysis (--subgroups): records recomputed from their
predictions CSVs, errors that name the fix."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from probe_helpers import synthetic_study
from sklearn import metrics as skm
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from medprobe.cli import main
from medprobe.errors import MedprobeError
from medprobe.probe.runner import ProbeSettings, probe


def two_class_features(n: int, dim: int, signal: np.ndarray, seed: int, shift: float = 0.0):
    """Labels a/b alternating; class b's mean moved by `signal` (per sample, so signal varies by subgroup)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    direction = np.zeros(dim)
    direction[: dim // 2] = 1.0
    features = rng.normal(0, 1, (n, dim)) + np.outer(y * signal, direction) + shift
    return ["a" if v == 0 else "b" for v in y], features.astype(np.float32)


def read_predictions(path):
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_subgroup_metrics_recompute_from_the_predictions_csv_and_small_groups_are_not_scored(tmp_path):
    n = 240
    sex = ["F" if i % 3 else "M" for i in range(n)]  # 160 F, 80 M
    site = ["tiny" if i < 12 else "main" for i in range(n)]  # 12 samples: under the minimum of 20
    signal = np.array([0.8 if s == "F" else 0.15 for s in sex])  # the model is worse on M by construction
    labels, features = two_class_features(n, 16, signal, seed=3)
    age = ["" if i % 7 == 0 else "50+" for i in range(n)]
    dataset = synthetic_study(tmp_path / "d", tmp_path / "cache", labels, features,
                              columns={"sex": sex, "site": site, "age": age})
    [record] = probe(dataset=dataset, models=None, cache_dir=tmp_path / "cache", out_dir=tmp_path / "out",
                     settings=ProbeSettings(bootstrap=200, subgroups=("sex", "site", "age")), show_progress=False)
    block = record["subgroups"]
    assert block["min_samples"] == 20
    rows = read_predictions(tmp_path / "out" / dataset.name / record["predictions"])
    assert len(rows) == n and {"subgroup_sex", "subgroup_site", "subgroup_age"} <= set(rows[0])
    sex_block = block["columns"]["sex"]
    for entry in sex_block["groups"]:
        members = [r for r in rows if r["subgroup_sex"] == entry["value"]]
        truth = [r["label"] for r in members]
        assert entry["samples"] == len(members)
        assert entry["metrics"]["balanced_accuracy"]["value"] == pytest.approx(
            skm.balanced_accuracy_score(truth, [r["prediction"] for r in members]), abs=1e-12)
        assert entry["metrics"]["auroc"]["value"] == pytest.approx(
            skm.roc_auc_score([t == "b" for t in truth], [float(r["score_b"]) for r in members]), abs=1e-12)
        probabilities = np.array([[float(r["score_a"]), float(r["score_b"])] for r in members])
        onehot = np.array([[t == "a", t == "b"] for t in truth], dtype=float)
        assert entry["metrics"]["brier"]["value"] == pytest.approx(  # both columns, as scikit-learn's 2-class Brier
            0.5 * ((probabilities - onehot) ** 2).sum(axis=1).mean(), abs=1e-12)
        low, high = entry["metrics"]["balanced_accuracy"]["ci"]
        assert low <= entry["metrics"]["balanced_accuracy"]["value"] <= high and high - low > 0
    values = {e["value"]: e["metrics"]["balanced_accuracy"]["value"] for e in sex_block["groups"]}
    assert values["M"] < values["F"] - 0.15
    assert sex_block["worst"]["balanced_accuracy"] == {"group": "M", "value": values["M"]}
    assert sex_block["largest_gap"]["balanced_accuracy"] == pytest.approx(values["F"] - values["M"])
    ece = {e["value"]: e["metrics"]["ece"]["value"] for e in sex_block["groups"]}
    assert sex_block["worst"]["ece"]["value"] == max(ece.values())  # lower is better: the worst is the highest
    tiny = next(e for e in block["columns"]["site"]["groups"] if e["value"] == "tiny")
    assert tiny == {"value": "tiny", "samples": 12, "patients": 12, "too_small": True}
    assert block["columns"]["site"]["largest_gap"] == {}  # one group scored: no gap
    blank = next(e for e in block["columns"]["age"]["groups"] if e["value"] == "(blank)")
    assert blank["samples"] == sum(1 for i in range(n) if i % 7 == 0)


def test_an_unknown_subgroup_column_is_one_error_naming_the_columns_there(tmp_path, capsys):
    labels, features = two_class_features(60, 8, np.full(60, 2.0), seed=0)
    dataset = synthetic_study(tmp_path / "d", tmp_path / "cache", labels, features, columns={"sex": ["F"] * 60})
    with pytest.raises(MedprobeError, match=r"no column site; its other columns are: sex"):
        probe(dataset=dataset, models=None, cache_dir=tmp_path / "cache", out_dir=tmp_path / "out",
              settings=ProbeSettings(bootstrap=0, subgroups=("site",)), show_progress=False)
    with pytest.raises(SystemExit) as info:
        main(["probe", str(dataset.source), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "o"),
              "--subgroups", "sex", "--subgroup-min", "0"])
    assert info.value.code == 2 and "--subgroup-min 0 must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def external_study(tmp_path, shift: float, classes=("a", "b")):
    labels, features = two_class_features(200, 16, np.full(200, 1.6), seed=1)
    data = synthetic_study(tmp_path / "site1", tmp_path / "cache", labels, features,
                           groups=[f"p{i // 2}" for i in range(200)])
    test_labels, test_features = two_class_features(120, 16, np.full(120, 1.6), seed=2, shift=shift)
    test_labels = [label if label in classes else classes[-1] for label in test_labels]
    tested = synthetic_study(tmp_path / "site2", tmp_path / "cache", test_labels, test_features,
                             columns={"sex": ["F" if i % 2 else "M" for i in range(120)]})
    return data, tested, features, test_features


def test_an_external_cohort_is_scored_by_one_refit_on_all_of_data(tmp_path):
    data, tested, features, test_features = external_study(tmp_path, shift=0.0)
    records = probe(dataset=data, models=None, cache_dir=tmp_path / "cache", out_dir=tmp_path / "out",
                    settings=ProbeSettings(bootstrap=200, calibrate="temperature"), tested=tested, show_progress=False)
    internal, external = records
    assert internal["protocol"] == "kfold5" and external["protocol"] == "external"
    assert external["external"]["dataset"]["name"] == tested.name
    assert external["external"]["internal_record"] == internal["record_path"].rsplit("/", 1)[1]
    assert external["sizes"] == [{"fold": -1, "train": external["sizes"][0]["train"],
                                  "val": external["sizes"][0]["val"], "test": 120, "refit": 200}]
    assert external["sizes"][0]["train"] + external["sizes"][0]["val"] == 200
    rows = read_predictions(tmp_path / "out" / data.name / external["predictions"])
    assert [r["id"] for r in rows] == tested.ids and {r["fold"] for r in rows} == {"-1"}
    # the refit: a plain scikit-learn model with the recorded C on all of DATA gives the same test scores
    C = external["hyperparameters"][0]["C"]
    scaler = StandardScaler().fit(features)
    model = LogisticRegression(C=C, tol=1e-4, max_iter=1000).fit(scaler.transform(features).astype(np.float32),
                                                                 np.arange(200) % 2)
    expected = model.predict_proba(scaler.transform(test_features).astype(np.float32))[:, 1]
    np.testing.assert_allclose([float(r["score_b"]) for r in rows], expected, atol=1e-4)
    truth = [r["label"] for r in rows]
    assert external["metrics"]["balanced_accuracy"]["value"] == pytest.approx(
        skm.balanced_accuracy_score(truth, [r["prediction"] for r in rows]), abs=1e-12)
    assert external["calibrated"]["applied"] and external["calibrated"]["per_fold"][0]["fold"] == -1
    assert external["bootstrap"]["unit"] == "sample"  # the external cohort has no groups; DATA had patients


def test_a_shifted_external_cohort_scores_lower_than_the_internal_estimate(tmp_path):
    data, tested, *_ = external_study(tmp_path, shift=1.2)
    internal, external = probe(dataset=data, models=None, cache_dir=tmp_path / "cache", out_dir=tmp_path / "out",
                               settings=ProbeSettings(bootstrap=200), tested=tested, show_progress=False)
    inside = internal["metrics"]["balanced_accuracy"]["value"]
    outside = external["metrics"]["balanced_accuracy"]["value"]
    assert inside > 0.75 and outside < inside - 0.1


def test_external_subgroups_are_the_cohorts_own(tmp_path):
    data, tested, *_ = external_study(tmp_path, shift=0.0)
    with pytest.raises(MedprobeError, match="no column sex"):  # DATA itself lacks the column
        probe(dataset=data, models=None, cache_dir=tmp_path / "cache", out_dir=tmp_path / "out",
              settings=ProbeSettings(bootstrap=0, subgroups=("sex",)), tested=tested, show_progress=False)


def test_external_classes_must_match_and_the_error_names_the_missing_ones(tmp_path, capsys):
    data, tested, *_ = external_study(tmp_path, shift=0.0, classes=("a", "c"))
    with pytest.raises(SystemExit) as info:
        main(["probe", str(data.source), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "o"),
              "--test", str(tested.source)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "class(es) c not in" in err and "no sample of b" in err
    assert not (tmp_path / "o").exists()


def test_probe_cli_writes_internal_and_external_records(tmp_path):
    data, tested, *_ = external_study(tmp_path, shift=0.0)
    with pytest.raises(SystemExit) as info:
        main(["probe", str(data.source), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "o"),
              "--test", str(tested.source), "--bootstrap", "50", "--clf", "logreg,knn"])
    assert info.value.code == 0
    names = sorted(p.name for p in (tmp_path / "o" / data.name).glob("*.json"))
    assert len(names) == 4 and sum("__external-site2-labels-seed0" in name for name in names) == 2
    knn = json.loads(next((tmp_path / "o" / data.name).glob("*knn__external*.json")).read_text())
    assert knn["protocol"] == "external" and knn["hyperparameters"][0]["fold"] == -1


def test_the_report_shows_internal_beside_external_and_the_subgroup_tables_and_figure(tmp_path):
    from medprobe.report import build_report

    labels, features = two_class_features(200, 16, np.full(200, 1.0), seed=1)
    sex = ["F" if i % 3 else "M" for i in range(200)]
    data = synthetic_study(tmp_path / "site1", tmp_path / "cache", labels, features, columns={"sex": sex})
    test_labels, test_features = two_class_features(120, 16, np.full(120, 1.0), seed=2, shift=0.8)
    tested = synthetic_study(tmp_path / "site2", tmp_path / "cache", test_labels, test_features,
                             columns={"sex": ["F" if i % 2 else "M" for i in range(120)]})
    internal, external = probe(dataset=data, models=None, cache_dir=tmp_path / "cache", out_dir=tmp_path / "out",
                               settings=ProbeSettings(bootstrap=100, subgroups=("sex",), calibrate="temperature"),
                               tested=tested, show_progress=False)
    from medprobe.results.schema import ExternalInfo, Subgroups, to_json

    for record in (internal, external):  # the schema's dataclasses read back exactly what was written
        assert to_json(Subgroups.from_json(record["subgroups"])) == json.loads(json.dumps(record["subgroups"]))
    assert ExternalInfo.from_json(external["external"]).to_dict() == external["external"]
    report = build_report(results_dirs=[tmp_path / "out"], out_dir=tmp_path / "report", replicates=100)
    assert not [p for p in report.content.problems if "newer record" in p.reason]  # external never shadows
    [table] = [t for t in report.tables if t.level == "sample"]
    assert table.rows[0].cells["logreg"].record.protocol == "kfold5"
    markdown = report.markdown.read_text()
    value = f"{external['metrics']['accuracy']['value']:.3f}"
    line = next(row for row in markdown.splitlines() if row.startswith("| dinov2-small | logreg | site2-labels"))
    assert f"{internal['metrics']['accuracy']['value']:.3f} [" in line and f"| {value} [" in line
    assert "internal vs external test (accuracy)" in markdown and "accuracy by sex" in markdown
    by_sex = next(t for t in report.content.sections if t.title.endswith("accuracy by sex"))
    assert [row[2] for row in by_sex.rows] == ["kfold5", "external: site2-labels"] and by_sex.columns[3:5] == ["F", "M"]
    assert (tmp_path / "report" / "figures" / f"{data.name}__subgroups.png").is_file()
    with report.summary_csv.open() as handle:
        rows = {row["protocol"]: row for row in csv.DictReader(handle)}
    assert rows["external"]["external_cohort"] == "site2-labels" and rows["kfold5"]["external_cohort"] == ""
    worst = internal["subgroups"]["columns"]["sex"]["worst"]["accuracy"]
    assert rows["kfold5"]["worst_subgroup_accuracy"] == f"sex={worst['group']}"
    calibration = next(t for t in report.content.sections if t.title.endswith(": calibration"))
    assert calibration.columns[3:] == ["ECE", "Brier", "NLL", "ECE calibrated", "Brier calibrated", "NLL calibrated",
                                       "temperature per fold (and finding)"]
    for row, record in zip(calibration.rows, (internal, external), strict=True):  # raw, then after temperature
        ece, after = record["metrics"]["ece"], record["calibrated"]["metrics"]["ece"]
        assert row[3] == f"{ece['value']:.3f} [{ece['ci'][0]:.3f}, {ece['ci'][1]:.3f}]"
        assert row[6] == f"{after['value']:.3f} [{after['ci'][0]:.3f}, {after['ci'][1]:.3f}]"
        assert row[9] == ", ".join(f"{f['temperature']:.2f}" for f in record["calibrated"]["per_fold"])


def test_an_external_cohort_that_shares_images_with_data_is_refused(tmp_path):
    data, *_ = external_study(tmp_path, shift=0.0)
    with pytest.raises(MedprobeError, match="it shares images with .*; an external test set must be other images"):
        probe(dataset=data, models=None, cache_dir=tmp_path / "cache", out_dir=tmp_path / "out",
              settings=ProbeSettings(bootstrap=0), tested=data, show_progress=False)
    assert not (tmp_path / "out").exists()


def test_two_datasets_whose_records_share_file_names_each_get_their_sections(tmp_path):
    from medprobe.report import build_report

    for name, seed in (("one", 1), ("two", 2)):  # the same backbone and classifier: the same record file names
        labels, features = two_class_features(80, 16, np.full(80, 1.0), seed=seed)
        data = synthetic_study(tmp_path / name, tmp_path / "cache", labels, features)
        probe(dataset=data, models=None, cache_dir=tmp_path / "cache", out_dir=tmp_path / "out",
              settings=ProbeSettings(bootstrap=50, classifiers=("logreg",), calibrate="temperature"),
              show_progress=False)
    report = build_report(results_dirs=[tmp_path / "out"], out_dir=tmp_path / "report", replicates=50)
    tables = {t.dataset: t for t in report.content.sections if t.title.endswith(": calibration")}
    assert set(tables) == {"one-labels", "two-labels"}
    assert all([row[1:3] for row in t.rows] == [["logreg", "kfold5"]] for t in tables.values())

"""The run record's schema module: one header for every record, file names built in one place, and
schema-1 records still readable by the report."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from probe_helpers import synthetic_study

from medprobe.probe.runner import ProbeSettings, probe
from medprobe.report import build_report
from medprobe.report.records import RunRecord
from medprobe.results.schema import RECORD_SCHEMA, MetricValue, RecordHeader, metrics_from_json, record_name, to_json


def study(tmp_path, **settings):
    rng = np.random.default_rng(0)
    labels = ["a", "b"] * 40
    features = rng.normal(0, 1, (80, 8)).astype(np.float32) + np.array([[0.0], [1.5]] * 40, dtype=np.float32)
    groups = [f"p{i % 40}" for i in range(80)]  # two images per patient, one label
    dataset = synthetic_study(tmp_path / "d", tmp_path / "cache", labels, features, groups=groups)
    [record] = probe(dataset=dataset, models=None, cache_dir=tmp_path / "cache", out_dir=tmp_path / "out",
                     settings=ProbeSettings(bootstrap=50, **settings), show_progress=False)
    return dataset, record


def test_every_typed_block_reads_back_what_was_written_and_callers_get_the_files_json(tmp_path):
    _, record = study(tmp_path, calibrate="temperature")
    on_disk = json.loads(open(record["record_path"]).read())
    assert record == on_disk  # what probe() returns is the file, not the objects it was built from
    read = RunRecord(Path(record["record_path"]), on_disk)
    assert to_json(read.metrics) == on_disk["metrics"] and set(read.metrics) >= {"auroc", "ece", "brier", "nll"}
    assert to_json(metrics_from_json(on_disk["per_class_recall"])) == on_disk["per_class_recall"]
    assert to_json(read.calibration) == on_disk["calibration"] and read.calibration.scores_are_probabilities
    assert to_json(read.calibrated) == on_disk["calibrated"] and read.calibrated.applied
    assert set(read.calibrated.metrics) == {"ece", "brier", "nll"}
    assert to_json(read.patient_metrics) == on_disk["patient_metrics"] and read.patient_metrics.patients == 40
    assert to_json(read.sizes) == on_disk["sizes"] and sum(s.test for s in read.sizes) == 80
    assert to_json(read.confusion) == on_disk["confusion_matrix"] and np.sum(read.confusion.matrix) == 80
    entry = read.metrics["accuracy"]  # a k-fold metric carries its fold spread; a missing CI reads None
    assert entry.fold_mean is not None and entry.ci[0] <= entry.value <= entry.ci[1]
    assert MetricValue.from_json({"value": float("nan"), "ci": [0.1]}) == MetricValue(None, None)
    assert to_json(MetricValue(0.5, (0.25, float("inf")))) == {"value": 0.5, "ci": [0.25, None]}


def test_every_record_opens_with_the_typed_header_and_its_name_comes_from_record_name(tmp_path):
    dataset, record = study(tmp_path)
    header_fields = [f.name for f in fields(RecordHeader)]
    assert list(record)[:len(header_fields)] == ["schema", *[f for f in header_fields if f != "schema"]]
    assert record["schema"] == RECORD_SCHEMA == "medprobe.run/2" and record["task"] == "single-label"
    assert record["record_path"].endswith(record_name("dinov2-small", "logreg", "kfold5", 0, pool="cls+mean") +
                                          ".json")
    assert record_name("resnet18", "finetune-all", "kfold5", 3) == "resnet18__finetune-all__kfold5-seed3"
    with pytest.raises(ValueError, match="task 'regression' is not one of single-label, multilabel"):
        RecordHeader(**{**{f.name: None for f in fields(RecordHeader)}, "task": "regression"})


def test_schema_1_records_still_load_in_the_report_and_unknown_schemas_are_listed(tmp_path):
    dataset, record = study(tmp_path)
    path = tmp_path / "out" / dataset.name / record["record_path"].rsplit("/", 1)[1]
    old = json.loads(path.read_text())
    old["schema"] = "medprobe.run/1"
    del old["task"]  # schema 1 had no task
    path.write_text(json.dumps(old))
    report = build_report(results_dirs=[tmp_path / "out"], out_dir=tmp_path / "report", replicates=50)
    [table] = [t for t in report.tables if t.level == "sample"]
    cell = table.rows[0].cells["logreg"]
    assert cell.value == record["metrics"]["accuracy"]["value"] and cell.record.data["task"] == "single-label"
    old["schema"] = "medprobe.run/9"
    path.write_text(json.dumps(old))
    with pytest.raises(Exception, match="schema medprobe.run/9 is not one of medprobe.run/1, medprobe.run/2"):
        build_report(results_dirs=[tmp_path / "out"], out_dir=tmp_path / "report2", replicates=50)

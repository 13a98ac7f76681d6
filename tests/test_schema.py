"""The run record's schema module: one header for every record, file names built in one place, and
schema-1 records still readable by the report."""

from __future__ import annotations

import json
from dataclasses import fields

import numpy as np
import pytest
from probe_helpers import synthetic_study

from medprobe.probe.runner import ProbeSettings, probe
from medprobe.report import build_report
from medprobe.results.schema import RECORD_SCHEMA, RecordHeader, record_name


def study(tmp_path):
    rng = np.random.default_rng(0)
    labels = ["a", "b"] * 40
    features = rng.normal(0, 1, (80, 8)).astype(np.float32) + np.array([[0.0], [1.5]] * 40, dtype=np.float32)
    dataset = synthetic_study(tmp_path / "d", tmp_path / "cache", labels, features)
    [record] = probe(dataset=dataset, models=None, cache_dir=tmp_path / "cache", out_dir=tmp_path / "out",
                     settings=ProbeSettings(bootstrap=50), show_progress=False)
    return dataset, record


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

"""Run records: `<out>/<dataset>/<name>.json` plus `<name>.predictions.csv`.

The JSON holds what was run (method, model(s), pool, protocol, seed, split sizes, chosen hyperparameters,
cache provenance, timings) and `metrics.<name>.value` / `.ci` ([low, high], 95% bootstrap). The CSV holds
one row per test prediction: id, group, fold, label, prediction, and one score column per class, so every
metric can be recomputed from it. Both are written to a temporary name and renamed, so a crash never
leaves a record that looks complete.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medprobe import __version__
from medprobe.data.samples import Dataset
from medprobe.data.splits import SplitPlan
from medprobe.results.schema import (
    RECORD_SCHEMA,
    SINGLE_LABEL,
    BootstrapInfo,
    DatasetInfo,
    FoldSize,
    RecordHeader,
    to_json,
)
from medprobe.results.subgroups import CSV_PREFIX as SUBGROUP_CSV_PREFIX
from medprobe.results.subgroups import subgroup_values
from medprobe.timestamps import now_iso


def safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+" else "-" for c in text).strip("-")


def record_paths(out_dir: Path, dataset_name: str, name: str) -> tuple[Path, Path]:
    folder = Path(out_dir) / safe_name(dataset_name)
    base = safe_name(name)
    return folder / f"{base}.json", folder / f"{base}.predictions.csv"


EXPLAIN_SUFFIX = ".explain"  # `medprobe explain` writes its overlays into <record stem>.explain/ beside it
EXPLAIN_INDEX = "explain.json"


def explanation_dir(record_path: Path) -> Path:
    return Path(record_path).with_name(Path(record_path).stem + EXPLAIN_SUFFIX)


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".partial")
    with temporary.open("w", newline="") as handle:
        write(handle)
    os.replace(temporary, path)


def write_predictions(path: Path, *, ids: Sequence[str], groups: Sequence[str | None], folds: Sequence[int],
                      labels: Sequence[str], classes: Sequence[str], scores: np.ndarray,
                      subgroups: dict[str, list[str]] | None = None) -> None:
    """`subgroups`: column -> each row's value, written as subgroup_<column> after the scores."""
    subgroups = subgroups or {}

    def write(handle) -> None:
        writer = csv.writer(handle)
        writer.writerow(["id", "group", "fold", "label", "prediction", *(f"score_{c}" for c in classes),
                         *(f"{SUBGROUP_CSV_PREFIX}{column}" for column in subgroups)])
        predictions = np.asarray(classes, dtype=object)[scores.argmax(axis=1)]
        for i, sample_id in enumerate(ids):
            writer.writerow([sample_id, groups[i] or "", folds[i], labels[i], predictions[i],
                             *(repr(float(v)) for v in scores[i]), *(values[i] for values in subgroups.values())])

    _atomic_write(path, write)


def write_multilabel_predictions(path: Path, *, ids: Sequence[str], groups: Sequence[str | None],
                                 folds: Sequence[int], findings: Sequence[str], truth: np.ndarray, scores: np.ndarray,
                                 thresholds: np.ndarray, subgroups: dict[str, list[str]] | None = None) -> None:
    """One row per test image: id, group, fold, then per finding true_<f> (1, 0, or empty: unknown), score_<f>
    and threshold_<f> (the fold's; predicted present: score >= threshold), then subgroup_<column> per
    `subgroups` column, so every multi-label metric recomputes from it."""
    subgroups = subgroups or {}

    def write(handle) -> None:
        writer = csv.writer(handle)
        writer.writerow(["id", "group", "fold", *(f"{kind}_{f}" for f in findings
                                                  for kind in ("true", "score", "threshold")),
                         *(f"{SUBGROUP_CSV_PREFIX}{column}" for column in subgroups)])
        for i, sample_id in enumerate(ids):
            cells = []
            for f in range(len(findings)):
                cells += ["" if np.isnan(truth[i, f]) else int(truth[i, f]), repr(float(scores[i, f])),
                          repr(float(thresholds[i, f]))]
            writer.writerow([sample_id, groups[i] or "", folds[i], *cells,
                             *(values[i] for values in subgroups.values())])

    _atomic_write(path, write)


def save_multilabel_run(out_dir: Path, dataset: Dataset, name: str, record: dict, positions: np.ndarray,
                        fold_of: np.ndarray, scores: np.ndarray, thresholds: np.ndarray, *,
                        subgroups: Sequence[str] = (), folder: str | None = None) -> dict:
    """save_run for a multi-label run: the predictions CSV (write_multilabel_predictions) of `dataset`'s images
    at `positions`, then the record."""
    json_path, csv_path = record_paths(out_dir, folder or dataset.name, name)
    chosen = [dataset.samples[i] for i in positions]
    write_multilabel_predictions(csv_path, ids=[c.id for c in chosen], groups=[c.group for c in chosen],
                                 folds=fold_of.tolist(), findings=dataset.findings,
                                 truth=dataset.finding_matrix()[positions], scores=scores, thresholds=thresholds,
                                 subgroups={column: subgroup_values(dataset, positions, column)
                                            for column in subgroups})
    record["predictions"] = csv_path.name
    record["record_path"] = str(json_path)
    return write_record(json_path, record)


def write_record(path: Path, record: dict) -> dict:
    """Write the record atomically as JSON (results.schema.to_json) and return that JSON form, which is what
    callers hand on (the API, the console tables), so what they read is what the file says."""
    data = to_json({"schema": RECORD_SCHEMA, **record})  # the header's own schema, or the current one
    _atomic_write(path, lambda handle: json.dump(data, handle, indent=2, sort_keys=False))
    return data


def run_header(dataset: Dataset, plan: SplitPlan, *, kind: str, method: str, model: str, pool: str,
               protocol: str, seed: int, bootstrap: int, ordinal: bool, task: str = SINGLE_LABEL) -> dict:
    """What every run record opens with, for probe and finetune alike (results.schema.RecordHeader)."""
    return RecordHeader(
        kind=kind, task=task, method=method, model=model, pool=pool, protocol=protocol,
        dataset=DatasetInfo(dataset.name, str(dataset.source), len(dataset.samples), list(dataset.classes),
                            dict(dataset.class_counts()), plan.grouped),
        seed=seed, folds=len(plan.folds), split_protocol=plan.protocol,
        bootstrap=BootstrapInfo(bootstrap, "patient" if plan.grouped else "sample", seed),
        ordinal=ordinal, medprobe_version=__version__, created_at=now_iso()).to_dict()


def fold_sizes(folds) -> list[FoldSize]:
    return [FoldSize(f.index, len(f.train), len(f.val), len(f.test)) for f in folds]


def save_run(out_dir: Path, dataset: Dataset, name: str, record: dict, positions: np.ndarray,
             fold_of: np.ndarray, scores: np.ndarray, *, subgroups: Sequence[str] = (),
             folder: str | None = None) -> dict:
    """Write the predictions CSV of the test samples of `dataset` at `positions` (with their `subgroups`
    columns), then the record that points to it, under <out>/<folder or the dataset's name>/."""
    json_path, csv_path = record_paths(out_dir, folder or dataset.name, name)
    chosen = [dataset.samples[i] for i in positions]
    write_predictions(csv_path, ids=[s.id for s in chosen], groups=[s.group for s in chosen],
                      folds=fold_of.tolist(), labels=[s.label for s in chosen], classes=dataset.classes,
                      scores=scores, subgroups={column: subgroup_values(dataset, positions, column)
                                                for column in subgroups})
    record["predictions"] = csv_path.name
    record["record_path"] = str(json_path)
    return write_record(json_path, record)


def read_record(path: Path) -> dict:
    with Path(path).open() as handle:
        return json.load(handle)

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

RECORD_SCHEMA = "medprobe.run/1"


def safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+" else "-" for c in text).strip("-")


def record_paths(out_dir: Path, dataset_name: str, name: str) -> tuple[Path, Path]:
    folder = Path(out_dir) / safe_name(dataset_name)
    base = safe_name(name)
    return folder / f"{base}.json", folder / f"{base}.predictions.csv"


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".partial")
    with temporary.open("w", newline="") as handle:
        write(handle)
    os.replace(temporary, path)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def write_predictions(path: Path, *, ids: Sequence[str], groups: Sequence[str | None], folds: Sequence[int],
                      labels: Sequence[str], classes: Sequence[str], scores: np.ndarray) -> None:
    def write(handle) -> None:
        writer = csv.writer(handle)
        writer.writerow(["id", "group", "fold", "label", "prediction", *(f"score_{c}" for c in classes)])
        predictions = np.asarray(classes, dtype=object)[scores.argmax(axis=1)]
        for i, sample_id in enumerate(ids):
            writer.writerow([sample_id, groups[i] or "", folds[i], labels[i], predictions[i],
                             *(repr(float(v)) for v in scores[i])])

    _atomic_write(path, write)


def write_record(path: Path, record: dict) -> None:
    record = {"schema": RECORD_SCHEMA, **record}
    _atomic_write(path, lambda handle: json.dump(_jsonable(record), handle, indent=2, sort_keys=False))


def read_record(path: Path) -> dict:
    with Path(path).open() as handle:
        return json.load(handle)

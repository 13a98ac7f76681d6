"""Finding and validating run records (probe and finetune JSON + predictions CSV) for the report.

A record that cannot be used (not JSON, not a medprobe record, no metrics, an interrupted write) becomes a
`Problem` that the report lists; it never stops the report. Torch-free.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from medprobe.errors import MedprobeError
from medprobe.results.metrics import CONFUSION_METRICS
from medprobe.results.record import EXPLAIN_SUFFIX
from medprobe.results.schema import (
    MULTILABEL,
    READABLE_SCHEMAS,
    RECORD_SCHEMA,
    SCHEMA_FAMILY,
    Calibrated,
    Calibration,
    ConfusionMatrix,
    Cost,
    ExternalInfo,
    FindingMetrics,
    FoldSize,
    MetricValue,
    PatientMetrics,
    Subgroups,
    findings_from_json,
    metrics_from_json,
    number,
    upgrade,
)

REPORT_METRICS = (*CONFUSION_METRICS, "auroc", "kappa_quadratic")
LEVELS = ("sample", "patient")


@dataclass
class Problem:
    path: Path
    reason: str
    skipped: bool  # False: the record is reported, with gaps


@dataclass
class Backbone:
    """What a table row says about the backbone beside its scores."""

    parameters: float | None = None
    embed_dim: str | None = None
    images_per_second: float | None = None
    device_name: str | None = None
    peak_memory_mb: float | None = None  # of the extraction (the process's peak RSS on a CPU)
    licence: str | None = None  # the registry's licence of the weights; None for arbitrary checkpoints


@dataclass
class Predictions:
    """Test predictions of one run, in the CSV's row order."""

    ids: np.ndarray
    groups: list[str | None]
    y: np.ndarray
    scores: np.ndarray
    classes: tuple[str, ...]


@dataclass
class RunRecord:
    path: Path
    data: dict = field(repr=False)

    @property
    def dataset(self) -> str:
        return self.data["dataset"]["name"]

    @property
    def calibration(self) -> Calibration | None:
        """How calibration was measured, or why not; None for records written before calibration."""
        return Calibration.from_json(self.data.get("calibration"))

    @property
    def probabilities(self) -> bool:
        """Its scores are probabilities, so calibration was measured (records before calibration: unknown, no)."""
        return bool(self.calibration and self.calibration.scores_are_probabilities)

    @property
    def calibrated(self) -> Calibrated | None:
        """--calibrate's block (the calibrator and the metrics after it, or why not applied); None without it."""
        return Calibrated.from_json(self.data.get("calibrated"))

    @property
    def metrics(self) -> dict[str, MetricValue]:
        return metrics_from_json(self.data.get("metrics"))

    @property
    def patient_metrics(self) -> PatientMetrics | None:
        return PatientMetrics.from_json(self.data.get("patient_metrics"))

    @property
    def per_finding(self) -> dict[str, FindingMetrics]:
        """A multi-label record's metrics per finding ({} for single-label records)."""
        return findings_from_json(self.data.get("per_finding"))

    @property
    def findings(self) -> list[str]:
        return [str(f) for f in self.data.get("findings") or []]

    @property
    def sizes(self) -> list[FoldSize]:
        read = [FoldSize.from_json(s) for s in self.data.get("sizes") or []]
        return [s for s in read if s is not None]

    @property
    def confusion(self) -> ConfusionMatrix | None:
        return ConfusionMatrix.from_json(self.data.get("confusion_matrix"))

    @property
    def model(self) -> str:
        return self.data["model"]

    @property
    def method(self) -> str:
        return self.data["method"]

    @property
    def kind(self) -> str:
        return str(self.data.get("kind") or ("finetune" if self.method.startswith("finetune") else "probe"))

    @property
    def protocol(self) -> str:
        return str(self.data.get("protocol") or "")

    @property
    def pool(self) -> str:
        return str(self.data.get("pool") or "")

    @property
    def shots(self) -> int | None:
        return self.data.get("shots") if isinstance(self.data.get("shots"), int) else None

    @property
    def external(self) -> ExternalInfo | None:
        """What an external-test record (--test) scored; None for internal records."""
        return ExternalInfo.from_json(self.data.get("external"))

    @property
    def multilabel(self) -> bool:
        """A record of per-finding probes (metrics: macro/micro AUROC, mAP, macro F1; `per_finding`)."""
        return self.data.get("task") == MULTILABEL

    @property
    def cost(self) -> Cost | None:
        """A fine-tune's cost (parameters, throughput, device); None for probes."""
        return Cost.from_json(self.data.get("cost"))

    @property
    def subgroups(self) -> Subgroups | None:
        """The record's per-subgroup metrics (--subgroups), None without them."""
        return Subgroups.from_json(self.data.get("subgroups"))

    @property
    def created_at(self) -> str:
        return str(self.data.get("created_at") or "")

    @property
    def name(self) -> str:
        """The file name, which says model, pool, method, protocol and seed."""
        return self.path.name

    def metric_block(self, level: str) -> dict[str, MetricValue]:
        if level == "sample":
            return self.metrics
        patient = self.patient_metrics
        return patient.metrics if patient else {}

    def value(self, metric: str, level: str = "sample") -> tuple[float | None, list[float] | None]:
        entry = self.metric_block(level).get(metric)
        if entry is None:
            return None, None
        return entry.value, list(entry.ci) if entry.ci else None

    @property
    def has_patient_level(self) -> bool:
        return bool(self.metric_block("patient"))

    @property
    def predictions_path(self) -> Path | None:
        name = self.data.get("predictions")
        return self.path.parent / name if isinstance(name, str) and name else None

    @cached_property
    def backbone(self) -> Backbone:
        """Parameters, embedding size and extraction speed from the caches' provenance (probe records), or
        the fine-tuned model's parameter count (finetune records, which read no cache)."""
        sources = [s for s in self.data.get("features") or [] if isinstance(s, dict)]
        provenance = [s.get("provenance") or {} for s in sources]
        info = Backbone()
        params = [number(p.get("num_parameters")) for p in provenance]
        if params and all(p is not None for p in params):
            info.parameters = sum(params)
        dims = [_embed_dim(p.get("embed_dims"), s.get("pools")) for p, s in zip(provenance, sources, strict=True)]
        if dims and all(dims):
            info.embed_dim = "+".join(dims)
        if len(provenance) == 1:  # a fused matrix has no single extraction speed
            info.images_per_second = number(provenance[0].get("images_per_second"))
            info.device_name = provenance[0].get("device_name") or None
            peak = provenance[0].get("peak_memory_mb")  # records written before it was copied read the cache
            info.peak_memory_mb = number(peak if peak is not None else _cache_attr(sources[0], "peak_memory_mb"))
        if info.parameters is None and self.cost is not None:
            info.parameters = number(self.cost.total_parameters)
        finetuned = self.data.get("backbone")
        licences = {str(p.get("licence")) for p in provenance if p.get("licence")} or (
            {str(finetuned["licence"])} if isinstance(finetuned, dict) and finetuned.get("licence") else set())
        info.licence = " + ".join(sorted(licences)) or None
        return info

    @property
    def validation_score(self) -> float | None:
        """Mean validation balanced accuracy over the folds (what chose the hyperparameters or the
        checkpoint), None when the record has none: a score that never saw the test samples."""
        found = [number(h.get("val_balanced_accuracy")) for h in self.data.get("hyperparameters") or []
                 if isinstance(h, dict)]
        return float(np.mean(found)) if found and all(v is not None for v in found) else None

    def read_predictions(self) -> Predictions:
        """The predictions CSV; MedprobeError naming the file when it is missing or malformed."""
        path = self.predictions_path
        if path is None or not path.is_file():
            raise MedprobeError(f"{self.path}: predictions file {path or '(none named)'} is missing; "
                                "re-run the probe/finetune that wrote the record")
        with path.open(newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            rows = list(reader)
        try:
            score_columns = [i for i, name in enumerate(header) if name.startswith("score_")]
            classes = tuple(header[i][len("score_"):] for i in score_columns)
            column = {name: header.index(name) for name in ("id", "group", "label")}
            index = {c: k for k, c in enumerate(classes)}
            y = np.array([index[row[column["label"]]] for row in rows], dtype=int)
            scores = np.array([[float(row[i]) for i in score_columns] for row in rows], dtype=float)
        except (ValueError, KeyError, IndexError) as exc:
            raise MedprobeError(f"{path}: not a medprobe predictions CSV ({exc!r}); re-run the run that wrote it") \
                from exc
        if not rows or len(classes) < 2:
            raise MedprobeError(f"{path}: no predictions or fewer than 2 score columns; re-run the run that wrote it")
        return Predictions(ids=np.array([row[column["id"]] for row in rows], dtype=object),
                           groups=[row[column["group"]] or None for row in rows], y=y,
                           scores=scores.reshape(len(rows), len(classes)), classes=classes)


@dataclass
class FindingPredictions:
    """A multi-label run's test predictions (write_multilabel_predictions), in the CSV's row order."""

    ids: np.ndarray
    groups: list[str | None]
    truth: np.ndarray  # (images, findings), NaN unknown
    scores: np.ndarray
    thresholds: np.ndarray
    findings: tuple[str, ...]


def read_finding_predictions(record: RunRecord) -> FindingPredictions:
    """A multi-label record's predictions CSV; MedprobeError naming the file when it is missing or malformed."""
    path = record.predictions_path
    if path is None or not path.is_file():
        raise MedprobeError(f"{record.path}: predictions file {path or '(none named)'} is missing")
    findings = tuple(record.data.get("findings") or ())
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    try:
        def column(kind: str) -> np.ndarray:
            return np.array([[float(row[f"{kind}_{f}"]) if row[f"{kind}_{f}"] != "" else np.nan for f in findings]
                             for row in rows], dtype=float).reshape(len(rows), len(findings))

        return FindingPredictions(np.array([row["id"] for row in rows], dtype=object),
                                  [row["group"] or None for row in rows], column("true"), column("score"),
                                  column("threshold"), findings)
    except (KeyError, ValueError) as exc:
        raise MedprobeError(f"{path}: not a multi-label predictions CSV ({exc!r}); re-run the run that wrote it") \
            from exc


def _cache_attr(source: dict, name: str):
    """An attribute of the cache a record read, for what its provenance copy lacks; None once it is gone."""
    from medprobe.cache.store import read_cache_attrs

    path = Path(str(source.get("cache") or ""))
    try:
        return read_cache_attrs(path).get(name) if path.is_file() else None
    except (OSError, MedprobeError):
        return None


def _embed_dim(embed_dims, pools) -> str | None:
    """The backbone's embedding size: the first pool used (cls for ViTs, gap for CNNs)."""
    if not isinstance(embed_dims, dict) or not embed_dims:
        return None
    for pool in [*(pools or []), "cls", "gap"]:
        if number(embed_dims.get(pool)) is not None:
            return str(int(embed_dims[pool]))
    return None


def _validate(path: Path, data) -> str | None:
    """Why `data` is not a usable run record, or None."""
    if not isinstance(data, dict):
        return "not a JSON object"
    schema = data.get("schema")
    if not isinstance(schema, str) or not schema.startswith(SCHEMA_FAMILY + "/"):
        return f"not a medprobe run record (schema {schema!r}, expected {RECORD_SCHEMA})"
    if schema not in READABLE_SCHEMAS:
        return f"schema {schema} is not one of {', '.join(READABLE_SCHEMAS)}; use the medprobe version that wrote it"
    for key in ("method", "model"):
        if not isinstance(data.get(key), str) or not data[key]:
            return f"field {key!r} is missing"
    if not isinstance(data.get("dataset"), dict) or not isinstance(data["dataset"].get("name"), str):
        return "field 'dataset.name' is missing"
    metrics = data.get("metrics")
    if not isinstance(metrics, dict) or not metrics:
        return "no metrics (a partial record?); re-run the probe/finetune that wrote it"
    return None


@dataclass
class LoadedRecords:
    records: list[RunRecord]
    problems: list[Problem]
    files: int


def load_records(folders: list[Path], metric: str) -> LoadedRecords:
    """Every run record under `folders` (recursively). Unusable files become problems, not exceptions; a
    record without a `metric` value is kept (its cell shows a gap) and noted."""
    records, problems, files = [], [], 0
    seen: set[Path] = set()  # overlapping folders must not count a record twice
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise MedprobeError(f"results folder {folder} does not exist; give the --out folder of "
                                "`medprobe probe` or `medprobe finetune`")
        for path in sorted(folder.rglob("*.json.partial")):
            problems.append(Problem(path, "an interrupted write (the run did not finish); re-run it", True))
        for path in sorted(folder.rglob("*.json")):
            if path.parent.name.endswith(EXPLAIN_SUFFIX):  # `medprobe explain`'s index, not a run record
                continue
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            files += 1
            try:
                data = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                problems.append(Problem(path, f"not valid JSON ({exc}); re-run the run that wrote it or delete it",
                                        True))
                continue
            reason = _validate(path, data)
            if reason:
                problems.append(Problem(path, reason, True))
                continue
            record = RunRecord(path, upgrade(data))
            if record.value(metric)[0] is None and not record.multilabel:  # those: the findings table
                problems.append(Problem(path, f"no {metric} value; its cells show a gap", False))
            records.append(record)
    if not records:
        where = ", ".join(str(f) for f in folders)
        if files:
            raise MedprobeError(f"none of the {files} JSON file(s) under {where} is a usable run record (e.g. "
                                f"{problems[0].path}: {problems[0].reason})")
        raise MedprobeError(f"no run records (*.json) under {where}; run `medprobe probe` or `medprobe finetune` "
                            "with --out there first")
    return LoadedRecords(records, problems, files)

"""The run record's schema, shared by probe, finetune and report: its version, the typed header every record
opens with, the record's file name, and the upgrade of older records on reading.

Every block a record holds beyond free-form provenance is a dataclass here: the header, split sizes, metric
values, per-class and per-finding metrics, patient-level metrics, calibration, subgroups, an external
cohort and a fine-tune's cost. Writers put these objects into the record and `to_json` (the one serializer,
used by results.record.write_record) turns them into JSON; the report reads each block back through its
`from_json`, so a field is named in one place.

Schema 2 (this release) adds `task` ("single-label" or "multilabel") to every record. Schema 1 records
(no `task`) still load: `upgrade` fills what they lack, so the report reads both through the same code.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass

import numpy as np

SCHEMA_FAMILY = "medprobe.run"
RECORD_SCHEMA = f"{SCHEMA_FAMILY}/2"
READABLE_SCHEMAS = (f"{SCHEMA_FAMILY}/1", RECORD_SCHEMA)
SINGLE_LABEL = "single-label"
MULTILABEL = "multilabel"
TASKS = (SINGLE_LABEL, MULTILABEL)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    source: str
    samples: int
    classes: list[str]
    class_counts: dict[str, int]
    grouped: bool


@dataclass(frozen=True)
class BootstrapInfo:
    replicates: int
    unit: str  # patient | sample: what one resample draws
    seed: int
    level: int = 95


@dataclass
class RecordHeader:
    """What every run record opens with, probe and finetune, single- and multi-label alike."""

    kind: str  # probe | finetune
    task: str  # one of TASKS
    method: str
    model: str
    pool: str
    protocol: str
    dataset: DatasetInfo
    seed: int
    folds: int
    split_protocol: str
    bootstrap: BootstrapInfo
    ordinal: bool
    medprobe_version: str
    created_at: str
    schema: str = field(default=RECORD_SCHEMA)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task {self.task!r} is not one of {', '.join(TASKS)}")

    def to_dict(self) -> dict:
        """The JSON form: `schema` first, then the fields in order (nested dataclasses as objects)."""
        data = asdict(self)
        return {"schema": data.pop("schema"), **data}


def to_json(value):
    """A record (or any part of one) as JSON values: dataclasses through their `to_dict` (else field by field),
    numpy scalars and arrays as Python ones, non-finite floats as null."""
    if is_dataclass(value) and not isinstance(value, type):
        return to_json(value.to_dict() if hasattr(value, "to_dict") else
                       {f.name: getattr(value, f.name) for f in fields(value)})
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_json(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _set_fields(obj) -> dict:
    """A dataclass's fields that are not None, for blocks whose optional parts are absent rather than null."""
    return {f.name: getattr(obj, f.name) for f in fields(obj) if getattr(obj, f.name) is not None}


def number(value) -> float | None:
    """A finite float, or None for anything else (missing, '', NaN, text)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass(frozen=True)
class MetricValue:
    """One metric of a record (`metrics.<name>`): its value on all test predictions, the 95% bootstrap CI,
    and over folds (k-fold) or draws (--shots) its mean and spread. Missing or non-finite parts read None."""

    value: float | None
    ci: tuple[float, float] | None = None
    fold_mean: float | None = None
    fold_std: float | None = None
    repeat_std: float | None = None

    def to_dict(self) -> dict:
        """value and ci always (null when missing); the spreads where measured."""
        spreads = {name: getattr(self, name) for name in ("fold_mean", "fold_std", "repeat_std")
                   if getattr(self, name) is not None}
        return {"value": self.value, "ci": list(self.ci) if self.ci else None, **spreads}

    @classmethod
    def from_json(cls, entry) -> MetricValue | None:
        if isinstance(entry, MetricValue):
            return entry
        if not isinstance(entry, dict):
            return None
        ci = entry.get("ci")
        bounds = [number(c) for c in ci] if isinstance(ci, (list, tuple)) and len(ci) == 2 else [None]
        return cls(number(entry.get("value")), tuple(bounds) if None not in bounds else None,
                   number(entry.get("fold_mean")), number(entry.get("fold_std")), number(entry.get("repeat_std")))


def metrics_from_json(block) -> dict[str, MetricValue]:
    """A `metrics` (or `per_class_recall`) block: name -> MetricValue, unreadable entries left out."""
    if not isinstance(block, dict):
        return {}
    read = {name: MetricValue.from_json(entry) for name, entry in block.items()}
    return {name: value for name, value in read.items() if value is not None}


@dataclass(frozen=True)
class FoldSize:
    """One entry of a record's `sizes`: a fold's train, validation and test counts; an external record's single
    entry adds `refit` (the samples of DATA the final model was fitted on; probes) and counts DATA2 as test."""

    fold: int
    train: int
    val: int
    test: int
    refit: int | None = None

    def to_dict(self) -> dict:
        return _set_fields(self)

    @classmethod
    def from_json(cls, data) -> FoldSize | None:
        try:
            return cls(**{f.name: data.get(f.name) for f in fields(cls)})
        except (TypeError, AttributeError):
            return None


@dataclass(frozen=True)
class ConfusionMatrix:
    labels: list[str]
    matrix: list[list[int]]
    rows: str = "true"

    def to_dict(self) -> dict:
        return {"labels": self.labels, "rows": self.rows, "matrix": self.matrix}

    @classmethod
    def from_json(cls, data) -> ConfusionMatrix | None:
        try:
            return cls(list(data["labels"]), [list(row) for row in data["matrix"]], data.get("rows", "true"))
        except (TypeError, KeyError, AttributeError):
            return None


@dataclass(frozen=True)
class Calibration:
    """A record's `calibration`: whether its scores are probabilities, and so how ECE, Brier and NLL were
    measured, or why they were not."""

    scores_are_probabilities: bool
    why: str | None = None
    ece_bins: int | None = None
    ece_binning: str | None = None
    brier: str | None = None
    nll: str | None = None

    def to_dict(self) -> dict:
        return _set_fields(self)

    @classmethod
    def from_json(cls, data) -> Calibration | None:
        """The block as written, or None for records without one (written before calibration)."""
        if not isinstance(data, dict):
            return None
        return cls(**{f.name: data.get(f.name) for f in fields(cls)})


@dataclass(frozen=True)
class Calibrated:
    """A record's `calibrated` (--calibrate): the calibrator, where it was fitted, its per-fold parameters and
    the calibration metrics after it; or, not applied, why."""

    method: str
    applied: bool
    why: str | None = None
    summary: str | None = None
    fitted_on: str | None = None
    per_fold: list[dict] | None = None
    metrics: dict[str, MetricValue] | None = None

    def to_dict(self) -> dict:
        return _set_fields(self)

    @classmethod
    def from_json(cls, data) -> Calibrated | None:
        if not isinstance(data, dict) or "method" not in data:
            return None
        values = {f.name: data.get(f.name) for f in fields(cls)}
        return cls(**{**values, "applied": bool(values["applied"]),
                      "metrics": metrics_from_json(data["metrics"]) if "metrics" in data else None})


@dataclass(frozen=True)
class FindingMetrics:
    """One finding of a multi-label record's `per_finding`: its known and positive test labels, AUROC, average
    precision and F1 at the validated thresholds."""

    known: int
    positives: int
    auroc: MetricValue
    average_precision: MetricValue
    f1: MetricValue
    ece: MetricValue | None = None  # these three where the scores are probabilities
    brier: MetricValue | None = None
    nll: MetricValue | None = None

    def to_dict(self) -> dict:
        return _set_fields(self)

    @classmethod
    def from_json(cls, data) -> FindingMetrics | None:
        try:
            scores = {name: MetricValue.from_json(data.get(name)) or MetricValue(None)
                      for name in ("auroc", "average_precision", "f1")}
            calibration = {name: MetricValue.from_json(data.get(name)) for name in ("ece", "brier", "nll")}
            return cls(int(data["known"]), int(data["positives"]), **scores, **calibration)
        except (TypeError, KeyError, AttributeError, ValueError):
            return None


def findings_from_json(block) -> dict[str, FindingMetrics]:
    if not isinstance(block, dict):
        return {}
    read = {name: FindingMetrics.from_json(entry) for name, entry in block.items()}
    return {name: value for name, value in read.items() if value is not None}


@dataclass(frozen=True)
class PatientMetrics:
    """A record's `patient_metrics`: the metrics again on patient-level predictions (single-label: per-class
    recall; multi-label: per finding)."""

    patients: int
    aggregation: str
    metrics: dict[str, MetricValue]
    per_class_recall: dict[str, MetricValue] | None = None
    per_finding: dict[str, FindingMetrics] | None = None

    def to_dict(self) -> dict:
        return _set_fields(self)

    @classmethod
    def from_json(cls, data) -> PatientMetrics | None:
        """The block as written, or None (no patients, or a label that varies within a patient)."""
        try:
            return cls(int(data["patients"]), str(data.get("aggregation") or ""), metrics_from_json(data["metrics"]),
                       metrics_from_json(data["per_class_recall"]) if "per_class_recall" in data else None,
                       findings_from_json(data["per_finding"]) if "per_finding" in data else None)
        except (TypeError, KeyError, AttributeError, ValueError):
            return None


@dataclass(frozen=True)
class CohortInfo:
    """An external cohort as its record names it."""

    name: str
    source: str
    samples: int
    class_counts: dict[str, int]
    grouped: bool


@dataclass(frozen=True)
class ExternalInfo:
    """An external-test record's `external` block (--test): the cohort scored, how the model was trained on
    DATA, and the file name of the k-fold record beside it."""

    dataset: CohortInfo
    trained_on: str
    internal_protocol: str
    internal_record: str

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data) -> ExternalInfo | None:
        """The block as written, or None when it is absent or malformed (an internal record)."""
        try:
            return cls(**{**data, "dataset": CohortInfo(**data["dataset"])})
        except (TypeError, KeyError):
            return None


@dataclass
class SubgroupGroup:
    """One value of a subgroup column: its test samples and patients, and its metrics (None: too small)."""

    value: str
    samples: int
    patients: int
    metrics: dict[str, MetricValue] | None = None
    per_class_recall: dict[str, MetricValue] | None = None

    @property
    def too_small(self) -> bool:
        return self.metrics is None

    def to_dict(self) -> dict:
        head = {"value": self.value, "samples": self.samples, "patients": self.patients}
        if self.too_small:
            return {**head, "too_small": True}
        return {**head, "metrics": self.metrics, "per_class_recall": self.per_class_recall}


@dataclass(frozen=True)
class WorstGroup:
    group: str
    value: float


@dataclass
class SubgroupColumn:
    groups: list[SubgroupGroup]
    worst: dict[str, WorstGroup]  # per metric: the lowest group (the highest for ECE, Brier, NLL)
    largest_gap: dict[str, float]  # per metric: highest minus lowest over the scored groups


@dataclass
class Subgroups:
    """A record's `subgroups` (--subgroups): per manifest column, its groups, worst group and largest gap."""

    min_samples: int
    columns: dict[str, SubgroupColumn]
    size_unit: str = "test samples"
    ci: str = "95% bootstrap within each group (patients resampled when grouped); the gap has no CI"

    def to_dict(self) -> dict:
        return {"min_samples": self.min_samples, "size_unit": self.size_unit, "ci": self.ci,
                "columns": {name: {"groups": [g.to_dict() for g in column.groups], "worst": column.worst,
                                   "largest_gap": column.largest_gap} for name, column in self.columns.items()}}

    @classmethod
    def from_json(cls, data) -> Subgroups | None:
        """The block as written, or None when absent or malformed."""
        try:
            columns = {name: SubgroupColumn([SubgroupGroup(g["value"], g["samples"], g["patients"],
                                                           metrics_from_json(g["metrics"]) if "metrics" in g else None,
                                                           metrics_from_json(g["per_class_recall"])
                                                           if g.get("per_class_recall") is not None else None)
                                             for g in block["groups"]],
                                            {metric: WorstGroup(str(w["group"]), float(w["value"]))
                                             for metric, w in block["worst"].items()},
                                            dict(block["largest_gap"]))
                       for name, block in data["columns"].items()}
            return cls(int(data["min_samples"]), columns, data.get("size_unit", cls.size_unit),
                       data.get("ci", cls.ci))
        except (TypeError, KeyError, AttributeError, ValueError):
            return None


@dataclass(frozen=True)
class Cost:
    """A fine-tune record's `cost`: parameters, time, throughput, memory and device."""

    trainable_parameters: int
    total_parameters: int
    wall_seconds: float
    train_images_per_second: float
    train_images: int
    optimizer_steps: int
    peak_memory_mb: float
    device: str
    device_name: str
    precision: str

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data) -> Cost | None:
        """The block as written (a field older records lack reads None), or None for probe records."""
        if not isinstance(data, dict):
            return None
        return cls(**{f.name: data.get(f.name) for f in fields(cls)})


def record_name(model: str, method: str, protocol: str, seed: int, pool: str | None = None) -> str:
    """A record's file stem: <model>[__<pool>]__<method>__<protocol>-seed<seed> (probes name their pool;
    a fine-tune's model part already says its mode)."""
    parts = [model, *([pool] if pool else []), method, f"{protocol}-seed{seed}"]
    return "__".join(parts)


def upgrade(data: dict) -> dict:
    """A record as the current schema reads it: schema 1 records get `task` single-label."""
    if data.get("schema") == READABLE_SCHEMAS[0]:
        return {**data, "task": data.get("task") or SINGLE_LABEL}
    return data

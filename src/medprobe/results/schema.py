"""The run record's schema, shared by probe, finetune and report: its version, the typed header every record
opens with, the record's file name, and the upgrade of older records on reading.

Schema 2 (this release) adds `task` ("single-label" or "multilabel") to every record. Schema 1 records
(no `task`) still load: `upgrade` fills what they lack, so the report reads both through the same code.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

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

    @classmethod
    def from_json(cls, entry) -> MetricValue | None:
        if not isinstance(entry, dict):
            return None
        ci = entry.get("ci")
        bounds = [number(c) for c in ci] if isinstance(ci, list) and len(ci) == 2 else [None]
        return cls(number(entry.get("value")), tuple(bounds) if None not in bounds else None,
                   number(entry.get("fold_mean")), number(entry.get("fold_std")), number(entry.get("repeat_std")))


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
    metrics: dict | None = None  # name -> {value, ci}
    per_class_recall: dict | None = None

    @property
    def too_small(self) -> bool:
        return self.metrics is None

    def to_dict(self) -> dict:
        head = {"value": self.value, "samples": self.samples, "patients": self.patients}
        if self.too_small:
            return {**head, "too_small": True}
        return {**head, "metrics": self.metrics, "per_class_recall": self.per_class_recall}


@dataclass
class SubgroupColumn:
    groups: list[SubgroupGroup]
    worst: dict  # metric -> {group, value}
    largest_gap: dict  # metric -> highest minus lowest over the scored groups


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
            columns = {name: SubgroupColumn([SubgroupGroup(g["value"], g["samples"], g["patients"], g.get("metrics"),
                                                           g.get("per_class_recall")) for g in block["groups"]],
                                            dict(block["worst"]), dict(block["largest_gap"]))
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

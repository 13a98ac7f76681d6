"""The run record's schema, shared by probe, finetune and report: its version, the typed header every record
opens with, the record's file name, and the upgrade of older records on reading.

Schema 2 (this release) adds `task` ("single-label" or "multilabel") to every record. Schema 1 records
(no `task`) still load: `upgrade` fills what they lack, so the report reads both through the same code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

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

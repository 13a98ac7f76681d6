"""Fine-tuning settings: a plain dataclass, importable without torch (`medprobe run` plans with it)."""

from __future__ import annotations

from dataclasses import dataclass

from medprobe.probe.settings import SUBGROUP_MIN_SAMPLES


@dataclass
class FinetuneSettings:
    unfreeze: str = "all"
    epochs: int = 10
    lr: float = 1e-5
    head_lr: float = 1e-3
    weight_decay: float = 0.05
    layer_decay: float | None = None
    warmup_epochs: float = 1.0
    patience: int = 5
    class_weights: bool = False
    batch_size: int = 32
    precision: str = "auto"
    device: str = "auto"
    workers: int | None = None
    image_size: int | None = None
    seed: int = 0
    folds: int = 5
    fold: int | None = None  # None: every fold
    bootstrap: int = 5000
    ordinal: bool = False
    resume: bool = False
    calibrate: str | None = None  # a results.calibration calibrator, fitted on each fold's validation predictions
    subgroups: tuple[str, ...] = ()  # manifest columns (sex, site): every metric per value (results.subgroups)
    subgroup_min: int = SUBGROUP_MIN_SAMPLES

"""Probe settings: a plain dataclass, importable without scikit-learn or torch, so the CLI's options, the
Python API (medprobe.probe()) and experiment files all read their defaults from here."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MEMORY_FRACTION = 0.25  # stream from the cache above this share of available memory
SUBGROUP_MIN_SAMPLES = 20  # --subgroups: smaller groups are reported as too small, not scored (finetune too)


@dataclass
class ProbeSettings:
    classifiers: tuple[str, ...] = ("logreg",)
    pool: str = "auto"
    folds: int = 5
    seed: int = 0
    bootstrap: int = 5000
    n_jobs: int = -1  # folds in parallel processes, one per core (each with one BLAS thread; libsvm has one)
    ordinal: bool = False
    shots: tuple[int | str, ...] = ()
    repeats: int = 5
    fuse: bool = False
    coarse_to_fine: bool = False
    save_model: bool = False
    backend: str = "local"  # local | dask | ray (probe/backends.py)
    scheduler: str | None = None  # the Dask scheduler or Ray cluster address
    out_of_core: bool = False  # stream features from the cache (probe/streaming.py), whatever their size
    memory_fraction: float = DEFAULT_MEMORY_FRACTION  # ... and always above this share of free memory
    calibrate: str | None = None  # a results.calibration calibrator, fitted on each fold's validation part
    subgroups: tuple[str, ...] = ()  # manifest columns (sex, site): every metric per value (results.subgroups)
    subgroup_min: int = SUBGROUP_MIN_SAMPLES

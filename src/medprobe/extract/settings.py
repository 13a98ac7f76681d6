"""Extraction settings and what an extraction reports: plain dataclasses, importable without torch, so the
CLI's options, the Python API (medprobe.extract()) and the extraction itself read one set of defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ExtractSettings:
    device: str = "auto"  # auto | cpu | cuda | cuda:i
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (auto: bf16 where supported)
    batch_size: int = 32
    workers: int | None = None  # decoding worker processes; None: CPU cores - 1, at most 8
    image_size: int | None = None  # override the input size (ViTs interpolate)
    revision: str | None = None  # a hub revision (branch, tag or commit)
    skip_bad: bool = False  # leave out unreadable images (recorded in the cache) instead of stopping
    decode: str = "cpu"  # cpu | gpu


@dataclass
class CacheInfo:
    """What one extraction did to one backbone's cache file: `path` holds the features."""

    model: str
    path: Path
    extracted: int
    reused: int
    changed: int
    images_per_second: float | None
    skipped: dict[str, dict] = field(default_factory=dict)  # id -> {"reason", "stat"}, with skip_bad

    @property
    def up_to_date(self) -> bool:
        return self.extracted == 0

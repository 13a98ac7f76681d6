"""The sample and dataset records every stage passes around."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medprobe.errors import MedprobeError

SPLITS = ("train", "val", "test")


def natural_key(text: str) -> list:
    """'grade2' before 'grade10': numbers inside labels compare as numbers."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


@dataclass(frozen=True)
class VolumeSlice:
    """Where a slice sample's pixels come from: plane `index` along `axis` of one volume (gray, replicated
    to RGB) or of three co-registered volumes stacked as the RGB channels."""

    axis: str
    index: int
    channels: tuple[Path, ...]
    window: tuple[float, float]
    volume_index: int | None = None

    @property
    def decode_key(self) -> tuple:
        """Slices with the same key come from one decoded volume (read and decompressed once)."""
        return self.channels, self.window, self.volume_index

    @property
    def options(self) -> str:
        """Decoding options that change the pixels but not the id; part of the sample's fingerprint."""
        low, high = self.window
        return f"window={low:g}-{high:g};volume={self.volume_index};channels={len(self.channels)}"


@dataclass(frozen=True)
class Sample:
    """One image, or one slice of a volume. `id` is the path relative to the dataset root, plus
    `#axis:index` for a slice (stable, human-readable)."""

    id: str
    path: Path
    label: str
    group: str | None = None
    split: str | None = None
    slice: VolumeSlice | None = None

    @property
    def join_key(self) -> str:
        """What pairs this sample with its twin in another dataset for fusion: the id for images, the
        patient and slice position for slices (so per-modality datasets with a shared group column join)."""
        if self.slice is None:
            return self.id
        return f"{self.group}#{self.slice.axis}:{self.slice.index}"


@dataclass
class Dataset:
    """An ordered list of samples plus where they came from.

    `root` is the folder sample ids are relative to; `source` is the file or folder the user named.
    """

    name: str
    root: Path
    source: Path
    samples: list[Sample]
    classes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.classes:
            self.classes = sorted({s.label for s in self.samples}, key=natural_key)

    def with_class_order(self, order: list[str]) -> Dataset:
        """The same samples with classes in a given order (what --ordinal's kappa and tables follow)."""
        if sorted(order) != sorted(self.classes) or len(set(order)) != len(order):
            raise MedprobeError(
                f"--classes {','.join(order)} must list each class of {self.source} once: {','.join(self.classes)}"
            )
        return Dataset(name=self.name, root=self.root, source=self.source, samples=self.samples, classes=list(order))

    def without(self, ids: set[str]) -> Dataset:
        """The same dataset minus some samples (unreadable ones skipped at extraction), classes unchanged."""
        return Dataset(name=self.name, root=self.root, source=self.source, classes=list(self.classes),
                       samples=[s for s in self.samples if s.id not in ids])

    @property
    def key(self) -> str:
        """Identity of the dataset's *images* (not its labels): the cache is keyed by it, so relabelling a
        dataset re-probes without re-extracting."""
        return hashlib.blake2b(str(self.root.resolve()).encode(), digest_size=6).hexdigest()

    @property
    def cache_slug(self) -> str:
        """Cache folder name: the image root's name plus `key`. Two manifests over one image folder share
        a cache, each reading only its own ids."""
        safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in self.root.resolve().name) or "root"
        return f"{safe}-{self.key}"

    def targets(self) -> np.ndarray:
        """Each sample's class index into `classes`."""
        index = {label: i for i, label in enumerate(self.classes)}
        return np.array([index[s.label] for s in self.samples])

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.samples]

    def class_counts(self) -> Counter[str]:
        return Counter(s.label for s in self.samples)

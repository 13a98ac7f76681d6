"""The sample and dataset records every stage passes around."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    """One image. `id` is the path relative to the dataset root (stable, human-readable)."""

    id: str
    path: Path
    label: str
    group: str | None = None
    split: str | None = None


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
            self.classes = sorted({s.label for s in self.samples})

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

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.samples]

    def class_counts(self) -> Counter[str]:
        return Counter(s.label for s in self.samples)

"""The sample and dataset records every stage passes around."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from medprobe.data.windows import DEFAULT_WINDOWS, Window, windows_text
from medprobe.errors import MedprobeError

SPLITS = ("train", "val", "test")
NO_LABEL = ""  # a sample of a dataset that has no labels (yet): extraction needs none


def natural_key(text: str) -> list:
    """'grade2' before 'grade10': numbers inside labels compare as numbers."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


@dataclass(frozen=True)
class VolumeSlice:
    """Where a slice sample's pixels come from: plane `index` along `axis` of one volume (gray, replicated
    to RGB, or three windows of it) or of three co-registered volumes stacked as the RGB channels."""

    axis: str
    index: int
    channels: tuple[Path, ...]
    volume_index: int | None = None


@dataclass(frozen=True)
class Member:
    """A sample stored inside a container file: a frame of a multi-frame DICOM (`kind` "dicom-frame", `key`
    "3"), an image of a MedMNIST .npz or of a Hugging Face dataset (`key` "train/000123"). The kind names
    the reader in data.containers."""

    kind: str
    key: str
    chunk: int = 0  # members of one container are decoded in units of one chunk (bounded memory, parallel)


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
    windows: tuple[Window, ...] = DEFAULT_WINDOWS  # grayscale intensities -> 8 bits (data.windows)
    member: Member | None = None
    attributes: tuple[tuple[str, str], ...] = ()  # the manifest's other columns (sex, site, ...): subgroups
    findings: tuple[float, ...] | None = None  # multi-label: 1, 0 or NaN (unknown) per Dataset.findings

    def attribute(self, column: str) -> str | None:
        """This sample's value in a manifest column beyond path/label/group/split; None without that column."""
        return dict(self.attributes).get(column)

    @property
    def decode_key(self) -> tuple | None:
        """Samples with the same key come from one decoded volume or container (read and decoded once)."""
        if self.slice is not None:
            return self.slice.channels, self.windows, self.slice.volume_index
        if self.member is not None:
            return self.path, self.member.kind, self.member.chunk, self.windows
        return None

    @property
    def plain_file(self) -> bool:
        """A whole image file under the default decoding rules (what --decode gpu may decode itself)."""
        return self.decode_key is None and self.windows == DEFAULT_WINDOWS

    @property
    def options(self) -> str:
        """Decoding options of a slice or member that change the pixels but not the id; part of its
        fingerprint and stat."""
        window = f"window={windows_text(self.windows)}"
        if self.member is not None:
            return f"{window};{self.member.kind}"
        return f"{window};volume={self.slice.volume_index};channels={len(self.slice.channels)}"

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

    `root` is the folder (or container file) sample ids are relative to; `source` is the file or folder the
    user named. A dataset may have no labels (every label NO_LABEL): it extracts, and `require_labels` says
    what to add (`label_fix`) when a probe or fine-tune needs them. `decoding` names non-default decoding
    options (windows, frames); it is part of `key`, so each window gets caches of its own.
    """

    name: str
    root: Path
    source: Path
    samples: list[Sample]
    classes: list[str] = field(default_factory=list)
    label_fix: str = "give every sample a label"
    decoding: str = ""
    findings: list[str] = field(default_factory=list)  # multi-label: the finding names, in column order

    def __post_init__(self) -> None:
        if self.findings:
            self.classes = list(self.findings)  # what headers and tables list; targets() refuses
        if not self.classes:
            self.classes = sorted({s.label for s in self.samples} - {NO_LABEL}, key=natural_key)

    @property
    def multilabel(self) -> bool:
        """Zero or more findings per image (a `labels` column, or a spec's `labels = [...]`)."""
        return bool(self.findings)

    def finding_matrix(self) -> np.ndarray:
        """(samples, findings): 1 present, 0 absent, NaN unknown (left out of that finding's fits and metrics)."""
        if not self.multilabel:
            raise MedprobeError(f"{self.source}: not a multi-label dataset (it has one label per image)")
        return np.array([s.findings for s in self.samples], dtype=float).reshape(len(self.samples), len(self.findings))

    def require_single_label(self, what: str) -> None:
        """What a single-label stage checks: a multi-label dataset gets one error naming what does handle it."""
        if self.multilabel:
            raise MedprobeError(f"{self.source} is multi-label ({len(self.findings)} findings); {what} takes one "
                                "label per image: use `medprobe probe` (one binary probe per finding), or give "
                                "a single `label` column")

    @property
    def labelled(self) -> bool:
        return bool(self.classes)

    def require_labels(self) -> None:
        """What a probe or fine-tune checks first: labels, and at least two classes."""
        if not self.classes:
            raise MedprobeError(f"{self.source}: no labels; {self.label_fix}")
        unlabelled = [s.id for s in self.samples if s.label == NO_LABEL]
        if unlabelled:
            raise MedprobeError(f"{self.source}: {len(unlabelled)} sample(s) have no label (e.g. {unlabelled[0]}); "
                                "label them or leave them out")
        if len(self.classes) < 2:
            raise MedprobeError(
                f"{self.source}: only one class ({', '.join(self.classes)}); a classifier needs at least two"
            )

    def with_class_order(self, order: list[str]) -> Dataset:
        """The same samples with classes in a given order (what --ordinal's kappa and tables follow)."""
        self.require_single_label("--classes")
        if sorted(order) != sorted(self.classes) or len(set(order)) != len(order):
            raise MedprobeError(
                f"--classes {','.join(order)} must list each class of {self.source} once: {','.join(self.classes)}"
            )
        return replace(self, classes=list(order))

    def with_finding_order(self, order: list[str]) -> Dataset:
        """A multi-label dataset with its findings (and every sample's vector) in a given order."""
        if sorted(order) != sorted(self.findings) or len(set(order)) != len(order):
            raise MedprobeError(f"findings {','.join(order)} must list each finding of {self.source} once: "
                                f"{','.join(self.findings)}")
        index = [self.findings.index(name) for name in order]
        samples = [replace(s, findings=tuple(s.findings[i] for i in index)) for s in self.samples]
        return replace(self, classes=list(order), findings=list(order), samples=samples)

    def without(self, ids: set[str]) -> Dataset:
        """The same dataset minus some samples (unreadable ones skipped at extraction), classes unchanged."""
        return replace(self, classes=list(self.classes), samples=[s for s in self.samples if s.id not in ids])

    @property
    def key(self) -> str:
        """Identity of the dataset's *images* (not its labels): the cache is keyed by it, so relabelling a
        dataset re-probes without re-extracting."""
        text = str(self.root.resolve()) + (f"\n{self.decoding}" if self.decoding else "")
        return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()

    @property
    def cache_slug(self) -> str:
        """Cache folder name: the image root's name plus `key`. Two manifests over one image folder share
        a cache, each reading only its own ids."""
        safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in self.root.resolve().name) or "root"
        return f"{safe}-{self.key}"

    def targets(self) -> np.ndarray:
        """Each sample's class index into `classes`."""
        self.require_labels()
        self.require_single_label("this step")
        index = {label: i for i, label in enumerate(self.classes)}
        return np.array([index[s.label] for s in self.samples])

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.samples]

    @property
    def attribute_columns(self) -> list[str]:
        """The manifest columns its samples carry beyond path/label/group/split, in manifest order."""
        return list(dict.fromkeys(column for s in self.samples for column, _ in s.attributes))

    def class_counts(self) -> Counter[str]:
        return Counter(s.label for s in self.samples if s.label != NO_LABEL)

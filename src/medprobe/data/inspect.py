"""`medprobe datasets inspect`: what a dataset holds, and every file that will not decode."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from medprobe.data.images import decode_image, read_image_bytes
from medprobe.data.samples import Dataset, Sample
from medprobe.errors import MedprobeError


@dataclass
class DatasetSummary:
    name: str
    source: str
    samples: int
    classes: dict[str, int]
    splits: dict[str, dict[str, int]]  # split -> class -> count
    groups: int
    samples_per_group: tuple[int, int] | None  # (min, max)
    groups_in_several_splits: list[str]
    unreadable: list[tuple[str, str]] = field(default_factory=list)


def _decode_error(sample: Sample) -> str | None:
    try:
        decode_image(read_image_bytes(sample.path), sample.path)
        return None
    except MedprobeError as exc:
        return str(exc)


def summarize(dataset: Dataset, *, decode: bool = True, workers: int = 4, on_progress=None) -> DatasetSummary:
    samples = dataset.samples
    splits: dict[str, Counter] = {}
    for sample in samples:
        splits.setdefault(sample.split or "(none)", Counter())[sample.label] += 1
    group_sizes = Counter(s.group for s in samples if s.group)
    split_of_group: dict[str, set] = {}
    for sample in samples:
        if sample.group:
            split_of_group.setdefault(sample.group, set()).add(sample.split)
    unreadable = []
    if decode:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for sample, error in zip(samples, pool.map(_decode_error, samples), strict=True):
                if error:
                    unreadable.append((str(sample.path), error))
                if on_progress:
                    on_progress(1)
    return DatasetSummary(
        name=dataset.name,
        source=str(dataset.source),
        samples=len(samples),
        classes=dict(sorted(dataset.class_counts().items())),
        splits={k: dict(sorted(v.items())) for k, v in sorted(splits.items())},
        groups=len(group_sizes),
        samples_per_group=(min(group_sizes.values()), max(group_sizes.values())) if group_sizes else None,
        groups_in_several_splits=sorted(g for g, s in split_of_group.items() if len(s) > 1),
        unreadable=unreadable,
    )

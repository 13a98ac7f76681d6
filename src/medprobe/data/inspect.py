"""`medprobe datasets inspect`: what a dataset holds, and every file that will not decode."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from medprobe.data.reader import decode_units, read_unit
from medprobe.data.samples import Dataset
from medprobe.data.volumes import canonical_shape, load_header, spatial_image


@dataclass
class VolumeInfo:
    path: str
    shape: tuple[int, int, int]  # canonical RAS
    zooms: tuple[float, float, float]
    orientation: str  # the file's own axis codes
    slices: int

    @property
    def geometry(self) -> str:
        return (f"{'x'.join(map(str, self.shape))} voxels of {'x'.join(f'{z:g}' for z in self.zooms)} mm, "
                f"stored {self.orientation}")


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
    volumes: list[VolumeInfo] = field(default_factory=list)


def _volumes(dataset: Dataset) -> list[VolumeInfo]:
    """Header facts per volume (of the first channel when modalities are stacked)."""
    import nibabel as nib

    slices: dict = {}
    for sample in dataset.samples:
        if sample.slice is not None:
            slices.setdefault((sample.path, sample.slice.volume_index), []).append(sample)
    infos = []
    for (path, volume_index), members in slices.items():
        image = spatial_image(load_header(path), path, volume_index)
        canonical = nib.as_closest_canonical(image) if path.is_dir() else None
        zooms = (canonical or image).header.get_zooms()[:3]
        if canonical is None:  # reorder the stored zooms to RAS without reading voxels
            order = nib.io_orientation(image.affine)[:, 0].astype(int)
            zooms = tuple(zooms[list(order).index(axis)] for axis in range(3))
        infos.append(VolumeInfo(str(path), canonical_shape(image), tuple(float(z) for z in zooms),
                                "".join(nib.aff2axcodes(image.affine)), len(members)))
    return infos


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
        units = decode_units(samples)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for items in pool.map(lambda unit: list(read_unit(samples, unit, dataset.root)), units):
                for item in items:
                    if item.error:
                        unreadable.append((samples[item.position].id, item.error))
                if on_progress:
                    on_progress(len(items))
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
        volumes=_volumes(dataset),
    )

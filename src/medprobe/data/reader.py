"""Reading samples in decode units: an image is its own unit; the slices of one volume form one unit, so the
volume is read and decompressed once however many slices are taken from it. Every reader (extraction
workers, inspection, fine-tuning) goes through `read_unit`, so all see the same pixels."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from medprobe.data.containers import open_container
from medprobe.data.images import decode_image, read_image_bytes
from medprobe.data.samples import Sample
from medprobe.data.signature import (
    combine_fingerprints,
    file_stat,
    files_fingerprint,
    fingerprint_bytes,
    sample_stat,
    source_fingerprint,
)
from medprobe.data.volumes import read_files, read_volume, slice_image
from medprobe.errors import MedprobeError


@dataclass
class Decoded:
    position: int
    image: Image.Image | None
    fingerprint: str = ""
    stat: str = ""
    error: str | None = None


def decode_units(samples: Sequence[Sample]) -> list[list[int]]:
    """Positions grouped into units: consecutive slices of the same volume(s) share one unit."""
    units: list[list[int]] = []
    last_key = None
    for position, sample in enumerate(samples):
        key = sample.decode_key
        if key is not None and key == last_key:
            units[-1].append(position)
        else:
            units.append([position])
        last_key = key
    return units


def read_unit(samples: Sequence[Sample], positions: list[int], root: Path) -> Iterator[Decoded]:
    """Decoded images (or one error per sample) for one unit, with each sample's content fingerprint and
    stat signature (taken before reading: a file changed mid-read is caught on the next run)."""
    first = samples[positions[0]]
    if first.member is not None:
        yield from _read_members(samples, positions, root)
        return
    if first.slice is None:
        try:
            stat = sample_stat(first, root)
            data = read_image_bytes(first.path)
            yield Decoded(positions[0], decode_image(data, first.path, windows=first.windows), fingerprint_bytes(data),
                          stat)
        except (MedprobeError, OSError) as exc:
            yield Decoded(positions[0], None, error=str(exc))
        return
    try:
        stat = sample_stat(first, root)
        channels, per_source, zooms = [], [], None
        for source in first.slice.channels:
            blobs = read_files(source)
            volume = read_volume(blobs, source, first.slice.volume_index)
            if channels and volume.voxels.shape != channels[0][0].shape:
                raise MedprobeError(f"{source} has shape {volume.voxels.shape} but {first.slice.channels[0]} has "
                                    f"{channels[0][0].shape}; stacked modalities must be co-registered")
            # one window per stacked modality, or the windows (one, or three as channels) of the one volume
            channels += [(volume.voxels, window.bounds(volume.voxels)) for window in first.windows]
            per_source.append(files_fingerprint(blobs))
            zooms = zooms or volume.zooms
    except (MedprobeError, OSError) as exc:
        for position in positions:
            yield Decoded(position, None, error=str(exc))
        return
    fingerprint = combine_fingerprints(first, per_source)
    for position in positions:
        where = samples[position].slice
        try:
            yield Decoded(position, slice_image(channels, zooms, where.axis, where.index), fingerprint, stat)
        except IndexError:
            shape = channels[0][0].shape
            yield Decoded(position, None, error=f"{samples[position].id}: slice {where.index} is outside the volume "
                                                 f"(shape {shape}); the file changed, reload the dataset")


def _read_members(samples: Sequence[Sample], positions: list[int], root: Path) -> Iterator[Decoded]:
    """The members of one container file, opened once."""
    first = samples[positions[0]]
    try:
        stat = sample_stat(first, root)
        fingerprint = combine_fingerprints(first, [container_fingerprint(first.path)])
        container = open_container(first.member.kind, first.path, first.windows)
    except (MedprobeError, OSError) as exc:
        for position in positions:
            yield Decoded(position, None, error=str(exc))
        return
    try:
        for position in positions:
            try:
                yield Decoded(position, container.image(samples[position].member.key), fingerprint, stat)
            except (MedprobeError, OSError, IndexError, KeyError) as exc:
                yield Decoded(position, None, error=f"{samples[position].id}: {exc}")
    finally:
        container.close()


_CONTAINER_FINGERPRINTS: dict[tuple[Path, str], str] = {}


def container_fingerprint(path: Path) -> str:
    """A container file's (or split folder's) fingerprint, hashed once per process and stat signature: its
    members are decoded in many units, and a container can be gigabytes."""
    key = (path, file_stat(path))
    if key not in _CONTAINER_FINGERPRINTS:
        _CONTAINER_FINGERPRINTS[key] = source_fingerprint(path)
    return _CONTAINER_FINGERPRINTS[key]


def read_all(samples: Sequence[Sample], root: Path) -> Iterator[Decoded]:
    for unit in decode_units(samples):
        yield from read_unit(samples, unit, root)


class SampleImages:
    """Random access to samples' pixels, for training. Images decode on demand; volume slices (and the
    members of container files) are decoded up front, one read per volume, and held in memory as uint8 (an
    8-slice 240x240 RGB stack is 1.4 MB per patient), because shuffled access would otherwise decompress a
    volume for every slice drawn."""

    def __init__(self, samples: Sequence[Sample], root: Path) -> None:
        self.samples = list(samples)
        positions = [i for i, s in enumerate(self.samples) if s.decode_key is not None]
        self.slices: dict[int, np.ndarray] = {}
        for item in read_all([self.samples[i] for i in positions], root):
            if item.error is not None:
                raise MedprobeError(item.error)
            self.slices[positions[item.position]] = np.asarray(item.image)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Image.Image:
        if index in self.slices:
            return Image.fromarray(self.slices[index], mode="RGB")
        sample = self.samples[index]
        return decode_image(read_image_bytes(sample.path), sample.path, windows=sample.windows)

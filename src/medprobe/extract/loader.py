"""Decoding and preprocessing in DataLoader workers, overlapped with the forward pass.

Work is handed out in decode units (an image, or all the slices taken from one volume), round-robin over
the workers, so each volume is decompressed once. Each unit reads its files once: the same bytes give the
content fingerprint and the pixels. A sample that fails to decode comes back as an error string instead of
killing the worker, so the rest is still extracted and the user gets every bad file named at the end.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from medprobe.data.reader import decode_units, read_unit
from medprobe.data.samples import Sample
from medprobe.models.transforms import ImageTransform
from medprobe.runtime.workers import start_worker


class SampleStream(IterableDataset):
    """Decodes each sample once and applies each transform it is wanted for (`wants[position]`: indices
    into `transforms`; default: every transform): one decode serves several backbones."""

    def __init__(self, samples: list[Sample], root: Path, transforms: list[ImageTransform],
                 wants: list[tuple[int, ...]] | None = None) -> None:
        self.samples, self.root, self.transforms = samples, root, transforms
        self.transform = transforms[0]
        self.wants = wants if wants is not None else [tuple(range(len(transforms)))] * len(samples)
        self.units = decode_units(samples)

    def my_units(self) -> list[list[int]]:
        """This worker's share of the units, round-robin."""
        worker = get_worker_info()
        return self.units if worker is None else self.units[worker.id::worker.num_workers]

    def __iter__(self):
        for unit in self.my_units():
            for item in read_unit(self.samples, unit, self.root):
                if item.error is not None:
                    yield item.position, None, "", "", item.error
                else:
                    pixels = {t: self.transforms[t](item.image) for t in self.wants[item.position]}
                    yield item.position, pixels, item.fingerprint, item.stat, None


def collate(items):
    """A batch: the decoded samples' positions, and per transform the stacked pixels of the samples that
    want it (`pixels[t]`) with their places in `positions` (`rows[t]`)."""
    good = [item for item in items if item[4] is None]
    errors = [(item[0], item[4]) for item in items if item[4] is not None]
    rows: dict[int, list[int]] = {}
    for index, item in enumerate(good):
        for t in item[1]:
            rows.setdefault(t, []).append(index)
    return {
        "positions": [item[0] for item in good],
        "pixels": {t: torch.stack([good[i][1][t] for i in indices]) for t, indices in rows.items()},
        "rows": rows,
        "fingerprints": [item[2] for item in good],
        "stats": [item[3] for item in good],
        "errors": errors,
    }


def make_loader(samples: list[Sample], root: Path, transforms: list[ImageTransform], *, batch_size: int,
                workers: int, pin_memory: bool, wants: list[tuple[int, ...]] | None = None) -> DataLoader:
    stream = SampleStream(samples, root, transforms, wants)
    workers = min(workers, len(stream.units))  # a worker without a unit would only cost start-up time
    return DataLoader(
        stream,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=start_worker,
    )

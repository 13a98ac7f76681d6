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
    def __init__(self, samples: list[Sample], root: Path, transform: ImageTransform) -> None:
        self.samples, self.root, self.transform = samples, root, transform
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
                    yield item.position, self.transform(item.image), item.fingerprint, item.stat, None


def collate(items):
    good = [item for item in items if item[4] is None]
    errors = [(item[0], item[4]) for item in items if item[4] is not None]
    pixels = torch.stack([item[1] for item in good]) if good else None
    return {
        "positions": [item[0] for item in good],
        "pixels": pixels,
        "fingerprints": [item[2] for item in good],
        "stats": [item[3] for item in good],
        "errors": errors,
    }


def make_loader(samples: list[Sample], root: Path, transform: ImageTransform, *, batch_size: int, workers: int,
                pin_memory: bool) -> DataLoader:
    stream = SampleStream(samples, root, transform)
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

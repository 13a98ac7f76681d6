"""Decoding and preprocessing in DataLoader workers, overlapped with the forward pass.

Each item reads its file once: the same bytes give the content fingerprint and the decoded image. A file
that fails to decode comes back as an error string instead of killing the worker, so the rest of the batch
is still extracted and the user gets every bad file named at the end.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from medprobe.cache.freshness import stat_signature
from medprobe.data.images import decode_image, fingerprint_bytes, read_image_bytes
from medprobe.errors import MedprobeError
from medprobe.models.transforms import ImageTransform


class ImageFiles(TorchDataset):
    def __init__(self, paths: list[Path], transform: ImageTransform) -> None:
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.paths[index]
        try:
            stat = stat_signature(path)
            data = read_image_bytes(path)
            tensor = self.transform(decode_image(data, path))
            return index, tensor, fingerprint_bytes(data), stat, None
        except (MedprobeError, OSError) as exc:
            return index, None, "", "", str(exc)


def collate(items):
    good = [item for item in items if item[4] is None]
    errors = [item[4] for item in items if item[4] is not None]
    pixels = torch.stack([item[1] for item in good]) if good else None
    return {
        "positions": [item[0] for item in good],
        "pixels": pixels,
        "fingerprints": [item[2] for item in good],
        "stats": [item[3] for item in good],
        "errors": errors,
    }


def make_loader(paths: list[Path], transform: ImageTransform, *, batch_size: int, workers: int,
                pin_memory: bool) -> DataLoader:
    return DataLoader(
        ImageFiles(paths, transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )

"""Training-time images: the standard, mild medical augmentation, reproducible per (seed, epoch, sample)
so that an interrupted run resumes to the same result, whatever the number of workers.

RandomResizedCrop to the backbone's input size (scale 0.7-1.0, aspect 3/4-4/3), horizontal flip (p=0.5),
rotation of up to +-10 degrees; then the backbone's own normalisation. Evaluation uses the exact
extraction pipeline (resize + center crop), so validation and test see what the probes saw.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision.transforms.v2 as T
from torch.utils.data import Dataset as TorchDataset

from medprobe.data.images import decode_image, read_image_bytes
from medprobe.models.preprocess import Preprocessing
from medprobe.models.transforms import ImageTransform

SCALE = (0.7, 1.0)
MAX_ROTATION = 10.0


class TrainImages(TorchDataset):
    def __init__(self, paths: list[Path], labels: list[int], prep: Preprocessing, seed: int) -> None:
        self.paths, self.labels, self.seed = paths, labels, seed
        self.epoch = 0
        self.augment = T.Compose([
            T.RandomResizedCrop(list(prep.input_size), scale=SCALE, antialias=True),
            T.RandomHorizontalFlip(),
            T.RandomRotation(MAX_ROTATION),
        ])
        self.normalise = ImageTransform(Preprocessing(resize=None, crop=None, mean=prep.mean, std=prep.std))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        image = decode_image(read_image_bytes(self.paths[index]), self.paths[index])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hash((self.seed, self.epoch, index)) & 0x7FFFFFFF)
            image = self.augment(image)
        return self.normalise(image), self.labels[index]


class EvalImages(TorchDataset):
    def __init__(self, paths: list[Path], prep: Preprocessing) -> None:
        self.paths = paths
        self.transform = ImageTransform(prep)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        return self.transform(decode_image(read_image_bytes(self.paths[index]), self.paths[index])), index

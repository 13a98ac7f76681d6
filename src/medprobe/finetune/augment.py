"""Training-time images: the standard, mild medical augmentation, reproducible per (seed, epoch, sample)
so that an interrupted run resumes to the same result, whatever the number of workers (which persist
across epochs).

RandomResizedCrop to the backbone's input size (scale 0.7-1.0, aspect 3/4-4/3), horizontal flip (p=0.5),
rotation of up to +-10 degrees; then the backbone's own normalisation. Evaluation uses the exact
extraction pipeline (resize + center crop), so validation and test see what the probes saw.
"""

from __future__ import annotations

import torch
import torchvision.transforms.v2 as T
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import Sampler

from medprobe.data.reader import SampleImages
from medprobe.models.preprocess import Preprocessing
from medprobe.models.transforms import ImageTransform

SCALE = (0.7, 1.0)
MAX_ROTATION = 10.0


class EpochShuffle(Sampler):
    """A fresh permutation per epoch, seeded by (seed, epoch). It yields `epoch * n + index`, so workers
    that live across epochs (persistent_workers) still know which epoch an image belongs to."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        return iter((self.epoch * self.n + order).tolist())


class TrainImages(TorchDataset):
    """Items are keyed `epoch * n + index` (see EpochShuffle)."""

    def __init__(self, images: SampleImages, indices: list[int], labels: list[int], prep: Preprocessing,
                 seed: int) -> None:
        self.images, self.indices, self.labels, self.seed = images, indices, labels, seed
        self.augment = T.Compose([
            T.RandomResizedCrop(list(prep.input_size), scale=SCALE, antialias=True),
            T.RandomHorizontalFlip(),
            T.RandomRotation(MAX_ROTATION),
        ])
        self.normalise = ImageTransform(Preprocessing(resize=None, crop=None, mean=prep.mean, std=prep.std))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: int):
        epoch, index = divmod(key, len(self.indices))
        image = self.images[self.indices[index]]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hash((self.seed, epoch, index)) & 0x7FFFFFFF)
            image = self.augment(image)
        return self.normalise(image), self.labels[index]


class EvalImages(TorchDataset):
    def __init__(self, images: SampleImages, indices: list[int], prep: Preprocessing) -> None:
        self.images, self.indices = images, indices
        self.transform = ImageTransform(prep)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.transform(self.images[self.indices[index]]), index

"""Readers of samples stored inside one container file: the frames of a multi-frame DICOM, the images of a
MedMNIST .npz, the rows of a Hugging Face dataset. A container is read once per decode unit (all of its
samples that are extracted together) and hands out each member's 8-bit RGB picture. A reader registers
itself under the `Member.kind` it serves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

from medprobe.data.images import check_size
from medprobe.data.windows import DEFAULT_WINDOWS, Window, refuse_colour, window_planes
from medprobe.errors import MedprobeError

CONTAINERS: dict[str, type[Container]] = {}


class Container:
    """A subclass registers itself under its `kind`."""

    kind: ClassVar[str]

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        CONTAINERS[cls.kind] = cls

    def __init__(self, path: Path, windows: Sequence[Window]) -> None:
        self.path, self.windows = path, tuple(windows)

    def image(self, key: str) -> Image.Image:
        raise NotImplementedError

    def close(self) -> None:
        """Release open files (called once the unit is decoded)."""


def open_container(kind: str, path: Path, windows: Sequence[Window]) -> Container:
    if kind not in CONTAINERS:
        raise MedprobeError(f"{path}: unknown container kind {kind!r}; known: {', '.join(CONTAINERS)}")
    return CONTAINERS[kind](path, windows)


def array_rgb(pixels: np.ndarray, windows: Sequence[Window], source: str) -> Image.Image:
    """An image array as 8-bit RGB: (H, W) grayscale through the windows (uint8 stays as stored under the
    default window), (H, W, 3) uint8 colour as is, (H, W, 1) as grayscale."""
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    if pixels.ndim == 3 and pixels.shape[-1] == 3 and pixels.dtype == np.uint8:
        refuse_colour(source, "RGB", windows)
        image = Image.fromarray(np.ascontiguousarray(pixels), mode="RGB")
    elif pixels.ndim == 2:
        if pixels.dtype == np.uint8 and tuple(windows) == DEFAULT_WINDOWS:
            image = Image.fromarray(np.ascontiguousarray(pixels), mode="L").convert("RGB")
        else:
            image = Image.fromarray(window_planes(pixels, windows), mode="RGB")
    else:
        raise MedprobeError(f"{source}: an image of shape {pixels.shape} ({pixels.dtype}) is neither grayscale nor "
                            "8-bit RGB; convert it")
    check_size(image, source)
    return image


class DicomFrames(Container):
    """`file.dcm#frame:3`: frame 3 (0-based) of a multi-frame DICOM."""

    kind: ClassVar[str] = "dicom-frame"

    def __init__(self, path: Path, windows: Sequence[Window]) -> None:
        from medprobe.data.dicom import read_dataset
        from medprobe.data.images import read_image_bytes

        super().__init__(path, windows)
        self.dataset = read_dataset(read_image_bytes(path), path)

    def image(self, key: str) -> Image.Image:
        from medprobe.data.dicom import dataset_rgb

        source = f"{self.path}#frame:{key}"
        image = dataset_rgb(self.dataset, source, frame=int(key), windows=self.windows)
        check_size(image, source)
        return image


class MedMNISTImages(Container):
    """`train/000123` of a MedMNIST .npz (`train_images[123]`), or `train/000123#slice:14`: plane 14 along
    the first axis of a 3-D variant's volume."""

    kind: ClassVar[str] = "medmnist"

    def __init__(self, path: Path, windows: Sequence[Window]) -> None:
        super().__init__(path, windows)
        try:
            self.arrays = np.load(path)  # lazy: a split's array is read when first asked for
        except (OSError, ValueError) as exc:
            raise MedprobeError(f"cannot read MedMNIST file {path}: {exc}; download it again") from exc
        self.images: dict[str, np.ndarray] = {}

    def close(self) -> None:
        self.arrays.close()

    def image(self, key: str) -> Image.Image:
        split, _, rest = key.partition("/")
        index, _, plane = rest.partition("#slice:")
        if split not in self.images:
            self.images[split] = self.arrays[f"{split}_images"]
        pixels = self.images[split][int(index)]
        return array_rgb(pixels[int(plane)] if plane else pixels, self.windows, f"{self.path}:{key}")


class HuggingFaceRows(Container):
    """`image/123`: the `image` column of row 123 of one split (a save_to_disk folder or a parquet file)."""

    kind: ClassVar[str] = "hf-dataset"

    def __init__(self, path: Path, windows: Sequence[Window]) -> None:
        from medprobe.data.hf_datasets import open_part

        super().__init__(path, windows)
        self.table = open_part(path)
        self.columns: dict[str, object] = {}

    def image(self, key: str) -> Image.Image:
        from medprobe.data.images import image_to_rgb

        column, _, index = key.rpartition("/")
        if column not in self.columns:
            self.columns[column] = self.table.select_columns([column])
        value = self.columns[column][int(index)][column]
        source = f"{self.path}:{key}"
        if isinstance(value, Image.Image):
            image = image_to_rgb(value, self.windows, source)
            check_size(image, source)
            return image
        if value is None:
            raise MedprobeError(f"{source}: the row has no image; fill it in or drop the row")
        return array_rgb(np.asarray(value), self.windows, source)

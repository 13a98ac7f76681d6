"""The preprocessing pipeline itself: 8-bit RGB PIL image -> normalised float tensor (C, H, W).

It follows the Preprocessing record exactly, including whose resize and crop rounding the backbone was
evaluated with, so that features match the reference path (see tests/test_fidelity.py).
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms.v2.functional as tvf
from PIL import Image
from torchvision.transforms import InterpolationMode

from medprobe.models.preprocess import Preprocessing

_PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING,
}
_TORCH_MODES = {
    "nearest": InterpolationMode.NEAREST, "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC, "lanczos": InterpolationMode.LANCZOS,
}
# the filters torchvision resizes tensors with (also on a GPU); lanczos, box and hamming are PIL-only
TENSOR_RESIZE_MODES = {name: _TORCH_MODES[name] for name in ("nearest", "bilinear", "bicubic")}


def output_size(height: int, width: int, resize: int | tuple[int, int]) -> tuple[int, int]:
    """Shortest edge -> `resize`, the other edge truncated (as torchvision and transformers do)."""
    if isinstance(resize, tuple):
        return resize
    if height <= width:
        return resize, int(resize * width / height)
    return int(resize * height / width), resize


def _crop_box(height: int, width: int, crop: tuple[int, int], rounding: str) -> tuple[int, int]:
    if rounding == "round":
        return int(round((height - crop[0]) / 2.0)), int(round((width - crop[1]) / 2.0))
    return int((height - crop[0]) / 2.0), int((width - crop[1]) / 2.0)


class ImageTransform:
    """Picklable callable (runs in DataLoader workers)."""

    def __init__(self, preprocessing: Preprocessing) -> None:
        self.prep = preprocessing
        self.mean = torch.tensor(preprocessing.mean).view(3, 1, 1)
        self.std = torch.tensor(preprocessing.std).view(3, 1, 1)

    def resize_uint8(self, image: Image.Image) -> torch.Tensor:
        prep = self.prep
        if prep.resize is None:
            return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
        height, width = output_size(image.height, image.width, prep.resize)
        if prep.resize_impl == "pil":
            resized = image.resize((width, height), _PIL_FILTERS[prep.interpolation])
            return torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1)
        tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
        mode = _TORCH_MODES.get(prep.interpolation, InterpolationMode.BICUBIC)
        return tvf.resize(tensor, [height, width], interpolation=mode, antialias=True)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.normalise(self.crop(self.resize_uint8(image)))

    def resize_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        """resize_uint8 for a decoded uint8 (3, H, W) tensor on any device (GPU-side decoding): torchvision's
        antialiased resize stands in for PIL's, within a few 8-bit levels (tests/test_scale.py)."""
        if self.prep.resize is None:
            return tensor
        height, width = output_size(tensor.shape[-2], tensor.shape[-1], self.prep.resize)
        mode = TENSOR_RESIZE_MODES[self.prep.interpolation]
        return tvf.resize(tensor, [height, width], interpolation=mode, antialias=True)

    def crop(self, tensor: torch.Tensor) -> torch.Tensor:
        """Center crop; an image smaller than the crop is zero-padded first."""
        if self.prep.crop is None:
            return tensor
        crop = self.prep.crop
        height, width = tensor.shape[-2:]
        if height < crop[0] or width < crop[1]:
            pad_h, pad_w = max(crop[0] - height, 0), max(crop[1] - width, 0)
            tensor = tvf.pad(tensor, [pad_w // 2, pad_h // 2, (pad_w + 1) // 2, (pad_h + 1) // 2], fill=0)
            height, width = tensor.shape[-2:]
        top, left = _crop_box(height, width, crop, self.prep.crop_rounding)
        return tensor[..., top:top + crop[0], left:left + crop[1]]

    def normalise(self, tensor: torch.Tensor) -> torch.Tensor:
        """uint8 (..., 3, H, W) -> float, scaled to [0, 1] and normalised; on the tensor's device."""
        mean, std = self.mean.to(tensor.device), self.std.to(tensor.device)
        return (tensor.float() / 255.0 - mean) / std

"""Preprocessing as data (no torch): what a backbone's own config says, so the cache can key on it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


@dataclass(frozen=True)
class Preprocessing:
    """resize: shortest edge (int) or exact (height, width); crop: center crop (height, width) or None.

    resize_impl says whose resize the backbone was evaluated with: "pil" (timm, torchvision) or "torch"
    (transformers' torchvision backend); crop_rounding how an odd margin is split ("round" in
    torchvision, "floor" in transformers). Both matter for matching the reference features exactly.
    """

    resize: int | tuple[int, int] | None
    crop: tuple[int, int] | None
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize_impl: str = "pil"
    crop_rounding: str = "round"

    @property
    def input_size(self) -> tuple[int, int]:
        if self.crop is not None:
            return self.crop
        if isinstance(self.resize, tuple):
            return self.resize
        size = self.resize or 224
        return (size, size)

    def with_image_size(self, size: int) -> Preprocessing:
        """Final input `size` x `size`, keeping the backbone's resize-to-crop ratio (e.g. 256/224)."""
        if size < 16:
            raise ValueError("image size must be at least 16")
        crop_h = self.input_size[0]
        if isinstance(self.resize, int) and self.crop is not None:
            resize: int | tuple[int, int] | None = round(self.resize * size / crop_h)
        elif isinstance(self.resize, tuple):
            resize = (size, size)
        else:
            resize = size
        crop = (size, size) if self.crop is not None else None
        return replace(self, resize=resize, crop=crop)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Preprocessing:
        data = json.loads(text)
        for key in ("crop", "mean", "std"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        if isinstance(data.get("resize"), list):
            data["resize"] = tuple(data["resize"])
        return cls(**data)

    def digest(self) -> str:
        return hashlib.blake2b(self.to_json().encode(), digest_size=4).hexdigest()

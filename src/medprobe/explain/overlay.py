"""The overlay PNG: the image as the backbone saw it (after resize, crop; normalisation undone) beside the
same image under the evidence map, upsampled bilinearly from the feature grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

ALPHA = 0.5
SCALE = 2  # small model inputs (224 px) are drawn twice as large


def write_overlay(path: Path, image: np.ndarray, heat: np.ndarray) -> None:
    """`image`: (H, W, 3) floats in [0, 1]; `heat`: (h, w) in [0, 1]."""
    from matplotlib import colormaps

    height, width = image.shape[:2]
    upsampled = np.asarray(Image.fromarray((heat * 255).astype(np.uint8)).resize((width, height),
                                                                                  Image.Resampling.BILINEAR)) / 255
    coloured = colormaps["inferno"](upsampled)[..., :3]
    blended = (1 - ALPHA) * image + ALPHA * coloured
    side_by_side = np.concatenate([image, np.ones((height, 4, 3)), blended], axis=1)
    picture = Image.fromarray((np.clip(side_by_side, 0, 1) * 255).astype(np.uint8))
    picture = picture.resize((picture.width * SCALE, picture.height * SCALE), Image.Resampling.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)

"""Decoding any supported image file into the 8-bit RGB picture every backbone expects.

- 8-bit grayscale is replicated to 3 channels (as the reference study did).
- 16-bit (and 32-bit int / float) grayscale is windowed to 8 bits between its own 0.5th and 99.5th
  intensity percentiles, then replicated: medical images rarely use their full range, and a plain
  `>> 8` would leave a 12-bit X-ray nearly black.
- RGBA / LA lose their alpha channel; palette images are expanded; multi-page TIFFs use page 1.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from medprobe.errors import MedprobeError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm")
WINDOW_PERCENTILES = (0.5, 99.5)
_HIGH_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def read_image_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise MedprobeError(f"cannot read image {path}: {exc.strerror}; fix the path or remove it") from exc


def window_bounds(pixels: np.ndarray, percentiles: tuple[float, float] = WINDOW_PERCENTILES) -> tuple[float, float]:
    """The [p_low, p_high] intensity percentiles of the finite values (float32: a 240x240x155 volume in
    a fraction of a second)."""
    values = np.asarray(pixels, dtype=np.float32).ravel(order="K")  # NIfTI voxels are Fortran-ordered
    finite = np.isfinite(values)
    values = values[finite] if not finite.all() else values.copy()  # a copy percentile may reorder in place
    if values.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(values, percentiles, overwrite_input=True))
    return low, (high if high > low else low + 1.0)


def apply_window(pixels: np.ndarray, low: float, high: float) -> np.ndarray:
    """Linearly map [low, high] to [0, 255]; NaNs become 0 (the low end)."""
    values = np.nan_to_num(pixels.astype(np.float64), nan=low, posinf=high, neginf=low)
    return np.clip(np.rint((values - low) * (255.0 / (high - low))), 0, 255).astype(np.uint8)


def window_to_uint8(pixels: np.ndarray, percentiles: tuple[float, float] = WINDOW_PERCENTILES) -> np.ndarray:
    """Window an image (or a whole volume) between its own intensity percentiles to 8 bits."""
    return apply_window(pixels, *window_bounds(pixels, percentiles))


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB, following the rules in the module docstring."""
    if image.mode in _HIGH_DEPTH_MODES:
        gray = Image.fromarray(window_to_uint8(np.asarray(image)), mode="L")
        return gray.convert("RGB")
    if image.mode == "RGB":
        return image
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    if image.mode in ("LA", "La"):
        image = image.convert("L")
    return image.convert("RGB")


MIN_SIDE = 8  # a smaller picture is an export placeholder or thumbnail, not an image to classify
_UNREADABLE = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def _size_problem(size: tuple[int, int]) -> str | None:
    if min(size) < MIN_SIDE:
        return f"only {size[0]}x{size[1]} pixels (at least {MIN_SIDE} per side needed)"
    return None


def _unreadable_reason(exc: Exception) -> str:
    if isinstance(exc, Image.DecompressionBombError):
        return f"too many pixels, a possible decompression bomb ({exc})"
    return f"not a readable image ({exc.__class__.__name__}: {exc})"


def _windowed(image: Image.Image, windows, source: Path | str) -> Image.Image:
    """A grayscale image through explicit windows (its stored values are the intensities)."""
    from medprobe.data.windows import refuse_colour, window_planes

    if image.mode not in (*_HIGH_DEPTH_MODES, "L", "LA", "La"):
        refuse_colour(source, image.mode, windows)
    values = np.asarray(image.convert("L") if image.mode in ("LA", "La") else image)
    return Image.fromarray(window_planes(values, windows), mode="RGB")


def image_to_rgb(image: Image.Image, windows, source: Path | str) -> Image.Image:
    """A decoded PIL image -> 8-bit RGB: the rules above under the default window, else the windows."""
    from medprobe.data.windows import DEFAULT_WINDOWS

    return to_rgb(image) if tuple(windows) == DEFAULT_WINDOWS else _windowed(image, windows, source)


def decode_image(data: bytes, source: Path | str, *, windows=None, frame: int | None = None) -> Image.Image:
    """Decode image bytes to RGB; `source` names the file in the error a user sees. `windows` (default: the
    percentile window) map grayscale intensities to 8 bits; `frame` picks one frame of a multi-frame DICOM."""
    from medprobe.data.dicom import decode_dicom_image, is_dicom_bytes
    from medprobe.data.windows import DEFAULT_WINDOWS

    windows = tuple(windows or DEFAULT_WINDOWS)
    if is_dicom_bytes(data) or str(source).lower().endswith(".dcm"):
        image = decode_dicom_image(data, source, frame=frame, windows=windows)
    else:
        try:
            with Image.open(io.BytesIO(data)) as opened:
                opened.seek(0)
                opened.load()
                image = image_to_rgb(opened, windows, source)
        except _UNREADABLE as exc:
            raise MedprobeError(f"cannot decode image {source}: {_unreadable_reason(exc)}; replace or remove the "
                                "file (supported: PNG, JPEG, TIFF, BMP, DICOM)") from exc
    check_size(image, source)
    return image


def check_size(image: Image.Image, source: Path | str) -> None:
    problem = _size_problem(image.size)
    if problem:
        raise MedprobeError(f"image {source} has {problem}; export it at full size or remove it")


def check_image_header(path: Path) -> str | None:
    """Cheap validity check (header only). Returns a reason when the file is unusable, else None."""
    if path.suffix.lower() == ".dcm":
        from medprobe.data.dicom import quiet, read_dataset

        try:
            header = read_dataset(path.read_bytes(), path, pixels=False)
            with quiet(path):
                return _size_problem((int(getattr(header, "Columns", 0)), int(getattr(header, "Rows", 0))))
        except (MedprobeError, OSError, ValueError, TypeError) as exc:
            return f"not a readable DICOM ({exc})"
    try:
        with Image.open(path) as image:
            return _size_problem(image.size)
    except FileNotFoundError:
        return "file not found"
    except _UNREADABLE as exc:
        return _unreadable_reason(exc)

"""3-D volumes (NIfTI, DICOM series) as stacks of 2-D slices.

- Every volume is reoriented to the closest canonical RAS orientation (nibabel `as_closest_canonical`), so
  `axis = "axial"` means the same anatomy whatever orientation the file was written in. Axial slices are
  z = const, coronal y = const, sagittal x = const; each is rotated so that anterior (axial) or superior
  (coronal, sagittal) is up.
- Intensities are windowed to 8 bits per volume (not per slice) between the volume's own percentiles
  (default 0.5 and 99.5 of its finite voxels); NaN and inf voxels become 0.
- Anisotropic voxels are resampled (bilinear) to square pixels at the finer in-plane spacing.
- 4-D volumes (time series, multi-echo) need an explicit `volume` index.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from medprobe.data.images import apply_window
from medprobe.errors import MedprobeError

AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
VOLUME_SUFFIXES = (".nii", ".nii.gz")
SLICE_RULES = ("all", "middle:K", "every:N", "nonzero:F", "mask", "mask-top:K")


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(VOLUME_SUFFIXES)


def is_volume_source(path: Path) -> bool:
    """A NIfTI file or a folder (one DICOM series)."""
    return is_nifti(path) or path.is_dir()


@dataclass(frozen=True)
class SliceRule:
    kind: str  # all | middle | every | nonzero | mask | mask-top
    value: float = 0

    @property
    def needs_voxels(self) -> bool:
        """Whether choosing slices needs the voxel data, not just the header."""
        return self.kind in ("nonzero", "mask", "mask-top")

    @property
    def needs_mask(self) -> bool:
        return self.kind in ("mask", "mask-top")


def parse_slice_rule(text: str, where: str) -> SliceRule:
    kind, _, value = str(text).partition(":")
    kind = kind.strip().lower()
    fix = f"{where}: slices = {text!r} is not one of {', '.join(SLICE_RULES)}"
    if kind in ("all", "mask"):
        if value:
            raise MedprobeError(f"{fix} ({kind} takes no value)")
        return SliceRule(kind)
    if kind not in ("middle", "every", "nonzero", "mask-top") or not value:
        raise MedprobeError(fix)
    try:
        number = float(value) if kind == "nonzero" else int(value)
    except ValueError:
        raise MedprobeError(f"{fix} ({value!r} is not a number)") from None
    if kind == "nonzero" and not 0 <= number <= 1:
        raise MedprobeError(f"{where}: nonzero:{value} needs a foreground fraction between 0 and 1")
    if kind != "nonzero" and number < 1:
        raise MedprobeError(f"{where}: {kind}:{value} needs a whole number of at least 1")
    return SliceRule(kind, number)


@dataclass
class Volume:
    """Voxels in canonical RAS order (x, y, z) and the spacing of each axis in mm."""

    voxels: np.ndarray
    zooms: tuple[float, float, float]
    orientation: str  # the file's own axis codes, e.g. "LAS"


def canonical_shape(image) -> tuple[int, int, int]:
    """The RAS shape from the header alone (no voxel data read)."""
    import nibabel as nib

    order = nib.io_orientation(image.affine)[:, 0].astype(int)
    shape = [0, 0, 0]
    for source_axis, target_axis in enumerate(order[:3]):
        shape[target_axis] = int(image.shape[source_axis])
    return tuple(shape)


def open_nifti(data: bytes, source: Path):
    """A nibabel image from the file's bytes (gzip included), so the file is read exactly once."""
    import nibabel as nib

    try:
        raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
        header_size = int.from_bytes(raw[:4], "little") if raw[:4] else 0
        image_class = nib.Nifti2Image if header_size in (540, 0x1C020000) else nib.Nifti1Image
        return image_class.from_bytes(raw)
    except Exception as exc:  # nibabel raises many types for broken headers and truncated data
        raise MedprobeError(f"cannot read volume {source}: {exc}; re-export it as NIfTI (.nii/.nii.gz)") from exc


def load_header(path: Path):
    """A lazily-loaded image (header only; voxels are not read)."""
    import nibabel as nib

    if path.is_dir():
        from medprobe.data.dicom import read_series

        return read_series(path, read_files(path))
    try:
        return nib.load(path)
    except Exception as exc:
        raise MedprobeError(f"cannot read volume {path}: {exc}; re-export it as NIfTI (.nii/.nii.gz)") from exc


def spatial_image(image, source: Path, volume_index: int | None):
    """The 3-D image to slice: 4-D files need `volume`, other dimensionalities are refused."""
    ndim = len(image.shape)
    if ndim == 4:
        frames = image.shape[3]
        if volume_index is None:
            raise MedprobeError(f"{source} is 4-D ({frames} volumes); set volume = <0..{frames - 1}> in the spec")
        if not 0 <= volume_index < frames:
            raise MedprobeError(f"{source} has {frames} volumes; volume = {volume_index} is out of range")
        return image.slicer[..., volume_index]
    if ndim != 3:
        raise MedprobeError(f"{source} has {ndim} dimensions; medprobe slices 3-D volumes (or 4-D with volume =)")
    return image


def read_volume(blobs: dict[Path, bytes], source: Path, volume_index: int | None) -> Volume:
    """Decode one volume from its file bytes (a NIfTI file, or every file of a DICOM series folder)."""
    import nibabel as nib

    if source.is_dir():
        from medprobe.data.dicom import read_series

        image = read_series(source, blobs)
    else:
        image = open_nifti(blobs[source], source)
    image = spatial_image(image, source, volume_index)
    orientation = "".join(nib.aff2axcodes(image.affine))
    try:
        canonical = nib.as_closest_canonical(image)
        voxels = np.asarray(canonical.dataobj, dtype=np.float32)
    except Exception as exc:
        raise MedprobeError(f"cannot read the voxels of {source}: {exc}; the file is truncated or broken") from exc
    zooms = tuple(float(z) for z in canonical.header.get_zooms()[:3])
    return Volume(voxels=voxels, zooms=zooms, orientation=orientation)


def take_slice(voxels: np.ndarray, axis: str, index: int) -> np.ndarray:
    """One plane, upright (still in the volume's own intensities)."""
    where = [slice(None)] * 3
    where[AXES[axis]] = index
    return np.rot90(voxels[tuple(where)])  # a view: np.take would copy through a slow generic path


def square_pixels(plane: np.ndarray, zooms: tuple[float, float, float], axis: str) -> np.ndarray:
    """Resample an upright uint8 plane to square pixels at the finer in-plane spacing."""
    col_spacing, row_spacing = [z for i, z in enumerate(zooms) if i != AXES[axis]]  # rot90: first axis -> columns
    finest = min(row_spacing, col_spacing)
    if finest <= 0 or np.isclose(row_spacing, col_spacing, rtol=1e-3):
        return np.ascontiguousarray(plane)
    rows = max(1, round(plane.shape[0] * row_spacing / finest))
    cols = max(1, round(plane.shape[1] * col_spacing / finest))
    return np.asarray(Image.fromarray(np.ascontiguousarray(plane)).resize((cols, rows), Image.BILINEAR))


def slice_image(channels: list[tuple[np.ndarray, tuple[float, float]]], zooms, axis: str, index: int) -> Image.Image:
    """One (gray, replicated) or three (stacked modalities) volumes, each with its (low, high) window ->
    an RGB slice. Only the slice is windowed: the bounds came from the whole volume."""
    planes = [square_pixels(apply_window(take_slice(voxels, axis, index), *bounds), zooms, axis)
              for voxels, bounds in channels]
    if len(planes) == 1:
        return Image.fromarray(planes[0], mode="L").convert("RGB")
    return Image.fromarray(np.stack(planes, axis=-1), mode="RGB")


def foreground_fractions(voxels: np.ndarray, axis: str) -> np.ndarray:
    """Per slice, the fraction of finite voxels above the volume's minimum (its background)."""
    finite = np.isfinite(voxels)
    background = voxels[finite].min() if finite.any() else 0.0
    foreground = finite & (voxels > background)
    other = tuple(i for i in range(3) if i != AXES[axis])
    return foreground.mean(axis=other)


def select_slices(rule: SliceRule, length: int, *, axis: str, voxels: np.ndarray | None = None,
                  mask: np.ndarray | None = None) -> list[int]:
    if rule.kind == "all":
        return list(range(length))
    if rule.kind == "middle":
        count = min(int(rule.value), length)
        start = (length - count) // 2
        return list(range(start, start + count))
    if rule.kind == "every":
        return list(range(0, length, int(rule.value)))
    if rule.kind == "nonzero":
        return [int(i) for i in np.flatnonzero(foreground_fractions(voxels, axis) >= rule.value)]
    other = tuple(i for i in range(3) if i != AXES[axis])
    area = (np.nan_to_num(mask) > 0).sum(axis=other)
    if rule.kind == "mask":
        return [int(i) for i in np.flatnonzero(area > 0)]
    ranked = np.argsort(-area, kind="stable")[: int(rule.value)]  # ties: the lower index first
    return sorted(int(i) for i in ranked if area[i] > 0)


def read_files(source: Path) -> dict[Path, bytes]:
    """The bytes of a volume source: one NIfTI file, or every file of a DICOM series folder."""
    files = [source] if source.is_file() else sorted(p for p in source.iterdir()
                                                     if p.is_file() and not p.name.startswith("."))
    try:
        return {path: path.read_bytes() for path in files}
    except OSError as exc:
        raise MedprobeError(f"cannot read volume {source}: {exc.strerror}; fix the path or remove the row") from exc

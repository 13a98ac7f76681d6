"""DICOM: a `.dcm` file as a 2-D image, a folder holding one series as a volume. pydicom is an optional
extra (`pip install 'medprobe[dicom]'`); compressed transfer syntaxes need pydicom's pixel plugins."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from medprobe.data.images import window_to_uint8
from medprobe.errors import MedprobeError

# LPS (DICOM patient space) -> RAS (NIfTI world space)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _pydicom():
    try:
        import pydicom
    except ImportError:
        raise MedprobeError("DICOM needs pydicom; install it with: pip install 'medprobe[dicom]'") from None
    return pydicom


def is_dicom_bytes(data: bytes) -> bool:
    return data[128:132] == b"DICM"


def read_dataset(data: bytes, source: Path | str, *, pixels: bool = True):
    pydicom = _pydicom()
    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=not pixels, force=True)
    except Exception as exc:
        raise MedprobeError(f"cannot read DICOM {source}: {exc}; replace or remove the file") from exc


def modality_pixels(dataset, source: Path | str) -> np.ndarray:
    """Stored values -> modality values (RescaleSlope/Intercept applied), first frame of a multi-frame file."""
    try:
        pixels = dataset.pixel_array
    except Exception as exc:
        raise MedprobeError(f"cannot decode the pixels of DICOM {source}: {exc}; install pydicom's pixel "
                            "plugins (pylibjpeg) for compressed files or re-export uncompressed") from exc
    if int(getattr(dataset, "NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]
    slope = float(getattr(dataset, "RescaleSlope", 1) or 1)
    intercept = float(getattr(dataset, "RescaleIntercept", 0) or 0)
    return pixels.astype(np.float32) * slope + intercept


def decode_dicom_image(data: bytes, source: Path | str) -> Image.Image:
    """A 2-D DICOM as 8-bit RGB: colour stays colour, grayscale is percentile-windowed like 16-bit PNGs,
    MONOCHROME1 (white = low values) is inverted so that bone is bright as in MONOCHROME2."""
    dataset = read_dataset(data, source)
    photometric = str(getattr(dataset, "PhotometricInterpretation", "MONOCHROME2"))
    if photometric in ("RGB", "YBR_FULL", "YBR_FULL_422"):
        pixels = dataset.pixel_array
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            pixels = convert_color_space(pixels, photometric, "RGB")
        return Image.fromarray(np.asarray(pixels, dtype=np.uint8), mode="RGB")
    gray = window_to_uint8(modality_pixels(dataset, source))
    if photometric == "MONOCHROME1":
        gray = 255 - gray
    if gray.ndim != 2:
        raise MedprobeError(f"DICOM {source} is not a 2-D grayscale image (shape {gray.shape}); re-export it")
    return Image.fromarray(gray, mode="L").convert("RGB")


def read_series(folder: Path, blobs: dict[Path, bytes]):
    """One DICOM series (a folder of single-slice files) as a nibabel image in RAS world space."""
    import nibabel as nib

    if not blobs:
        raise MedprobeError(f"DICOM folder {folder} is empty; point the row at a folder holding one series")
    slices = [(path, read_dataset(data, path)) for path, data in blobs.items()]
    series = {str(getattr(ds, "SeriesInstanceUID", "")) for _, ds in slices}
    if len(series) > 1:
        raise MedprobeError(f"DICOM folder {folder} holds {len(series)} series; give each series its own folder")
    for path, ds in slices:
        if not all(hasattr(ds, tag) for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")):
            raise MedprobeError(f"DICOM {path} lacks ImagePositionPatient/ImageOrientationPatient/PixelSpacing; "
                                "it cannot be stacked into a volume")
    orientation = np.asarray(slices[0][1].ImageOrientationPatient, dtype=np.float64)
    along_row, along_column = orientation[:3], orientation[3:]
    normal = np.cross(along_row, along_column)
    slices.sort(key=lambda item: float(np.dot(normal, np.asarray(item[1].ImagePositionPatient, dtype=float))))
    stack = np.stack([modality_pixels(ds, path) for path, ds in slices], axis=-1)  # (rows, columns, n)
    voxels = stack.transpose(1, 0, 2)  # first index walks along a row, like NIfTI's i
    row_spacing, column_spacing = (float(v) for v in slices[0][1].PixelSpacing)
    first = np.asarray(slices[0][1].ImagePositionPatient, dtype=np.float64)
    if len(slices) > 1:
        step = (np.asarray(slices[-1][1].ImagePositionPatient, dtype=np.float64) - first) / (len(slices) - 1)
    else:
        step = normal * float(getattr(slices[0][1], "SliceThickness", 1.0) or 1.0)
    affine = np.eye(4)
    affine[:3, 0] = along_row * column_spacing
    affine[:3, 1] = along_column * row_spacing
    affine[:3, 2] = step
    affine[:3, 3] = first
    return nib.Nifti1Image(voxels, LPS_TO_RAS @ affine)

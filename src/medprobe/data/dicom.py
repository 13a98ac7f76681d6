"""DICOM: a `.dcm` file as a 2-D image (or, with `frames = "all"`, each frame of a multi-frame file), a folder
holding one series as a volume. pydicom is an optional extra (`pip install 'medprobe[dicom]'`); compressed
transfer syntaxes pydicom cannot decode with Pillow need its pixel plugins (pylibjpeg, gdcm).

Decoding rules (the pixels equal pydicom's own decoded array, which already converts YBR to RGB):

  MONOCHROME2            Modality LUT / RescaleSlope+Intercept, then the window(s) -> 8 bits
  MONOCHROME1            the same, then inverted (low values are white), so bone is bright as in MONOCHROME2
  RGB                    as decoded; more than 8 bits stored are scaled to 0..255 by 255 / (2^BitsStored - 1)
  YBR_FULL, YBR_FULL_422 pydicom's RGB conversion (never a second one), then as RGB
  YBR_RCT, YBR_ICT       JPEG 2000 colour: the decoder's RGB, then as RGB
  PALETTE COLOR          the indices through the file's red/green/blue palette LUTs, scaled to 8 bits by the
                         LUT entry depth

pydicom's warnings (odd but readable files) are counted, not printed: `take_warnings()` says how many and
the CLI prints one line; with MEDPROBE_DEBUG=1 (`--debug`) each is shown in full.
"""

from __future__ import annotations

import io
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from medprobe.data.windows import DEFAULT_WINDOWS, Window, refuse_colour, window_planes
from medprobe.errors import MedprobeError
from medprobe.runtime.workers import debugging

# LPS (DICOM patient space) -> RAS (NIfTI world space)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_WARNINGS: Counter[str] = Counter()  # message -> count, in this process


def _pydicom():
    try:
        import pydicom
    except ImportError:
        raise MedprobeError("DICOM needs pydicom; install it with: pip install 'medprobe[dicom]'") from None
    return pydicom


def is_dicom_bytes(data: bytes) -> bool:
    return data[128:132] == b"DICM"


@contextmanager
def quiet(source: Path | str):
    """pydicom's warnings inside the block are counted (or shown in full under --debug); nested blocks count
    each warning once."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for item in caught:
                message = f"{source}: {item.message}"
                if debugging():
                    print(f"warning: {message}", file=sys.stderr)
                _WARNINGS[message] += 1


def one_line(exc: Exception) -> str:
    """pydicom's multi-line messages (one line per decoding plugin tried) as one line."""
    return " ".join(str(exc).split())


def take_warnings() -> Counter[str]:
    """The pydicom warnings counted in this process since the last call."""
    taken = Counter(_WARNINGS)
    _WARNINGS.clear()
    return taken


def read_dataset(data: bytes, source: Path | str, *, pixels: bool = True):
    pydicom = _pydicom()
    try:
        with quiet(source):
            return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=not pixels, force=True)
    except Exception as exc:
        raise MedprobeError(f"cannot read DICOM {source}: {one_line(exc)}; replace or remove the file") from exc


def frame_count(dataset) -> int:
    return int(getattr(dataset, "NumberOfFrames", 1) or 1)


def frames_in(path: Path) -> int:
    """The number of frames of a DICOM file, from its header (1 for an unreadable file: it fails later, where
    unreadable images are reported)."""
    pydicom = _pydicom()
    try:
        with quiet(path):
            return frame_count(pydicom.dcmread(path, stop_before_pixels=True, force=True))
    except Exception:
        return 1


def stored_pixels(dataset, source: Path | str, frame: int | None = None) -> np.ndarray:
    """One frame as pydicom decodes it (YBR already converted to RGB): the first frame unless `frame`."""
    frames = frame_count(dataset)
    if frame is not None and not 0 <= frame < frames:
        raise MedprobeError(f"DICOM {source} has {frames} frame(s); frame {frame} does not exist (the file changed, "
                            "reload the dataset)")

    try:
        with quiet(source):
            if frames > 1:
                dataset.pixel_array_options(index=frame or 0)
            return dataset.pixel_array
    except Exception as exc:
        raise MedprobeError(f"cannot decode the pixels of DICOM {source}: {one_line(exc)}; install pydicom's pixel "
                            "plugins (`pip install pylibjpeg pylibjpeg-libjpeg`) for compressed files or re-export "
                            "uncompressed") from exc


def modality_pixels(dataset, source: Path | str, frame: int | None = None) -> np.ndarray:
    """Stored values -> modality values (Modality LUT, or RescaleSlope/Intercept), as float32."""
    from pydicom.pixels import apply_modality_lut

    pixels = stored_pixels(dataset, source, frame)
    with quiet(source):
        return np.asarray(apply_modality_lut(pixels, dataset), dtype=np.float32)


def to_8bit(pixels: np.ndarray, bits: int) -> np.ndarray:
    """Colour values of `bits` bits -> 0..255 (8-bit values unchanged)."""
    if bits == 8 and pixels.dtype == np.uint8:
        return pixels
    return np.clip(np.rint(pixels.astype(np.float64) * (255.0 / (2.0 ** bits - 1))), 0, 255).astype(np.uint8)


def _colour(dataset, source, frame, windows) -> np.ndarray:
    pixels = stored_pixels(dataset, source, frame)
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise MedprobeError(f"DICOM {source} says {dataset.PhotometricInterpretation} but decodes to shape "
                            f"{pixels.shape}; re-export it")
    return to_8bit(pixels, int(getattr(dataset, "BitsStored", 8) or 8))


def _palette(dataset, source, frame, windows) -> np.ndarray:
    from pydicom.pixels import apply_color_lut

    indices = stored_pixels(dataset, source, frame)
    try:
        rgb = apply_color_lut(indices, dataset)
    except Exception as exc:
        raise MedprobeError(f"DICOM {source}: cannot apply its palette colour LUT ({one_line(exc)}); re-export it "
                            "as RGB") from exc
    depth = int(dataset.RedPaletteColorLookupTableDescriptor[2])
    return to_8bit(rgb, depth)


def _grayscale(dataset, source, frame, windows) -> np.ndarray:
    values = modality_pixels(dataset, source, frame)
    if values.ndim != 2:
        raise MedprobeError(f"DICOM {source} is not a 2-D grayscale image (shape {values.shape}); re-export it")
    planes = window_planes(values, windows)
    return 255 - planes if str(dataset.PhotometricInterpretation) == "MONOCHROME1" else planes


COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT")
PHOTOMETRIC: dict[str, Callable] = {"MONOCHROME1": _grayscale, "MONOCHROME2": _grayscale,
                                    "PALETTE COLOR": _palette, **{name: _colour for name in COLOUR}}


def dataset_rgb(dataset, source: Path | str, *, frame: int | None = None,
                windows: Sequence[Window] = DEFAULT_WINDOWS) -> Image.Image:
    """One frame of a read dataset as 8-bit RGB, by the rules in the module docstring."""
    with quiet(source):
        photometric = str(getattr(dataset, "PhotometricInterpretation", "MONOCHROME2")).strip()
    rule = PHOTOMETRIC.get(photometric)
    if rule is None:
        raise MedprobeError(f"DICOM {source} has photometric interpretation {photometric!r}; medprobe reads "
                            f"{', '.join(PHOTOMETRIC)}: re-export it as one of those")
    if rule is not _grayscale:
        refuse_colour(source, photometric, windows)
    try:
        with quiet(source):
            pixels = rule(dataset, source, frame, windows)
    except MedprobeError:
        raise
    except Exception as exc:  # a malformed element (e.g. NumberOfFrames '1A') surfaces when it is first read
        raise MedprobeError(f"cannot decode DICOM {source}: {one_line(exc)}; replace or remove the file") from exc
    return Image.fromarray(np.ascontiguousarray(pixels), mode="RGB")


def decode_dicom_image(data: bytes, source: Path | str, *, frame: int | None = None,
                       windows: Sequence[Window] = DEFAULT_WINDOWS) -> Image.Image:
    """A 2-D DICOM (one frame of it) as 8-bit RGB."""
    return dataset_rgb(read_dataset(data, source), source, frame=frame, windows=windows)


def read_series(folder: Path, blobs: dict[Path, bytes]):
    """One DICOM series (a folder of single-slice files) as a nibabel image in RAS world space."""

    if not blobs:
        raise MedprobeError(f"DICOM folder {folder} is empty; point the row at a folder holding one series")
    with quiet(folder):
        return _series_image(folder, blobs)


def _series_image(folder: Path, blobs: dict[Path, bytes]):
    import nibabel as nib

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

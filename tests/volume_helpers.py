"""Synthetic NIfTI cohorts: bright 'lesions' whose position along z depends on the grade."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (20, 24, 16)  # canonical RAS (x, y, z)


def brain(rng: np.random.Generator, grade: int, shape=SHAPE) -> np.ndarray:
    """A noisy ellipsoid 'head' with a bright lesion; the lesion sits higher for higher grades."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    head = ((x / 0.8) ** 2 + (y / 0.9) ** 2 + (z / 0.9) ** 2 < 1).astype(np.float32)
    volume = head * (300 + 40 * rng.standard_normal(shape)).astype(np.float32)
    cx, cy, cz = rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3), -0.4 + 0.4 * grade
    lesion = (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 < 0.12
    volume[lesion] += 900
    return volume


def save_nifti(path: Path, voxels: np.ndarray, zooms=(1.0, 1.0, 1.0), axcodes: str = "RAS") -> Path:
    """Write canonical voxels re-oriented to `axcodes`: the same anatomy in another file orientation."""
    image = nib.Nifti1Image(voxels.astype(np.float32), np.diag([*zooms, 1.0]))
    if axcodes != "RAS":
        transform = nib.orientations.ornt_transform(nib.io_orientation(image.affine),
                                                    nib.orientations.axcodes2ornt(tuple(axcodes)))
        image = image.as_reoriented(transform)
        assert "".join(nib.aff2axcodes(image.affine)) == axcodes
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)
    return path


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def glioma_cohort(root: Path, patients: int = 12, modalities=("t1",), seed: int = 0) -> Path:
    """`patients` volumes per modality, three grades, one CSV per modality sharing the group column."""
    rng = np.random.default_rng(seed)
    grades = [i % 3 for i in range(patients)]
    rows: dict[str, list[dict]] = {m: [] for m in modalities}
    for i, grade in enumerate(grades):
        anatomy = brain(rng, grade)
        for k, modality in enumerate(modalities):
            voxels = anatomy * (1 + 0.3 * k) + 20 * k
            save_nifti(root / modality / f"p{i:02d}.nii.gz", voxels, zooms=(1.0, 1.0, 1.5))
            rows[modality].append({"path": f"{modality}/p{i:02d}.nii.gz", "label": f"grade{grade + 2}",
                                   "group": f"p{i:02d}"})
    for modality in modalities:
        write_rows(root / f"{modality}.csv", rows[modality])
    return root


def write_spec(path: Path, **keys) -> Path:
    lines = []
    for key, value in keys.items():
        lines.append(f"{key} = {value!r}".replace("'", '"') if not isinstance(value, list)
                     else f"{key} = [{', '.join(repr(v).replace(chr(39), chr(34)) for v in value)}]")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_dicom_series(folder: Path, voxels: np.ndarray, spacing=(0.8, 0.9, 2.0), seed: int = 0) -> Path:
    """An axial MR series, one file per z slice, in shuffled file-name order. voxels are (x, y, z) in LPS
    patient axes, as DICOM stores them: pixel (row r, column c) of slice k is voxels[c, r, k]."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series = generate_uid()
    order = np.random.default_rng(seed).permutation(voxels.shape[2])
    for name, k in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"IM{name:04d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID, ds.Modality = series, "MR"
        ds.Rows, ds.Columns = voxels.shape[1], voxels.shape[0]
        ds.PixelSpacing = [spacing[1], spacing[0]]  # between rows, between columns
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, float(k * spacing[2])]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 2, -100
        ds.PixelData = np.ascontiguousarray(voxels[:, :, k].T.astype(np.int16)).tobytes()
        ds.save_as(folder / f"IM{name:04d}.dcm", enforce_file_format=True)
    return folder


def write_dicom_image(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", slope=1.0,
                      intercept=0.0) -> Path:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = np.ascontiguousarray(pixels.astype(np.uint16)).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path

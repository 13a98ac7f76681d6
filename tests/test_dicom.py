from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from test_volumes import images_of
from volume_helpers import brain, write_dicom_image, write_dicom_series, write_rows, write_spec

from medprobe.data import decode_image, load_dataset
from medprobe.data.dicom import LPS_TO_RAS
from medprobe.data.images import window_to_uint8
from medprobe.errors import MedprobeError

pytest.importorskip("pydicom")


def test_dicom_series_equals_the_same_volume_as_nifti(tmp_path):
    rng = np.random.default_rng(0)
    voxels = np.rint(brain(rng, 1, shape=(20, 24, 10))).astype(np.int16)  # LPS (x, y, z)
    spacing = (0.8, 0.9, 2.0)
    for name in ("a", "b"):
        write_dicom_series(tmp_path / "dicom" / name, voxels if name == "a" else voxels[::-1], spacing)
    modality = (voxels * 2.0 - 100).astype(np.float32)  # what RescaleSlope/Intercept give
    for name, data in (("a", modality), ("b", modality[::-1])):
        affine = LPS_TO_RAS @ np.diag([*spacing, 1.0])
        nib.save(nib.Nifti1Image(data, affine), tmp_path / "dicom" / f"{name}.nii.gz")
    write_rows(tmp_path / "dicom" / "series.csv", [{"path": "a", "label": "a"}, {"path": "b", "label": "b"}])
    write_rows(tmp_path / "dicom" / "nifti.csv", [{"path": "a.nii.gz", "label": "a"},
                                                  {"path": "b.nii.gz", "label": "b"}])
    for axis in ("axial", "sagittal"):
        series = load_dataset(write_spec(tmp_path / "dicom" / "s.toml", manifest="series.csv", axis=axis))
        nifti = load_dataset(write_spec(tmp_path / "dicom" / "n.toml", manifest="nifti.csv", axis=axis))
        assert [s.slice.index for s in series.samples] == [s.slice.index for s in nifti.samples]
        assert series.ids[0] == f"a#{axis}:0"
        for mine, reference in zip(images_of(series), images_of(nifti), strict=True):
            np.testing.assert_array_equal(mine, reference)


def test_dicom_series_folder_with_two_series_is_refused(tmp_path):
    voxels = np.ones((6, 6, 3), np.int16)
    write_dicom_series(tmp_path / "mixed", voxels, seed=0)
    write_dicom_series(tmp_path / "other", voxels, seed=1)
    (tmp_path / "other" / "IM0000.dcm").rename(tmp_path / "mixed" / "IM9999.dcm")
    write_rows(tmp_path / "rows.csv", [{"path": "mixed", "label": "a"}, {"path": "other", "label": "b"}])
    with pytest.raises(MedprobeError, match="holds 2 series"):
        load_dataset(write_spec(tmp_path / "s.toml", manifest="rows.csv"))


def test_dicom_file_as_a_2d_image(tmp_path):
    pixels = np.arange(64 * 48, dtype=np.uint16).reshape(64, 48) % 4000
    plain = write_dicom_image(tmp_path / "x" / "a" / "plain.dcm", pixels, slope=2, intercept=-10)
    inverted = write_dicom_image(tmp_path / "x" / "b" / "inverted.dcm", pixels, photometric="MONOCHROME1")
    expected = window_to_uint8(pixels * 2.0 - 10)
    np.testing.assert_array_equal(np.asarray(decode_image(plain.read_bytes(), plain))[..., 0], expected)
    np.testing.assert_array_equal(np.asarray(decode_image(inverted.read_bytes(), inverted))[..., 1],
                                  255 - window_to_uint8(pixels.astype(np.float32)))
    dataset = load_dataset(tmp_path / "x")  # .dcm files in class folders are images
    assert dataset.ids == ["a/plain.dcm", "b/inverted.dcm"]
    with pytest.raises(MedprobeError, match="cannot read DICOM .*broken.dcm"):
        decode_image(b"\0" * 128 + b"DICM" + b"\xff" * 10, tmp_path / "broken.dcm")

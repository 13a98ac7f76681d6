"""DICOM decoding against pydicom's own bundled test files (its package folder, read offline; never
pydicom.data.get_testdata_files, which may download)."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from medprobe.data import decode_image, load_dataset
from medprobe.data.images import window_to_uint8

pydicom = pytest.importorskip("pydicom")
from pydicom.pixels import apply_color_lut, apply_modality_lut  # noqa: E402

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
RGB_ORIGINAL = "SC_rgb_dcmtk_+eb+cr.dcm"
YBR_TWINS = ["SC_rgb_dcmtk_+eb+cy+n1.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm", "SC_rgb_dcmtk_+eb+cy+s2.dcm",
             "SC_rgb_jpeg_dcmtk.dcm", "SC_ybr_full_422_uncompressed.dcm"]
UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}


def pydicom_reference(path: Path):
    """(dataset, first frame as pydicom decodes it) or None when pydicom itself cannot decode the file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            dataset = pydicom.dcmread(path, force=True)
            if "PixelData" not in dataset:
                return None
            pixels = dataset.pixel_array
        except Exception:
            return None
    if int(getattr(dataset, "NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]
    return dataset, pixels


def decodable() -> list[Path]:
    """Every bundled file pydicom decodes to a picture of at least 8 pixels a side."""
    found = []
    for path in sorted(TEST_FILES.glob("*.dcm")):
        reference = pydicom_reference(path)
        if reference is not None and min(reference[1].shape[:2]) >= 8:
            found.append(path)
    return found


def test_every_file_pydicom_decodes_is_extracted(tmp_path):
    from medprobe.cache import read_contents
    from medprobe.extract.runner import extract

    files = decodable()
    assert len(files) >= 40  # the set this test is about (pydicom 3 with Pillow)
    if pydicom.__version__.startswith("3.0."):
        assert len(files) == 47  # the README's count
    folder = tmp_path / "pydicom-files"  # a flat folder: no labels needed to extract
    folder.mkdir()
    for path in files:
        shutil.copy(path, folder / path.name)
    dataset = load_dataset(folder)
    assert not dataset.labelled and len(dataset.samples) == len(files)
    report = extract(dataset=dataset, model="efficientnet-lite0", cache_dir=tmp_path / "cache", device="cpu",
                     precision="fp32", workers=0, batch_size=16, show_progress=False)
    assert report.extracted == len(files) and not report.skipped
    contents = read_contents(report.path)
    assert contents.done.all() and sorted(contents.ids) == sorted(p.name for p in files)

    from medprobe.cache import read_features

    features = read_features(report.path, [RGB_ORIGINAL, *YBR_TWINS], "gap")
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    cosines = features[1:] @ features[0]
    # 0.68 with the double YBR conversion. The floor is the JPEG loss itself: these twins' pixels equal
    # libjpeg's own RGB decode (next test), and efficientnet-lite0 puts them at 0.971-0.974 from the (also
    # lossy) RGB original on this 100x100 colour-bar picture, so 0.98 is out of any decoder's reach.
    assert cosines.min() >= 0.971, dict(zip(YBR_TWINS, cosines.round(3), strict=True))


@pytest.mark.parametrize("name", YBR_TWINS)
def test_ybr_twins_differ_from_the_rgb_original_by_jpeg_noise_only(name):
    original = np.asarray(decode_image((TEST_FILES / RGB_ORIGINAL).read_bytes(), RGB_ORIGINAL), dtype=float)
    twin = np.asarray(decode_image((TEST_FILES / name).read_bytes(), name), dtype=float)
    assert 0.56 <= np.abs(twin - original).mean() <= 2.84  # the README's range; a second YBR->RGB conversion: 96


def libjpeg_rgb(stream: bytes, photometric: str) -> np.ndarray:
    """An independent reference: libjpeg (through Pillow) decoding the JPEG stream to RGB, told the stream's
    colour space where the DICOM header states it (RGB-coded streams may lack the Adobe marker that says so,
    and libjpeg would then assume YCbCr)."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(stream))
    if photometric == "RGB":
        image.tile = [image.tile[0]._replace(args=("RGB", "RGB"))]
    return np.asarray(image.convert("RGB"))


def test_every_colour_jpeg_equals_libjpegs_own_rgb_decode():
    from pydicom.encaps import generate_frames

    checked = []
    for path in decodable():
        dataset, _ = pydicom_reference(path)
        if str(dataset.file_meta.get("TransferSyntaxUID", "")) != "1.2.840.10008.1.2.4.50" \
                or int(dataset.SamplesPerPixel) != 3:
            continue
        frames = int(getattr(dataset, "NumberOfFrames", 1) or 1)
        stream = next(generate_frames(dataset.PixelData, number_of_frames=frames))
        expected = libjpeg_rgb(stream, str(dataset.PhotometricInterpretation))
        np.testing.assert_array_equal(np.asarray(decode_image(path.read_bytes(), path)), expected, err_msg=path.name)
        checked.append(path.name)
    assert {*YBR_TWINS[:-1], RGB_ORIGINAL, "SC_jpeg_no_color_transform.dcm"} <= set(checked)
    assert len(checked) >= 12, checked  # 13 with pydicom 3.0


def test_an_rgb_jpeg_without_the_adobe_marker_is_not_read_as_ycbcr():
    """SC_jpeg_no_color_transform has no marker, its _2 twin the Adobe one; libjpeg left to guess reads
    the first as YCbCr (a magenta picture). medprobe follows the header and decodes both alike."""
    import io

    from PIL import Image
    from pydicom.encaps import generate_frames

    unmarked, marked = (np.asarray(decode_image((TEST_FILES / name).read_bytes(), name), dtype=float)
                        for name in ("SC_jpeg_no_color_transform.dcm", "SC_jpeg_no_color_transform_2.dcm"))
    assert np.abs(unmarked - marked).mean() < 2.5  # JPEG noise between two encodings of one picture
    stream = next(generate_frames(pydicom.dcmread(TEST_FILES / "SC_jpeg_no_color_transform.dcm").PixelData,
                                  number_of_frames=1))
    guessed = np.asarray(Image.open(io.BytesIO(stream)).convert("RGB"), dtype=float)
    assert np.abs(guessed - marked).mean() > 20


def test_uncompressed_files_equal_pydicoms_rgb_pixels_exactly():
    checked = set()
    for path in decodable():
        dataset, pixels = pydicom_reference(path)
        if str(dataset.file_meta.get("TransferSyntaxUID", "")) not in UNCOMPRESSED:
            continue
        mine = np.asarray(decode_image(path.read_bytes(), path))
        photometric = str(dataset.PhotometricInterpretation)
        if photometric == "PALETTE COLOR":
            expected = np.rint(apply_color_lut(pixels, dataset) / 257.0).astype(np.uint8)  # 16-bit LUT entries
            assert len(np.unique(expected.reshape(-1, 3), axis=0)) > 16  # real colours, not grey indices
        elif pixels.ndim == 3:
            expected = pixels
        else:
            gray = window_to_uint8(apply_modality_lut(pixels, dataset))
            expected = np.stack([255 - gray if photometric == "MONOCHROME1" else gray] * 3, axis=-1)
        np.testing.assert_array_equal(mine, expected, err_msg=path.name)
        checked.add(photometric)
    assert {"MONOCHROME2", "RGB", "YBR_FULL_422", "PALETTE COLOR"} <= checked


def test_jpeg2000_colour_equals_pydicoms_rgb():
    path = TEST_FILES / "examples_jpeg2k.dcm"
    dataset, pixels = pydicom_reference(path)
    assert dataset.PhotometricInterpretation == "YBR_RCT"
    np.testing.assert_array_equal(np.asarray(decode_image(path.read_bytes(), path)), pixels)


def test_ct_is_decoded_in_hounsfield_units_through_rescale():
    path = TEST_FILES / "CT_small.dcm"
    dataset, pixels = pydicom_reference(path)
    from medprobe.data.dicom import modality_pixels, read_dataset

    values = modality_pixels(read_dataset(path.read_bytes(), path), path)
    np.testing.assert_array_equal(values, pixels * float(dataset.RescaleSlope) + float(dataset.RescaleIntercept))


def test_pydicom_warnings_become_one_counted_line(tmp_path, capsys):
    from medprobe.cli import main

    folder = tmp_path / "padded"
    folder.mkdir()
    shutil.copy(TEST_FILES / "MR_small_padded.dcm", folder / "a.dcm")  # pydicom warns about its excess padding
    shutil.copy(TEST_FILES / "MR_small.dcm", folder / "b.dcm")
    for debug in ([], ["--debug"]):
        with pytest.raises(SystemExit):
            main(["datasets", "inspect", str(folder), *debug])
        err = capsys.readouterr().err
        if not debug:
            notes = [line for line in err.splitlines() if "pydicom" in line]
            assert len(notes) == 1 and "pydicom warned 1 time(s)" in notes[0] and "--debug" in notes[0], err
            assert "UserWarning" not in err
    assert "warning: " in err and "a.dcm" in err and "pydicom warned" not in err, err


def test_extraction_worker_warnings_stay_off_the_terminal_and_debug_prints_them_in_full(tmp_path):
    """README: --debug prints pydicom's warnings in full, in extraction workers too; without it a worker's
    warnings are silenced (and not counted)."""
    from conftest import save_tiny_timm
    from test_interruptions import forked

    folder = tmp_path / "padded"
    folder.mkdir()
    shutil.copy(TEST_FILES / "MR_small_padded.dcm", folder / "a.dcm")
    shutil.copy(TEST_FILES / "MR_small.dcm", folder / "b.dcm")
    model = save_tiny_timm(tmp_path / "resnet18", "resnet18", input_size=64)
    errs = {}
    for debug in ([], ["--debug"]):
        shutil.rmtree(tmp_path / "cache", ignore_errors=True)
        done = forked("extract", folder, "--model", model, "--cache-dir", tmp_path / "cache", "--device", "cpu",
                      "--precision", "fp32", "--batch-size", 2, "--workers", 1, *debug)
        _, err = done.communicate(timeout=300)
        assert done.returncode == 0, err
        errs[bool(debug)] = err
    assert "excess padding" not in errs[False] and "UserWarning" not in errs[False], errs[False]
    assert "bytes of excess padding to be removed" in errs[True], errs[True]


@pytest.mark.parametrize("photometric", ["CMYK", "HSV"])
def test_other_photometric_interpretations_are_refused_naming_the_file(tmp_path, capsys, photometric):
    from medprobe.cli import main
    from medprobe.errors import MedprobeError

    folder = tmp_path / "data" / "colour"
    folder.mkdir(parents=True)
    dataset = pydicom.dcmread(TEST_FILES / RGB_ORIGINAL)
    dataset.PhotometricInterpretation = photometric
    path = folder / "odd.dcm"
    dataset.save_as(path)
    with pytest.raises(MedprobeError) as refused:
        decode_image(path.read_bytes(), path)
    message = str(refused.value)
    assert f"{path} has photometric interpretation {photometric!r}" in message and "re-export" in message
    assert "\n" not in message
    shutil.copy(TEST_FILES / RGB_ORIGINAL, folder / "fine.dcm")
    with pytest.raises(SystemExit):
        main(["datasets", "inspect", str(tmp_path / "data")])
    out = "".join(capsys.readouterr().out.split())
    assert "1unreadablefile(s)" in out and "odd.dcm" in out and photometric in out


def write_secondary_capture(path: Path, transfer_syntax: str, photometric: str, bits_stored: int,
                            pixel_data: bytes, shape: tuple[int, int]) -> None:
    """A minimal 3-sample Secondary Capture file, written as a scanner would (file meta, preamble)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import UID, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = UID(transfer_syntax)
    dataset = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.Modality = "OT"
    dataset.Rows, dataset.Columns = shape
    dataset.SamplesPerPixel, dataset.PlanarConfiguration = 3, 0
    dataset.PhotometricInterpretation = photometric
    dataset.BitsAllocated = 8 if bits_stored <= 8 else 16
    dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = bits_stored, bits_stored - 1, 0
    dataset.PixelData = pixel_data
    dataset["PixelData"].VR = "OB" if dataset.BitsAllocated == 8 else "OW"
    dataset.save_as(path, enforce_file_format=True)


def test_rgb_stored_in_12_bits_is_scaled_to_8_by_255_over_4095(tmp_path):
    rows, columns = 12, 20
    values = np.random.default_rng(0).integers(0, 4096, size=(rows, columns, 3)).astype(np.uint16)
    values[0, 0] = (0, 2048, 4095)  # the ends and the middle of the range
    path = tmp_path / "rgb12.dcm"
    write_secondary_capture(path, "1.2.840.10008.1.2.1", "RGB", 12, values.astype("<u2").tobytes(),
                            (rows, columns))
    _, pixels = pydicom_reference(path)
    np.testing.assert_array_equal(pixels, values)  # the file holds what was written
    mine = np.asarray(decode_image(path.read_bytes(), path))
    np.testing.assert_array_equal(mine, np.rint(values * (255 / 4095)).astype(np.uint8))
    assert tuple(mine[0, 0]) == (0, 128, 255)


def test_lossy_jpeg2000_ybr_ict_colour_equals_the_decoders_rgb(tmp_path):
    import io

    from PIL import Image
    from pydicom.encaps import encapsulate

    rows, columns = 32, 40
    y, x = np.mgrid[0:rows, 0:columns]
    picture = np.stack([x * 6, y * 7, (x + y) * 3], axis=-1).astype(np.uint8)  # smooth: lossy but faithful
    stream = io.BytesIO()  # irreversible wavelet + the ICT colour transform: what YBR_ICT labels
    Image.fromarray(picture).save(stream, "JPEG2000", irreversible=True, no_jp2=True, mct=1)
    codestream = stream.getvalue()
    path = tmp_path / "ict.dcm"
    write_secondary_capture(path, "1.2.840.10008.1.2.4.91", "YBR_ICT", 8, encapsulate([codestream]),
                            (rows, columns))
    dataset, pixels = pydicom_reference(path)
    assert dataset.PhotometricInterpretation == "YBR_ICT"
    decoder_rgb = np.asarray(Image.open(io.BytesIO(codestream)).convert("RGB"))
    mine = np.asarray(decode_image(path.read_bytes(), path))
    np.testing.assert_array_equal(mine, pixels)
    np.testing.assert_array_equal(mine, decoder_rgb)
    assert np.abs(mine.astype(int) - picture).max() > 0  # lossy: a test of decoding, not of a copy
    assert np.abs(mine.astype(int) - picture).mean() < 3  # yet RGB, not raw Y/Cb/Cr


@pytest.mark.parametrize("name", ["MR_small_jpeg_ls_lossless.dcm", "JPEGLSNearLossless_08.dcm"])
def test_a_syntax_pillow_cannot_decode_is_listed_unreadable_with_the_plugin_to_install(tmp_path, capsys, name):
    import importlib.util

    from medprobe.cli import main

    if any(importlib.util.find_spec(plugin) for plugin in ("libjpeg", "gdcm", "jpeg_ls")):
        pytest.skip("a JPEG-LS plugin for pydicom is installed: the file decodes")
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(TEST_FILES / name, folder / "jpeg-ls.dcm")
    shutil.copy(TEST_FILES / "MR_small.dcm", folder / "plain.dcm")
    with pytest.raises(SystemExit) as exited:
        main(["datasets", "inspect", str(folder)])
    out = capsys.readouterr().out
    flat = " ".join(out.split())
    assert exited.value.code == 0 and "1 unreadable file(s)" in flat, out  # a report: listed, not refused
    assert "jpeg-ls.dcm" in flat and "plain.dcm" not in flat.split("unreadable")[1]
    assert "pip install pylibjpeg pylibjpeg-libjpeg" in flat

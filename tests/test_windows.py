"""CT/MR intensity windows (hu:LEVEL,WIDTH and presets), multi-window channels, and the window as part of
the cache key."""

from __future__ import annotations

import numpy as np
import pytest
from volume_helpers import save_nifti, write_dicom_image, write_rows, write_spec

from medprobe.data import load_dataset
from medprobe.data.reader import read_all
from medprobe.data.windows import PRESETS, HounsfieldWindow, parse_window
from medprobe.errors import MedprobeError

pytest.importorskip("pydicom")

# air, water, soft tissue, bone (HU), in four bands of a synthetic CT slice
TISSUES = {"air": -990, "water": 10, "tissue": 30, "bone": 1200}
# the 8-bit level each preset gives each tissue: rint((HU - (level - width / 2)) * 255 / width), clipped
EXPECTED = {
    "brain": {"air": 0, "water": 32, "tissue": 96, "bone": 255},
    "subdural": {"air": 0, "water": 50, "tissue": 74, "bone": 255},
    "lung": {"air": 61, "water": 231, "tissue": 235, "bone": 255},
    "bone": {"air": 0, "water": 72, "tissue": 75, "bone": 241},
}


def ct_slice() -> np.ndarray:
    """32x32 HU values, one tissue per band of 8 rows."""
    hu = np.zeros((32, 32), dtype=np.float64)
    for band, value in enumerate(TISSUES.values()):
        hu[band * 8:(band + 1) * 8] = value
    return hu


def band_levels(pixels: np.ndarray, channel: int = 0) -> dict[str, int]:
    return {name: int(pixels[band * 8 + 4, 16, channel]) for band, name in enumerate(TISSUES)}


def ct_folder(root, name="ct.dcm"):
    stored = ct_slice() + 1024  # CT stores HU + 1024 with RescaleIntercept -1024
    write_dicom_image(root / "scans" / name, stored, intercept=-1024.0)
    return root / "scans"


def decoded(dataset) -> list[np.ndarray]:
    items = list(read_all(dataset.samples, dataset.root))
    assert all(item.error is None for item in items), [item.error for item in items]
    return [np.asarray(item.image) for item in items]


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_hu_presets_give_the_expected_8bit_levels(tmp_path, preset):
    ct_folder(tmp_path)
    spec = write_spec(tmp_path / "ct.toml", folder="scans", window=f"hu:{preset}")
    (pixels,) = decoded(load_dataset(spec))
    assert band_levels(pixels) == EXPECTED[preset]
    assert (pixels[..., 0] == pixels[..., 2]).all()  # one window, replicated


def test_hu_level_width_equals_the_preset_and_windows_are_parsed_strictly(tmp_path):
    assert parse_window("hu:40,80", "x") == parse_window("hu:brain", "x") == HounsfieldWindow(*PRESETS["brain"])
    assert parse_window([1, 99], "x").bounds(np.arange(101.0)) == (1.0, 99.0)
    for bad, message in (("hu:brian", "not a preset"), ("hu:40", "not a preset"), ("hu:40,0", "width above 0"),
                         ("window:1,2", "is not one of"), ([99, 1], "low < high")):
        with pytest.raises(MedprobeError, match=message):
            parse_window(bad, "spec.toml")


def test_three_windows_become_the_three_channels(tmp_path):
    ct_folder(tmp_path)
    spec = write_spec(tmp_path / "ct.toml", folder="scans", channels=["hu:brain", "hu:subdural", "hu:bone"])
    (pixels,) = decoded(load_dataset(spec))
    assert [band_levels(pixels, c) for c in range(3)] == [EXPECTED["brain"], EXPECTED["subdural"], EXPECTED["bone"]]


def test_the_percentile_window_stays_the_default(tmp_path):
    ct_folder(tmp_path)
    (pixels,) = decoded(load_dataset(tmp_path / "scans"))
    levels = band_levels(pixels)
    assert levels["air"] == 0 and levels["bone"] == 255 and 0 < levels["water"] < levels["tissue"] < 255


def test_hu_windows_apply_to_volumes_with_bounds_fixed_in_hu(tmp_path):
    voxels = np.repeat(ct_slice()[:, :, None], 4, axis=2).astype(np.float32)  # HU voxels, as NIfTI stores CT
    save_nifti(tmp_path / "ct.nii.gz", voxels)
    write_rows(tmp_path / "rows.csv", [{"path": "ct.nii.gz", "label": "a"}])
    spec = write_spec(tmp_path / "ct.toml", manifest="rows.csv", axis="axial", slices="middle:1",
                      channels=["hu:brain", "hu:subdural", "hu:bone"])
    (pixels,) = decoded(load_dataset(spec))
    values = {tuple(int(v) for v in pixel) for pixel in pixels.reshape(-1, 3)}
    expected = {tuple(EXPECTED[p][tissue] for p in ("brain", "subdural", "bone")) for tissue in TISSUES}
    assert values == expected  # rot90 moves the bands, the colours stay


def test_the_window_is_part_of_the_cache_key(tmp_path, tiny_timm_models):
    from medprobe.extract.runner import extract

    ct_folder(tmp_path)
    ct_folder(tmp_path, "ct2.dcm")
    plain = load_dataset(tmp_path / "scans")
    brain = load_dataset(write_spec(tmp_path / "brain.toml", folder="scans", window="hu:brain"))
    bone = load_dataset(write_spec(tmp_path / "bone.toml", folder="scans", window="hu:bone"))
    default = load_dataset(write_spec(tmp_path / "default.toml", folder="scans", window=[0.5, 99.5]))
    assert default.key == plain.key  # the default window keeps existing caches
    assert len({plain.key, brain.key, bone.key}) == 3
    paths = set()
    for dataset in (brain, bone, brain):
        report = extract(dataset=dataset, model=str(tiny_timm_models["resnet"]), cache_dir=tmp_path / "cache",
                         device="cpu", precision="fp32", workers=0, batch_size=4, show_progress=False)
        paths.add(report.path)
    assert len(paths) == 2 and report.up_to_date  # switching back to brain reuses its cache


def test_windows_on_colour_images_and_bad_channel_specs_are_refused(tmp_path):
    from PIL import Image

    (tmp_path / "img").mkdir()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(tmp_path / "img" / "red.png")
    dataset = load_dataset(write_spec(tmp_path / "s.toml", folder="img", window="hu:brain"))
    (item,) = read_all(dataset.samples, dataset.root)
    assert "colour" in item.error and "red.png" in item.error
    with pytest.raises(MedprobeError, match="three windows"):
        load_dataset(write_spec(tmp_path / "s.toml", folder="img", channels=["hu:brain", "hu:bone"]))
    with pytest.raises(MedprobeError, match="not both"):
        load_dataset(write_spec(tmp_path / "s.toml", folder="img", window="hu:lung",
                                channels=["hu:brain", "hu:subdural", "hu:bone"]))


def test_the_readme_preset_table_and_the_percentile_string_form():
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    table = readme.split("| preset | level | width |", 1)[1].split("\n\n", 1)[0]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.strip().splitlines()[1:]]
    assert {name: (float(level), float(width)) for name, level, width in rows} == PRESETS
    assert parse_window("percentile:1,99", "x") == parse_window([1, 99], "x")

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medprobe.data import decode_image, load_dataset, resolve_data_argument
from medprobe.data.images import window_to_uint8
from medprobe.data.inspect import summarize
from medprobe.errors import MedprobeError


def write_csv(path: Path, rows: list[dict], fields: list[str]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_folder_layout_gives_relative_ids_and_classes(image_folder):
    dataset = load_dataset(image_folder)
    assert dataset.classes == ["benign", "malignant"]
    assert len(dataset.samples) == 12
    assert dataset.samples[0].id == "benign/img0.jpg"
    assert dataset.class_counts() == {"benign": 6, "malignant": 6}


def test_manifest_reads_groups_and_splits(manifest):
    dataset = load_dataset(manifest)
    assert len(dataset.samples) == 16
    first = dataset.samples[0]
    assert (first.id, first.label, first.group, first.split) == ("img/s00.png", "normal", "pt0", "train")
    assert first.path == manifest.parent / "img" / "s00.png"


def test_toml_spec_and_project_file(manifest, image_folder, tmp_path, monkeypatch):
    spec = manifest.parent / "xray.toml"
    spec.write_text('manifest = "labels.csv"\nname = "chest"\n')
    assert load_dataset(spec).name == "chest"
    project = tmp_path / "project"
    project.mkdir()
    (project / "medprobe.toml").write_text(f'[dataset]\npath = "{image_folder}"\n')
    monkeypatch.chdir(project)
    assert resolve_data_argument(None) == image_folder
    assert load_dataset(project / "medprobe.toml").name == "folder"


@pytest.mark.parametrize(
    "rows, fields, message",
    [
        ([{"path": "a.png"}], ["path"], "no labels; .*m.csv has no label column"),
        ([{"path": "missing.png", "label": "x"}], ["path", "label"], "does not exist"),
        ([{"path": "a.png", "label": "x", "split": "training"}], ["path", "label", "split"], "is not one of"),
        ([{"path": "a.png", "label": "x"}, {"path": "b.png", "label": "x"}], ["path", "label"], "only one class"),
        ([{"path": "a.png", "label": "x"}, {"path": "a.png", "label": "y"}], ["path", "label"], "listed twice"),
    ],
)
def test_manifest_errors_name_the_problem(tmp_path, rows, fields, message):
    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    path = write_csv(tmp_path / "m.csv", rows, fields)
    with pytest.raises(MedprobeError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        load_dataset(path).require_labels()  # labels are checked where a probe or fine-tune needs them
    assert str(path) in str(info.value) or "m.csv" in str(info.value)


def test_empty_class_folder_is_an_error(image_folder):
    (image_folder / "empty").mkdir()
    with pytest.raises(MedprobeError, match="empty has no images"):
        load_dataset(image_folder)


def test_missing_project_file_says_what_to_write(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MedprobeError, match=r"\[dataset\] path"):
        resolve_data_argument(None)


def encode(image: Image.Image, fmt: str) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF", "BMP"])
def test_grayscale_is_replicated_to_three_channels(fmt):
    gray = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, mode="L")
    rgb = np.asarray(decode_image(encode(gray, fmt), "x"))
    assert rgb.shape == (8, 8, 3)
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    if fmt != "JPEG":
        assert (rgb[..., 0] == np.asarray(gray)).all()


def test_16bit_is_windowed_by_percentiles():
    values = np.linspace(1000, 3000, 100 * 100).reshape(100, 100).astype(np.uint16)
    values[0, 0] = 65535  # one hot pixel must not squash the rest
    image = Image.fromarray(values)
    rgb = np.asarray(decode_image(encode(image, "PNG"), "x"))
    assert rgb.shape == (100, 100, 3)
    assert rgb[..., 0].min() == 0 and rgb[..., 0].max() == 255
    assert 100 < rgb[50, 50, 0] < 155  # the middle intensity lands mid-range, not near black
    np.testing.assert_array_equal(rgb[..., 0], window_to_uint8(values))


def test_rgba_and_palette_become_rgb():
    rgba = Image.new("RGBA", (8, 8), (10, 20, 30, 0))
    assert np.asarray(decode_image(encode(rgba, "PNG"), "x"))[0, 0].tolist() == [10, 20, 30]
    palette = Image.new("P", (8, 8), 2)
    palette.putpalette([0, 0, 0, 9, 9, 9, 200, 100, 50])
    assert np.asarray(decode_image(encode(palette, "PNG"), "x"))[0, 0].tolist() == [200, 100, 50]
    grey_alpha = Image.new("LA", (8, 8), (77, 0))
    assert np.asarray(decode_image(encode(grey_alpha, "PNG"), "x"))[0, 0].tolist() == [77, 77, 77]


def test_a_multi_page_tiff_gives_its_first_page():
    import io

    pages = [Image.new("L", (16, 16), value) for value in (40, 200)]
    buffer = io.BytesIO()
    pages[0].save(buffer, format="TIFF", save_all=True, append_images=pages[1:])
    assert Image.open(io.BytesIO(buffer.getvalue())).n_frames == 2
    assert np.unique(np.asarray(decode_image(buffer.getvalue(), "x.tif"))).tolist() == [40]


def test_undecodable_bytes_name_the_file():
    with pytest.raises(MedprobeError, match="cannot decode image scan.png"):
        decode_image(b"not an image", "scan.png")


def test_inspect_counts_and_finds_unreadable(manifest):
    (manifest.parent / "img" / "s03.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    summary = summarize(load_dataset(manifest))
    assert summary.classes == {"normal": 8, "pneumonia": 8}
    assert summary.splits["train"] == {"normal": 4, "pneumonia": 4}
    assert summary.groups == 8 and summary.samples_per_group == (2, 2)
    assert [Path(p).name for p, _ in summary.unreadable] == ["s03.png"]
    assert summary.groups_in_several_splits == []


def test_classes_sort_naturally_and_can_be_reordered(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    rows = [{"path": "a.png", "label": "grade10"}, {"path": "b.png", "label": "grade2"},
            {"path": "c.png", "label": "Grade3"}]
    dataset = load_dataset(write_csv(tmp_path / "m.csv", rows, ["path", "label"]))
    assert dataset.classes == ["grade2", "Grade3", "grade10"]
    assert dataset.with_class_order(["grade10", "Grade3", "grade2"]).classes == ["grade10", "Grade3", "grade2"]
    with pytest.raises(MedprobeError, match="must list each class"):
        dataset.with_class_order(["grade2", "grade10"])


def test_float_images_are_windowed_by_their_own_percentiles_and_nans_become_the_low_end():
    rng = np.random.default_rng(0)
    values = rng.normal(100.0, 20.0, (64, 64)).astype(np.float32)
    values[:4, :4] = np.nan
    rgb = np.asarray(decode_image(encode(Image.fromarray(values, mode="F"), "TIFF"), "x"))[..., 0]
    finite = values[np.isfinite(values)]
    low, high = np.percentile(finite, [0.5, 99.5])  # computed here, independently of medprobe's window code
    expected = np.rint(np.clip((values - low) / (high - low), 0, 1) * 255)
    inside = np.isfinite(values)
    assert np.abs(rgb[inside].astype(int) - expected[inside]).max() <= 1
    assert (rgb[:4, :4] == 0).all()

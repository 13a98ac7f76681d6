"""Extraction needs no labels: a flat folder, a one-class folder, a path-only CSV extract; a probe or
fine-tune then asks for labels with one clear line. Multi-frame DICOMs: one sample per frame on request."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import blob_image
from PIL import Image
from test_reliability import cli, one_error_line

from medprobe.data import load_dataset
from medprobe.data.reader import read_all


def flat(root: Path, count: int = 4) -> Path:
    rng = np.random.default_rng(0)
    (root / "nested" / "deeper").mkdir(parents=True)
    for i in range(count):
        target = root / ("nested/deeper" if i == 0 else "") / f"im{i}.png"
        Image.fromarray(blob_image(rng, i % 2, (24, 24))).save(target)
    return root


def one_class(root: Path) -> Path:
    flat(root / "normal")
    return root


def images_only(root: Path) -> Path:
    rng = np.random.default_rng(1)
    root.mkdir(parents=True)
    for i in range(4):
        Image.fromarray(blob_image(rng, i % 2, (24, 24))).save(root / f"im{i}.png")
    return root


def path_only(root: Path) -> Path:
    flat(root / "img")
    paths = sorted(p.relative_to(root).as_posix() for p in (root / "img").rglob("*.png"))
    (root / "paths.csv").write_text("path\n" + "\n".join(paths) + "\n")
    return root / "paths.csv"


CASES = {
    # images beside a sub-folder: the folder is unlabelled, and the error names an image that keeps it so
    "flat": (flat, r"no labels; .*holds 3 image\(s\) in itself \(e\.g\. im3\.png\) besides its sub-folders, "
                   r"so .*; move "),
    "images-only": (images_only, r"no labels; .*data has no class sub-folders; put images in .*data/<class>/ or "
                                 r"pass a CSV manifest with labels"),
    "one-class": (one_class, r"only one class \(normal\); a classifier needs at least two"),
    "path-only": (path_only, r"no labels; .*paths\.csv has no label column"),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_data_without_labels_extracts_and_probing_it_asks_for_labels(kind, tmp_path, capsys, tiny_timm_models):
    make, message = CASES[kind]
    data = make(tmp_path / "data")
    dataset = load_dataset(data)
    assert all(not s.id.startswith("/") for s in dataset.samples)  # ids stay paths relative to the root
    if kind == "flat":
        assert dataset.ids == ["im1.png", "im2.png", "im3.png", "nested/deeper/im0.png"] and not dataset.labelled
    cache = tmp_path / "cache"
    code, out, err = cli(capsys, "extract", data, "--model", tiny_timm_models["resnet"], "--cache-dir", cache,
                         "--workers", 0, "--device", "cpu")
    assert code == 0 and "extracted 4" in out, err
    code, out, err = cli(capsys, "datasets", "inspect", data)
    assert code == 0 and ("no labels" in out if kind != "one-class" else "1 classes" in out), out
    for command in (["probe", data, "--cache-dir", cache], ["finetune", data, "--model", "x"]):
        code, out, err = cli(capsys, *command)
        assert code == 2 and one_error_line(err) and re.search(message, err), err


def test_images_beside_class_folders_make_an_unlabelled_folder_that_says_why(tmp_path):
    from medprobe.errors import MedprobeError

    root = flat(tmp_path / "data")
    (root / "b").mkdir()
    shutil.copy(root / "im1.png", root / "b" / "x.png")
    dataset = load_dataset(root)
    assert not dataset.labelled and "b/x.png" in dataset.ids
    with pytest.raises(MedprobeError, match=r"holds 3 image\(s\) in itself .* besides its sub-folders"):
        dataset.require_labels()


def test_a_partly_labelled_manifest_is_still_refused_line_by_line(tmp_path):
    from medprobe.errors import MedprobeError

    data = path_only(tmp_path)
    data.write_text("path,label\nimg/im1.png,a\nimg/im2.png,\n")
    with pytest.raises(MedprobeError, match=r"paths\.csv:3: empty label"):
        load_dataset(data)


def test_every_frame_of_a_multi_frame_dicom_is_a_sample_grouped_by_file(tmp_path, monkeypatch):
    pydicom = pytest.importorskip("pydicom")
    files = Path(pydicom.__file__).parent / "data" / "test_files"
    (tmp_path / "scans" / "a").mkdir(parents=True)
    (tmp_path / "scans" / "b").mkdir(parents=True)
    shutil.copy(files / "examples_ybr_color.dcm", tmp_path / "scans" / "a" / "cine.dcm")  # 30 YBR JPEG frames
    shutil.copy(files / "MR_small.dcm", tmp_path / "scans" / "b" / "mr.dcm")
    assert load_dataset(tmp_path / "scans").ids == ["a/cine.dcm", "b/mr.dcm"]  # the first frame by default
    (tmp_path / "frames.toml").write_text('folder = "scans"\nframes = "all"\n')
    dataset = load_dataset(tmp_path / "frames.toml")
    assert dataset.ids == [f"a/cine.dcm#frame:{i}" for i in range(30)] + ["b/mr.dcm"]
    assert {s.group for s in dataset.samples[:30]} == {"a/cine.dcm"}
    assert dataset.key != load_dataset(tmp_path / "scans").key
    reference = pydicom.dcmread(files / "examples_ybr_color.dcm").pixel_array
    decoded, plain_dcmread = [], pydicom.dcmread

    def counted(source, *args, **kwargs):
        decoded.append(bool(kwargs.get("stop_before_pixels")))
        return plain_dcmread(source, *args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", counted)
    items = list(read_all(dataset.samples, dataset.root))
    monkeypatch.setattr(pydicom, "dcmread", plain_dcmread)
    assert decoded.count(False) == 2  # pixels read once per file: the 30-frame one and the MR
    assert all(item.error is None for item in items)
    for frame in (0, 3, 29):
        np.testing.assert_array_equal(np.asarray(items[frame].image), reference[frame])
    assert len({item.fingerprint for item in items[:30]}) == 1 and items[0].stat.endswith("dicom-frame")


def test_a_manifest_row_s_group_goes_to_every_frame_of_its_file(tmp_path):
    """README: with frames = "all" every frame is a sample grouped by file: the row's `group` where the
    manifest has one (so two files of one patient share it), else the file's path."""
    pydicom = pytest.importorskip("pydicom")
    files = Path(pydicom.__file__).parent / "data" / "test_files"
    (tmp_path / "scans").mkdir()
    shutil.copy(files / "examples_ybr_color.dcm", tmp_path / "scans" / "cine.dcm")  # 30 frames
    shutil.copy(files / "rtdose.dcm", tmp_path / "scans" / "dose.dcm")  # 15 frames
    shutil.copy(files / "MR_small.dcm", tmp_path / "scans" / "mr.dcm")
    (tmp_path / "scans.csv").write_text("path,label,group\nscans/cine.dcm,a,patient7\nscans/dose.dcm,b,patient7\n"
                                        "scans/mr.dcm,b,patient9\n")
    (tmp_path / "frames.toml").write_text('manifest = "scans.csv"\nframes = "all"\n')
    dataset = load_dataset(tmp_path / "frames.toml")
    assert len(dataset.samples) == 30 + 15 + 1
    assert {s.group for s in dataset.samples if s.id.startswith(("scans/cine", "scans/dose"))} == {"patient7"}
    assert [s.group for s in dataset.samples if s.id.startswith("scans/mr")] == ["patient9"]
    assert {s.label for s in dataset.samples if s.id.startswith("scans/dose")} == {"b"}


def test_frame_samples_pass_cache_verify(tmp_path, capsys, tiny_timm_models):
    pydicom = pytest.importorskip("pydicom")
    files = Path(pydicom.__file__).parent / "data" / "test_files"
    (tmp_path / "scans").mkdir()
    shutil.copy(files / "rtdose.dcm", tmp_path / "scans" / "dose.dcm")  # 15 frames of 10x10
    shutil.copy(files / "MR_small.dcm", tmp_path / "scans" / "mr.dcm")
    (tmp_path / "frames.toml").write_text('folder = "scans"\nframes = "all"\n')
    cache = tmp_path / "cache"
    code, out, err = cli(capsys, "extract", tmp_path / "frames.toml", "--model", tiny_timm_models["resnet"],
                         "--cache-dir", cache, "--workers", 0, "--device", "cpu")
    assert code == 0 and "extracted 16" in out, err
    code, out, err = cli(capsys, "cache", "verify", "--cache-dir", cache)
    assert code == 0 and out.startswith("ok:"), out
    (tmp_path / "scans" / "dose.dcm").write_bytes((files / "rtdose_1frame.dcm").read_bytes())
    code, out, err = cli(capsys, "cache", "verify", "--cache-dir", cache)
    assert code == 1 and "changed source" in out, out


def test_labels_added_to_a_path_only_csv_reuse_the_cached_features(tmp_path, capsys, tiny_timm_models):
    flat(tmp_path / "img", count=12)
    paths = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "img").rglob("*.png"))
    manifest = tmp_path / "scans.csv"
    manifest.write_text("path\n" + "\n".join(paths) + "\n")
    cache = tmp_path / "cache"
    code, out, err = cli(capsys, "extract", manifest, "--model", tiny_timm_models["resnet"], "--cache-dir", cache,
                         "--workers", 0, "--device", "cpu")
    assert code == 0 and "extracted 12" in out, err
    label = {p: ("left", "right")[int(Path(p).stem[2:]) % 2] for p in paths}  # blob_image's class of im<i>
    manifest.write_text("path,label\n" + "\n".join(f"{p},{label[p]}" for p in paths) + "\n")
    code, out, err = cli(capsys, "extract", manifest, "--model", tiny_timm_models["resnet"], "--cache-dir", cache,
                         "--workers", 0, "--device", "cpu")
    assert code == 0 and "up to date (12 images)" in out, out
    code, out, err = cli(capsys, "probe", manifest, "--cache-dir", cache, "--folds", 2, "--bootstrap", 0,
                         "--n-jobs", 1, "--out", tmp_path / "results")
    assert code == 0, err

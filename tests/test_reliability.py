"""Hostile inputs, --skip-bad, staleness, shared and copied caches, and loading safety."""

from __future__ import annotations

import ast
import csv
import json
import re
import shutil
import struct
import time
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import blob_image
from PIL import Image
from test_interruptions import forked, many_images, wait_for_new_file
from volume_helpers import brain, save_nifti, write_rows, write_spec

from medprobe.cache import read_contents, read_features
from medprobe.cache.journal import journal_dir
from medprobe.cache.manage import verify
from medprobe.cli import main
from medprobe.data import decode_image, load_dataset
from medprobe.extract.runner import extract, locate_cache
from medprobe.probe.runner import ProbeSettings, probe


def cli(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return info.value.code or 0, captured.out, captured.err


def one_error_line(err: str) -> bool:
    """Exactly one `error:` line and no traceback (progress bars may share stderr)."""
    return len([line for line in err.splitlines() if line.startswith("error: ")]) == 1 and "Traceback" not in err


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A valid PNG signature and IHDR claiming a huge size, and no pixel data: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IEND", b""))
    return path


def good_folder(root: Path, count: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for i in range(count):
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(blob_image(rng, i % 2, (40, 36))).save(root / f"c{i % 2}" / f"ok{i}.png")
    return root


def bad_image(kind: str, path: Path) -> Path:
    """Files that look like images to a folder scan but cannot be used."""
    good = path.parent / "ok0.png"
    if kind == "truncated":
        path.write_bytes(good.read_bytes()[:60])
    elif kind == "zero-byte":
        path.write_bytes(b"")
    elif kind == "text-as-jpg":
        path.write_text("patient export failed\n")
    elif kind == "bomb":
        png_header_only(path, 60_000, 60_000)
    elif kind == "one-pixel":
        Image.new("L", (1, 1), 7).save(path, format="PNG")
    elif kind == "seven-wide":  # one pixel below the smallest accepted side
        Image.new("L", (7, 40), 7).save(path, format="PNG")
    elif kind == "html-as-png":
        path.write_text("<html><body>login required</body></html>")
    return path


BAD_IMAGES = {  # kind -> (file name, what the error says)
    "truncated": ("t.png", r"t\.png"),
    "zero-byte": ("z.png", r"z\.png"),
    "text-as-jpg": ("x.jpg", r"x\.jpg"),
    "bomb": ("b.png", r"b\.png.*decompression bomb"),
    "one-pixel": ("p.png", r"p\.png.*1x1 pixels"),
    "html-as-png": ("h.png", r"h\.png"),
    "seven-wide": ("s.png", r"s\.png.*7x40 pixels \(at least 8 per side"),
}


def test_eight_pixels_a_side_is_the_smallest_image_accepted(tmp_path):
    from medprobe.data import decode_image

    path = tmp_path / "small.png"
    Image.new("L", (8, 40), 7).save(path)
    assert decode_image(path.read_bytes(), path).size == (8, 40)


def csv_case(root: Path, kind: str) -> tuple[list, str]:
    """(CLI args, expected message) for a broken manifest or spec."""
    good_folder(root / "img")
    rows = "path,label\nimg/c0/ok0.png,a\nimg/c1/ok1.png,b\n"
    cases = {
        "missing-column": ("path,diagnosis\nimg/c0/ok0.png,a\n", r"no labels; .*has no label column.*diagnosis"),
        "missing-path-column": ("file,label\nimg/c0/ok0.png,a\n", r"lacks column\(s\) path; the header needs path"),
        "unknown-path": (rows + "img/c0/nope.png,a\n", r"nope\.png does not exist"),
        "duplicate-path": (rows + "img/c0/ok0.png,b\n", r"ok0\.png is listed twice"),
        "one-class": ("path,label\nimg/c0/ok0.png,a\nimg/c1/ok1.png,a\n", r"only one class"),
        "empty-label": (rows + "img/c0/ok2.png,\n", r":4: empty label"),
        "bad-split": ("path,label,split\nimg/c0/ok0.png,a,training\n", r"split 'training' is not one of"),
        "mixed-split": ("path,label,split\nimg/c0/ok0.png,a,train\nimg/c1/ok1.png,b,\n", r"some rows have a split"),
        "header-only": ("path,label\n", r"lists no images"),
        "not-an-image": (rows + "labels.csv,a\n", r"labels\.csv"),
        "folder-as-image": (rows + "img/c0,a\n", r"c0"),
    }
    text, message = cases[kind]
    (root / "labels.csv").write_text(text)
    command = {"not-an-image": "extract", "folder-as-image": "extract", "missing-column": "probe",
               "one-class": "probe"}.get(kind, "datasets")  # labels are checked by what needs them
    args = [root / "labels.csv"]
    return ([command, *args] if command != "datasets" else ["datasets", "inspect", *args]), message


@pytest.mark.parametrize("kind", sorted(BAD_IMAGES))
def test_bad_image_is_one_line_exit_2_and_nothing_complete(kind, tmp_path, capsys, tiny_timm_models):
    root = good_folder(tmp_path / "data")
    name, message = BAD_IMAGES[kind]
    bad_image(kind, root / "c0" / name)
    cache = tmp_path / "cache"
    code, out, err = cli(capsys, "extract", root, "--model", tiny_timm_models["resnet"], "--cache-dir", cache,
                         "--device", "cpu", "--workers", 0)
    assert code == 2 and one_error_line(err), err
    assert re.search(message, err) and ("fix" in err or "replace" in err or "remove" in err), err
    for path in cache.rglob("*.h5"):  # whatever was written is not complete
        assert not read_contents(path).done.all()


@pytest.mark.parametrize("kind", ["missing-column", "missing-path-column", "unknown-path", "duplicate-path",
                                  "one-class", "empty-label", "bad-split", "mixed-split", "header-only",
                                  "not-an-image", "folder-as-image"])
def test_bad_manifest_is_one_line_exit_2(kind, tmp_path, capsys, tiny_timm_models):
    args, message = csv_case(tmp_path, kind)
    if args[0] == "extract":
        args += ["--model", tiny_timm_models["resnet"], "--cache-dir", tmp_path / "cache", "--workers", 0]
    code, out, err = cli(capsys, *args)
    assert code == 2 and one_error_line(err), err
    assert re.search(message, err), err
    assert not list((tmp_path / "cache").rglob("*.h5"))


def test_an_empty_class_folder_is_one_line_exit_2(tmp_path, capsys):
    root = good_folder(tmp_path / "img")
    (root / "c2").mkdir()
    code, out, err = cli(capsys, "datasets", "inspect", root)
    assert code == 2 and one_error_line(err), err
    assert re.search(r"class folder .*c2 has no images .*; add images or remove it", err), err


def test_datasets_inspect_warns_of_a_group_in_several_splits(tmp_path, capsys):
    good_folder(tmp_path / "img")
    rows = ["path,label,group,split", "img/c0/ok0.png,a,p1,train", "img/c1/ok1.png,b,p1,test",
            "img/c0/ok2.png,a,p2,train", "img/c1/ok3.png,b,p3,test"]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    code, out, err = cli(capsys, "datasets", "inspect", tmp_path / "labels.csv")
    assert code == 0, err
    assert re.search(r"^warning: 1 group\(s\) appear in several splits \(leakage\): p1$", out, re.M), out
    (tmp_path / "labels.csv").write_text("\n".join(rows).replace("p1,test", "p4,test") + "\n")
    code, out, err = cli(capsys, "datasets", "inspect", tmp_path / "labels.csv")
    assert code == 0 and "several splits" not in out + err


def volume_case(root: Path, kind: str) -> tuple[Path, str]:
    voxels = brain(np.random.default_rng(0), 1)
    save_nifti(root / "a.nii.gz", voxels)
    target = root / "b.nii.gz"
    if kind == "4d-without-volume":
        nib.save(nib.Nifti1Image(np.stack([voxels, voxels], -1), np.eye(4)), target)
        message = r"b\.nii\.gz is 4-D \(2 volumes\); set volume"
    elif kind == "broken-header":
        target.write_bytes(b"\x1f\x8b" + b"\x00" * 40)
        message = r"cannot read volume .*b\.nii\.gz"
    elif kind == "truncated-volume":
        save_nifti(target, voxels)
        target.write_bytes(target.read_bytes()[:200])
        message = r"b\.nii\.gz"
    elif kind == "2d-nifti":
        nib.save(nib.Nifti1Image(voxels[:, :, 0], np.eye(4)), target)
        message = r"b\.nii\.gz has 2 dimensions"
    write_rows(root / "rows.csv", [{"path": "a.nii.gz", "label": "x"}, {"path": "b.nii.gz", "label": "y"}])
    return write_spec(root / "spec.toml", manifest="rows.csv", slices="middle:2"), message


@pytest.mark.parametrize("kind", ["4d-without-volume", "broken-header", "truncated-volume", "2d-nifti"])
def test_bad_volume_is_one_line_exit_2(kind, tmp_path, capsys, tiny_timm_models):
    spec, message = volume_case(tmp_path, kind)
    code, out, err = cli(capsys, "extract", spec, "--model", tiny_timm_models["resnet"], "--cache-dir",
                         tmp_path / "cache", "--workers", 0, "--device", "cpu")
    assert code == 2 and one_error_line(err) and re.search(message, err), err
    for path in (tmp_path / "cache").rglob("*.h5"):
        assert not read_contents(path).done.all()


@pytest.mark.parametrize("args,message", [
    (["extract", "{data}", "--model", "dinov2-smal"], r"unknown model 'dinov2-smal'.*did you mean dinov2-small"),
    (["extract", "{data}/spec.toml", "--model", "resnet50"], r"spec\.toml is not valid TOML"),
    (["extract", "{data}/nothing.csv", "--model", "resnet50"], r"nothing\.csv does not exist"),
    (["extract", "{data}", "--model", "resnet50", "--precision", "fp64"], r"--precision 'fp64' is not one of"),
    (["probe", "{data}", "--clf", "forest"], r"--clf 'forest' is not one of"),
])
def test_bad_arguments_are_one_line_exit_2(args, message, tmp_path, capsys):
    data = good_folder(tmp_path / "data")
    (data / "spec.toml").write_text('manifest = "labels.csv\n')
    code, out, err = cli(capsys, *[a.format(data=data) for a in args], "--cache-dir", tmp_path / "cache")
    assert code == 2 and one_error_line(err) and re.search(message, err), err


def test_odd_but_valid_inputs_are_converted(tmp_path):
    """CMYK, 16-bit, palette with alpha, a PNG named .jpg, a BOM and blank lines in a CSV: all work."""
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    assert np.asarray(decode_image(_encode(cmyk, "JPEG"), "c.jpg"))[8, 8].tolist()[0] > 200
    deep = Image.fromarray((np.arange(256, dtype=np.uint16).reshape(16, 16) * 256).astype(np.uint16))
    assert np.asarray(decode_image(_encode(deep, "PNG"), "d.png")).max() == 255
    palette = Image.new("P", (16, 16), 3)
    palette.info["transparency"] = 3  # palette + alpha: index 3 is transparent
    assert decode_image(_encode(palette, "PNG"), "p.png").mode == "RGB"
    good_folder(tmp_path / "img")
    shutil.copy(tmp_path / "img" / "c0" / "ok0.png", tmp_path / "img" / "c0" / "named.jpg")
    (tmp_path / "bom.csv").write_text("\ufeffpath,label\n\nimg/c0/named.jpg,a\n\n\nimg/c1/ok1.png,b\n",
                                      encoding="utf-8")
    dataset = load_dataset(tmp_path / "bom.csv")
    assert dataset.ids == ["img/c0/named.jpg", "img/c1/ok1.png"]
    assert decode_image((tmp_path / "img" / "c0" / "named.jpg").read_bytes(), "named.jpg").size == (36, 40)


def _encode(image: Image.Image, fmt: str) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_nifti_with_nans_is_sliced(tmp_path):
    voxels = brain(np.random.default_rng(0), 1)
    voxels[::3] = np.nan
    save_nifti(tmp_path / "a.nii.gz", voxels)
    save_nifti(tmp_path / "b.nii.gz", voxels[::-1].copy())
    write_rows(tmp_path / "rows.csv", [{"path": "a.nii.gz", "label": "x"}, {"path": "b.nii.gz", "label": "y"}])
    dataset = load_dataset(write_spec(tmp_path / "s.toml", manifest="rows.csv", slices="middle:2"))
    from medprobe.data.reader import read_all

    images = [item.image for item in read_all(dataset.samples, dataset.root)]
    assert all(image is not None and np.asarray(image).max() == 255 for image in images)


def test_skip_bad_extracts_the_rest_and_records_why(tmp_path, capsys, tiny_timm_models):
    root = good_folder(tmp_path / "data", count=12)
    bad_image("truncated", root / "c0" / "t.png")  # found only when decoded
    bad_image("text-as-jpg", root / "c1" / "x.jpg")  # found by the header check
    model, cache = tiny_timm_models["resnet"], tmp_path / "cache"
    code, out, err = cli(capsys, "extract", root, "--model", model, "--cache-dir", cache, "--workers", 0,
                         "--device", "cpu", "--skip-bad")
    assert code == 0 and "2 unreadable image(s) skipped" in out, out + err
    [path] = list(cache.rglob("*.h5"))
    skipped = read_contents(path).attrs["skipped"]
    assert set(skipped) == {"c0/t.png", "c1/x.jpg"} and all(v["reason"] for v in skipped.values())
    assert int(read_contents(path).done.sum()) == 12
    dataset = load_dataset(root)
    [record] = probe(dataset=dataset, models=[str(model)], cache_dir=cache, out_dir=tmp_path / "out",
                     settings=ProbeSettings(classifiers=("knn",), bootstrap=50, folds=3), show_progress=False)
    assert [s["id"] for s in record["skipped_samples"]] == ["c0/t.png", "c1/x.jpg"]
    assert record["dataset"]["samples"] == 12
    Image.fromarray(blob_image(np.random.default_rng(5), 0, (40, 36))).save(root / "c0" / "t.png")  # repaired
    report = extract(dataset=dataset, model=str(model), cache_dir=cache, device="cpu", workers=0,
                     show_progress=False, skip_bad=True)
    assert report.extracted == 1 and list(report.skipped) == ["c1/x.jpg"]


def test_every_change_that_alters_features_gets_other_rows(tmp_path, tiny_timm_models):
    """A changed image is re-extracted alone; revision, image size and precision select other cache files,
    and going back to the original settings finds the original file still complete."""
    root = good_folder(tmp_path / "data", count=8)
    dataset = load_dataset(root)
    model, cache = str(tiny_timm_models["resnet"]), tmp_path / "cache"
    options = dict(dataset=dataset, model=model, cache_dir=cache, device="cpu", workers=0, show_progress=False)
    first = extract(precision="fp32", **options)
    paths = {locate_cache(dataset=dataset, model=model, cache_dir=cache, device="cpu", precision=precision,
                          image_size=size).path for precision, size in [("fp32", None), ("bf16", None),
                                                                        ("fp32", 96)]}
    assert len(paths) == 3
    assert extract(precision="fp32", image_size=96, **options).extracted == 8
    assert extract(precision="fp32", **options).extracted == 0  # the original is untouched
    Image.fromarray(blob_image(np.random.default_rng(9), 1, (40, 36))).save(root / "c1" / "ok3.png")
    again = extract(precision="fp32", **options)
    assert (again.extracted, again.changed, again.reused) == (1, 1, 7)
    assert first.path == again.path
    from medprobe.models.registry import resolve_model

    assert resolve_model("dinov2-small", revision="v1").cache_identity() != resolve_model(
        "dinov2-small", revision="v2").cache_identity()


def test_second_extraction_refuses_and_readers_work_during_a_write(tmp_path, capsys, tiny_timm_models):
    root = many_images(tmp_path / "data", 600)
    model, cache = tiny_timm_models["resnet"], tmp_path / "cache"
    first_half = tmp_path / "data" / "first.csv"
    first_half.write_text("path,label\n" + "".join(f"class{i % 2}/{i:04d}.png,{i % 2}\n" for i in range(100)))
    subset = load_dataset(first_half)
    extract(dataset=subset, model=str(model), cache_dir=cache, device="cpu", precision="fp32", workers=0,
            show_progress=False)
    command = ["extract", root, "--model", model, "--cache-dir", cache, "--device", "cpu", "--precision", "fp32",
               "--batch-size", 2, "--workers", 1]
    writer = forked(*command)
    path = locate_cache(dataset=subset, model=str(model), cache_dir=cache, device="cpu", precision="fp32").path
    assert wait_for_new_file(journal_dir(path), "batch-*.npz", writer)
    code, out, err = cli(capsys, *command)  # in this process: no start-up delay, the writer is still busy
    assert code == 2 and "another medprobe process is extracting into" in err, err
    readings = 0
    while writer.poll() is None and readings < 3:  # probe and verify read the committed file meanwhile
        [record] = probe(dataset=subset, models=[str(model)], cache_dir=cache, out_dir=tmp_path / "out",
                         settings=ProbeSettings(classifiers=("knn",), bootstrap=20, folds=3), show_progress=False)
        assert record["dataset"]["samples"] == 100 and verify(path).ok
        if readings == 0:  # and the report, whose embedding map reads the features from the cache
            from medprobe.report import build_report

            report = build_report(results_dirs=[tmp_path / "out"], out_dir=tmp_path / "report", replicates=20)
            assert any("embedding" in f.path.name for f in report.content.figures) and report.html.exists()
        readings += 1
        time.sleep(0.1)
    assert readings >= 1
    assert writer.wait(timeout=300) == 0
    assert read_contents(path).done.all() and len(read_contents(path).ids) == 600


def test_a_copied_cache_works_without_its_original_paths(tmp_path, capsys, tiny_timm_models):
    project = tmp_path / "here"
    root = good_folder(project / "data", count=10)
    model = tiny_timm_models["resnet"]
    extract(dataset=load_dataset(root), model=str(model), cache_dir=project / "cache", device="cpu",
            precision="fp32", workers=0, show_progress=False)
    there = tmp_path / "elsewhere" / "project"
    shutil.copytree(project, there)  # another machine: other absolute paths, the original gone
    shutil.rmtree(project)
    moved = load_dataset(there / "data")
    [path] = list((there / "cache").rglob("*.h5"))
    assert verify(path).ok  # sources found relative to the cache
    again = extract(dataset=moved, model=str(model), cache_dir=there / "cache", device="cpu", precision="fp32",
                    workers=0, show_progress=False)
    assert again.extracted == 0 and again.path == path
    features = read_features(path, moved.ids, "gap")
    [record] = probe(dataset=moved, models=[str(model)], cache_dir=there / "cache", out_dir=there / "out",
                     settings=ProbeSettings(classifiers=("logreg",), bootstrap=20, folds=2), show_progress=False)
    assert record["feature_dim"] == features.shape[1]


UNSAFE_LOADERS = {("pickle", "load"), ("pickle", "loads"), ("joblib", "load"), ("dill", "load"),
                  ("cloudpickle", "load"), ("torch", "load")}


def unsafe_loading(source: str, filename: str = "<src>") -> list[str]:
    """What in `source` could unpickle or run a repository's code, read from its syntax tree (so line breaks,
    spacing and aliases do not hide it): torch.load without weights_only=True, any pickle/joblib load,
    allow_pickle or trust_remote_code set to anything but a literal False."""
    problems = []
    aliases = {}  # import joblib as jl -> jl: joblib
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            aliases.update({a.asname or a.name: a.name for a in node.names})
        elif isinstance(node, ast.ImportFrom) and node.module in {m for m, _ in UNSAFE_LOADERS}:
            problems += [f"{filename}:{node.lineno}: from {node.module} import {a.name}" for a in node.names
                         if (node.module, a.name) in UNSAFE_LOADERS]
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        where = f"{filename}:{node.lineno}"
        keywords = {k.arg: k.value for k in node.keywords if k.arg}
        for name in ("allow_pickle", "trust_remote_code"):
            value = keywords.get(name)
            if value is not None and not (isinstance(value, ast.Constant) and value.value is False):
                problems.append(f"{where}: {name}={ast.unparse(value)}")
        func = node.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            module = aliases.get(func.value.id, func.value.id)
            if (module, func.attr) == ("torch", "load"):
                value = keywords.get("weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    problems.append(f"{where}: torch.load without weights_only=True")
            elif (module, func.attr) in UNSAFE_LOADERS:
                problems.append(f"{where}: {module}.{func.attr}")
    return problems


def test_the_unsafe_loading_scan_catches_what_a_line_match_missed():
    cases = ["torch.load(path,\n           weights_only=False)", "torch.load(path)", "np.load(f, allow_pickle = True)",
             "np.load(f, **{}, allow_pickle=flag)", "AutoModel.from_pretrained(hub_id,\n    trust_remote_code=True)",
             "import joblib as jl\njl.load(path)", "from pickle import loads", "import torch as t\nt.load(p)"]
    for case in cases:
        assert unsafe_loading(case), case
    assert not unsafe_loading("torch.load(path, map_location='cpu', weights_only=True)\nnp.load(f, allow_pickle=False)")


def test_nothing_unpickles_or_runs_remote_code_by_default():
    """Static guarantees over the source: weights via safetensors or weights_only, arrays without pickle,
    no remote code, and joblib probe files only written (never loaded) by medprobe itself."""
    src = Path(__file__).parents[1].joinpath("src")
    sources = sorted(src.rglob("*.py"))
    problems = [p for path in sources for p in unsafe_loading(path.read_text(), str(path.relative_to(src)))]
    # the one exception: `medprobe explain` loads the probes the user saved with --save-model, named by the
    # record the user passes (the README says so)
    assert [p.split(":")[0] + ":" + p.split(": ")[1] for p in problems] == ["medprobe/explain/__init__.py:joblib.load"]
    assert any("allow_pickle=False" in path.read_text() for path in sources)  # the journal reads without pickle


def test_the_suite_refuses_the_network_and_would_fail_on_an_attempt(no_network, monkeypatch):
    """README: the tests never touch the network. The session guard refuses lookups and connections off this
    machine and keeps each attempt (the session fails on any); medprobe's own hub probe, with the offline
    switch off, is refused too and reads as "not reachable"."""
    import socket

    from medprobe.models.hub import hub_reachable

    before = len(no_network.attempts)
    with pytest.raises(OSError, match="must not touch the network"):
        socket.create_connection(("huggingface.co", 443), timeout=1)
    with pytest.raises(OSError, match="must not touch the network"):
        socket.socket().connect(("8.8.8.8", 53))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert hub_reachable(timeout=1) is False
    tried = no_network.attempts[before:]
    assert tried[:2] == ["name lookup of huggingface.co", "connection to 8.8.8.8:53"] and len(tried) == 3
    with socket.create_server(("127.0.0.1", 0)) as server:  # this machine stays reachable (local clusters)
        socket.create_connection(server.getsockname(), timeout=1).close()
    del no_network.attempts[before:]  # these were this test's own, on purpose


def test_skipped_samples_are_left_out_of_every_backbone_alike_with_a_warning(tmp_path, capsys, tiny_timm_models):
    """README: probe leaves samples --skip-bad skipped out of every backbone alike (so splits stay equal),
    warns, and lists them in each run record: two backbones probed together predict the same samples."""
    root = good_folder(tmp_path / "data", count=12)
    bad_image("truncated", root / "c0" / "t.png")
    cache, out = tmp_path / "cache", tmp_path / "out"
    extract(dataset=load_dataset(root), model=str(tiny_timm_models["resnet"]), cache_dir=cache, device="cpu",
            workers=0, show_progress=False, skip_bad=True)
    extract(dataset=load_dataset(root), model=str(tiny_timm_models["vit"]), cache_dir=cache, device="cpu",
            workers=0, show_progress=False, skip_bad=True)
    capsys.readouterr()
    code, _, err = cli(capsys, "probe", root, "--model", tiny_timm_models["resnet"], "--model",
                       tiny_timm_models["vit"], "--cache-dir", cache, "--out", out, "--clf", "knn",
                       "--folds", "3", "--bootstrap", "50")
    assert code == 0, err
    assert "warning: 1 unreadable image(s) of data skipped at extraction are left out" in " ".join(err.split())
    records = [json.loads(path.read_text()) for path in sorted(out.rglob("*.json"))]
    assert len(records) == 2 and len({r["model"] for r in records}) == 2
    for record in records:
        assert [s["id"] for s in record["skipped_samples"]] == ["c0/t.png"]
        assert record["dataset"]["samples"] == 12
    predicted = [sorted(row["id"] for row in csv.DictReader(path.open())) for path in sorted(out.rglob("*.csv"))]
    assert predicted[0] == predicted[1] and "c0/t.png" not in predicted[0] and len(predicted[0]) == 12

"""MedMNIST .npz files (written here in MedMNIST's exact layout) through extract and probe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_reliability import cli, one_error_line

from medprobe.data import load_dataset
from medprobe.data.reader import read_all

pytest.importorskip("medmnist")
COUNTS = {"train": 24, "val": 8, "test": 12}


def blobs(rng: np.random.Generator, n: int, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images whose class (0 normal, 1 pneumonia) shows as a bright square top-left or bottom-right."""
    labels = np.arange(n) % 2
    images = rng.integers(0, 80, (n, *shape), dtype=np.uint8)
    for i, label in enumerate(labels):
        where = (slice(2, 10), slice(2, 10)) if label == 0 else (slice(-10, -2), slice(-10, -2))
        images[i][(..., *where) if len(shape) == 3 else where] = 230
    return images, labels.reshape(-1, 1).astype(np.uint8)


def write_npz(path: Path, shape=(28, 28), labels_per_image: int = 1) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in COUNTS.items():
        images, labels = blobs(rng, n, shape)
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = np.repeat(labels, labels_per_image, axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def test_medmnist_npz_extracts_and_probes_on_the_official_split(tmp_path, capsys, tiny_timm_models):
    data = write_npz(tmp_path / "pneumoniamnist.npz")
    dataset = load_dataset(data)
    assert dataset.classes == ["normal", "pneumonia"]
    assert dataset.ids[:2] == ["train/000000", "train/000001"] and dataset.ids[-1] == "test/000011"
    assert [sum(s.split == split for s in dataset.samples) for split in COUNTS] == list(COUNTS.values())
    items = list(read_all(dataset.samples[:3], dataset.root))
    with np.load(data) as arrays:
        np.testing.assert_array_equal(np.asarray(items[2].image)[..., 1], arrays["train_images"][2])
    cache, out_dir = tmp_path / "cache", tmp_path / "results"
    code, out, err = cli(capsys, "extract", data, "--model", tiny_timm_models["resnet"], "--cache-dir", cache,
                         "--workers", 0, "--device", "cpu")
    assert code == 0 and f"extracted {sum(COUNTS.values())}" in out, err
    code, out, err = cli(capsys, "probe", data, "--cache-dir", cache, "--bootstrap", 0, "--n-jobs", 1, "--out",
                         out_dir)
    assert code == 0, err
    records = [json.loads(p.read_text()) for p in out_dir.rglob("*.json") if "given-split" in p.name]
    assert records and records[0]["protocol"] == "given-split"
    assert records[0]["sizes"] == [{"fold": 0, "train": 24, "val": 8, "test": 12}]  # MedMNIST's own split
    code, out, err = cli(capsys, "cache", "verify", "--cache-dir", cache)
    assert code == 0, out


def test_medmnist_3d_volumes_become_slices_grouped_by_volume(tmp_path):
    dataset = load_dataset(write_npz(tmp_path / "organmnist3d.npz", shape=(6, 16, 16)))
    assert dataset.ids[:2] == ["train/000000#slice:0", "train/000000#slice:1"]
    assert len(dataset.samples) == 6 * sum(COUNTS.values())
    assert {s.group for s in dataset.samples[:6]} == {"train/000000"}
    (item,) = read_all(dataset.samples[3:4], dataset.root)
    with np.load(dataset.root) as arrays:
        np.testing.assert_array_equal(np.asarray(item.image)[..., 0], arrays["train_images"][0][3])


def test_chestmnist_is_a_multilabel_dataset_with_medmnists_findings(tmp_path, capsys):
    from medprobe.data.medmnist import medmnist_info
    from medprobe.data.splits import dataset_splits

    path = write_npz(tmp_path / "chestmnist.npz")
    rng = np.random.default_rng(1)
    with np.load(path) as arrays:
        arrays = dict(arrays)
    for split in COUNTS:
        arrays[f"{split}_labels"] = (rng.random((COUNTS[split], 14)) < 0.4).astype(np.uint8)
    np.savez_compressed(path, **arrays)
    dataset = load_dataset(path)
    names = medmnist_info().INFO["chestmnist"]["label"]
    assert dataset.multilabel and dataset.findings == [names[str(k)] for k in range(14)]
    truth = np.concatenate([arrays[f"{split}_labels"] for split in COUNTS]).astype(float)
    np.testing.assert_array_equal(dataset.finding_matrix(), truth)
    plan = dataset_splits(dataset)
    assert plan.protocol == "given-split" and len(plan.folds[0].test) == COUNTS["test"]
    code, out, err = cli(capsys, "datasets", "inspect", path)
    assert code == 0, err


def test_medmnist_refusals_are_one_clear_line(tmp_path, capsys, monkeypatch):
    chest = write_npz(tmp_path / "chestmnist.npz", labels_per_image=3)
    code, out, err = cli(capsys, "datasets", "inspect", chest)
    assert code == 2 and one_error_line(err) and "has 3 labels per image, but chestmnist has 14" in err, err
    code, out, err = cli(capsys, "datasets", "inspect", write_npz(tmp_path / "mystery.npz"))
    assert code == 2 and "is not a MedMNIST dataset" in err, err
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # MedMNIST's root is ~/.medmnist
    code, out, err = cli(capsys, "datasets", "inspect", "medmnist:pneumoniamnist_224")
    assert code == 2 and "downloads nothing" in err and "pneumoniamnist_224.npz" in err, err
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "medmnist" else real(name, *a))
    code, out, err = cli(capsys, "datasets", "inspect", write_npz(tmp_path / "pneumoniamnist.npz"))
    assert code == 2 and "pip install 'medprobe[medmnist]'" in err, err


def test_a_medmnist_name_reads_the_npz_from_medmnists_root(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # MedMNIST's root is ~/.medmnist
    saved = write_npz(tmp_path / "home" / ".medmnist" / "pneumoniamnist_224.npz")
    dataset = load_dataset("medmnist:pneumoniamnist_224")
    assert dataset.root == saved and dataset.classes == ["normal", "pneumonia"]
    assert [sum(s.split == split for s in dataset.samples) for split in COUNTS] == list(COUNTS.values())
    code, out, err = cli(capsys, "datasets", "inspect", "medmnist:pneumoniamnist_224")
    assert code == 0 and str(sum(COUNTS.values())) in out, err

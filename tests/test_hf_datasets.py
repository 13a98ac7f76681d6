"""Hugging Face `datasets` data saved by the test (save_to_disk, parquet) through extract and probe."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import blob_image
from PIL import Image
from test_reliability import cli, one_error_line

from medprobe.data import load_dataset
from medprobe.data.reader import read_all

datasets = pytest.importorskip("datasets")
COUNTS = {"train": 16, "validation": 6, "test": 8}
NAMES = ["benign", "malignant"]


def splits(rng) -> dict:
    features = datasets.Features({"img": datasets.Image(), "dx": datasets.ClassLabel(names=NAMES),
                                  "note": datasets.Value("string")})
    out = {}
    for split, n in COUNTS.items():
        labels = [i % 2 for i in range(n)]
        images = [Image.fromarray(blob_image(rng, label, (32, 32))) for label in labels]
        out[split] = datasets.Dataset.from_dict({"img": images, "dx": labels, "note": ["x"] * n}, features=features)
    return out


@pytest.fixture
def saved(tmp_path):
    folder = tmp_path / "lesions"
    datasets.DatasetDict(splits(np.random.default_rng(0))).save_to_disk(str(folder))
    return folder


def test_save_to_disk_dataset_extracts_and_probes(saved, tmp_path, capsys, tiny_timm_models):
    data = f"hf-dataset:{saved}"
    columns = ["--image-column", "img", "--label-column", "dx"]
    dataset = load_dataset(data, image_column="img", label_column="dx")
    assert dataset.classes == NAMES
    assert dataset.ids[:2] == ["train/000000", "train/000001"] and dataset.ids[-1] == "test/000007"
    assert [s.split for s in dataset.samples].count("val") == COUNTS["validation"]
    items = list(read_all(dataset.samples[:2], dataset.root))
    expected = np.asarray(datasets.load_from_disk(str(saved))["train"][1]["img"].convert("RGB"))
    np.testing.assert_array_equal(np.asarray(items[1].image), expected)
    cache, out_dir = tmp_path / "cache", tmp_path / "results"
    code, out, err = cli(capsys, "extract", data, *columns, "--model", tiny_timm_models["resnet"], "--cache-dir",
                         cache, "--workers", 0, "--device", "cpu")
    assert code == 0 and f"extracted {sum(COUNTS.values())}" in out, err
    code, out, err = cli(capsys, "probe", data, *columns, "--cache-dir", cache, "--bootstrap", 0, "--n-jobs", 1,
                         "--out", out_dir)
    assert code == 0, err
    (record,) = [json.loads(p.read_text()) for p in out_dir.rglob("*.json")]
    assert record["protocol"] == "given-split" and record["sizes"][0]["test"] == COUNTS["test"]
    code, out, err = cli(capsys, "cache", "verify", "--cache-dir", cache)
    assert code == 0, out
    code, out, err = cli(capsys, "finetune", data, *columns, "--model", tiny_timm_models["resnet"], "--epochs", 1,
                         "--workers", 0, "--bootstrap", 0, "--out", tmp_path / "tuned", "--device", "cpu",
                         "--precision", "fp32")
    assert code == 0, err
    (tuned,) = [json.loads(p.read_text()) for p in (tmp_path / "tuned").rglob("*.json")]
    assert tuned["method"] == "finetune-all" and tuned["protocol"] == "given-split"
    assert tuned["sizes"][0]["test"] == COUNTS["test"]
    code, out, err = cli(capsys, "datasets", "inspect", data, "--image-column", "img")  # dx is not "label"
    assert code == 0 and "no labels" in out, out
    code, out, err = cli(capsys, "probe", data, "--image-column", "img", "--cache-dir", cache)
    assert code == 2 and one_error_line(err) and "--label-column" in err, err


def test_parquet_files_and_a_spec_with_the_column_keys(tmp_path):
    folder = tmp_path / "parquet" / "data"
    folder.mkdir(parents=True)
    for split, part in splits(np.random.default_rng(1)).items():
        part.to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    spec = tmp_path / "lesions.toml"
    spec.write_text('hf_dataset = "parquet"\nimage_column = "img"\nlabel_column = "dx"\n')
    dataset = load_dataset(spec)
    assert dataset.name == "lesions" and dataset.classes == NAMES and len(dataset.samples) == sum(COUNTS.values())
    assert {s.split for s in dataset.samples} == {"train", "val", "test"}
    assert all(item.error is None for item in read_all(dataset.samples, dataset.root))


@pytest.mark.parametrize("validation_name", ["val", "valid"])
def test_val_and_valid_split_names_are_the_validation_split(tmp_path, validation_name):
    parts = splits(np.random.default_rng(2))
    parts[validation_name] = parts.pop("validation")
    folder = tmp_path / "renamed"
    datasets.DatasetDict(parts).save_to_disk(str(folder))
    dataset = load_dataset(f"hf-dataset:{folder}", image_column="img", label_column="dx")
    assert [s.split for s in dataset.samples].count("val") == COUNTS["validation"]
    assert sum(i.startswith("val/") for i in dataset.ids) == COUNTS["validation"]  # ids carry the split's name


def test_a_single_saved_dataset_and_a_single_parquet_file_have_no_split_column(tmp_path):
    train = splits(np.random.default_rng(3))["train"]
    train.save_to_disk(str(tmp_path / "one"))
    train.to_parquet(str(tmp_path / "one.parquet"))
    for data in (tmp_path / "one", tmp_path / "one.parquet"):
        dataset = load_dataset(f"hf-dataset:{data}", image_column="img", label_column="dx")
        assert len(dataset.samples) == COUNTS["train"] and dataset.classes == NAMES
        assert {s.split for s in dataset.samples} == {None}
        assert all(item.error is None for item in read_all(dataset.samples, dataset.root))


def test_hf_dataset_errors_are_one_clear_line(saved, capsys, monkeypatch):
    code, out, err = cli(capsys, "datasets", "inspect", f"hf-dataset:{saved}")
    assert code == 2 and one_error_line(err) and "no image column 'image'" in err and "img" in err, err
    code, out, err = cli(capsys, "datasets", "inspect", f"hf-dataset:{saved}", "--image-column", "img",
                         "--label-column", "diagnosis")
    assert code == 2 and "no label column 'diagnosis'" in err, err
    import builtins

    real_import = builtins.__import__

    def without_datasets(name, *args, **kwargs):
        if name == "datasets" or name.startswith("datasets."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_datasets)
    code, out, err = cli(capsys, "datasets", "inspect", f"hf-dataset:{saved}", "--image-column", "img")
    assert code == 2 and "pip install 'medprobe[hf]'" in err, err


def test_an_hf_imagefolder_layout_is_refused_with_what_to_pass_instead(tmp_path, capsys):
    from test_reliability import good_folder

    root = good_folder(tmp_path / "imagefolder" / "train")
    (root.parent / "metadata.csv").write_text("file_name,label\ntrain/c0/ok0.png,c0\n")
    code, out, err = cli(capsys, "datasets", "inspect", f"hf-dataset:{root.parent}")
    assert code == 2 and one_error_line(err), err
    assert "HF imagefolder layout" in err and "pass the folder itself as DATA" in err, err
    code, out, err = cli(capsys, "datasets", "inspect", root)  # what the message says to do instead
    assert code == 0 and "c0" in out and "c1" in out, err


def test_rows_are_read_in_units_of_1024_each_loading_its_split_once(tmp_path, monkeypatch):
    from collections import Counter

    from medprobe.data import hf_datasets

    features = datasets.Features({"img": datasets.Image(), "dx": datasets.ClassLabel(names=NAMES)})
    tile = Image.fromarray(blob_image(np.random.default_rng(4), 0, (32, 32)))
    parts = {split: datasets.Dataset.from_dict({"img": [tile] * n, "dx": [i % 2 for i in range(n)]},
                                               features=features) for split, n in (("train", 2100), ("test", 5))}
    datasets.DatasetDict(parts).save_to_disk(str(tmp_path / "big"))
    dataset = load_dataset(f"hf-dataset:{tmp_path / 'big'}", image_column="img", label_column="dx")
    opened = Counter()
    plain = hf_datasets.open_part

    def counted(path):
        opened[path.name] += 1
        return plain(path)

    monkeypatch.setattr(hf_datasets, "open_part", counted)
    decoded = list(read_all(dataset.samples, dataset.root))
    assert len(decoded) == 2105 and all(item.error is None for item in decoded)
    assert opened == {"train": 3, "test": 1}  # rows 0-1023, 1024-2047, 2048-2099; the 5 test rows

"""A Hugging Face `datasets` dataset on disk as a medprobe dataset: a folder written by `save_to_disk` (one
dataset, or a DatasetDict of splits), or parquet files (one file, or a folder of `train-*.parquet`,
`validation-*.parquet`, `test-*.parquet` as the Hub publishes them). Nothing is downloaded (the datasets
library runs offline). DATA `hf-dataset:PATH`, or `hf_dataset = "PATH"` in a dataset spec, with
`image_column` (default "image") and `label_column` (default "label"; absent: no labels).

Ids are `train/000123` (split, then the row's index in that split) or `000123` for a dataset without splits;
the split names train / validation (or val, valid) / test become the `split` column. A ClassLabel column
gives its class names, in its own order; other label values are used as text. The `datasets` package is
the optional extra `medprobe[hf]`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from medprobe.data.decoding import DecodingOptions
from medprobe.data.images import IMAGE_SUFFIXES
from medprobe.data.samples import NO_LABEL, Dataset, Member, Sample
from medprobe.data.sources import checked
from medprobe.errors import MedprobeError

PREFIX = "hf-dataset:"
IMAGE_COLUMN = "image"
LABEL_COLUMN = "label"
SPLIT_NAMES = {"train": "train", "validation": "val", "valid": "val", "val": "val", "test": "test"}
CHUNK = 1024
_PARQUET_SPLIT = re.compile(r"^(train|validation|valid|val|test)[-_.]")


def hf_datasets():
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # medprobe never downloads
    try:
        import datasets
    except ImportError:
        raise MedprobeError("Hugging Face datasets need the datasets package; install it with: "
                            "pip install 'medprobe[hf]'") from None
    datasets.disable_progress_bars()
    return datasets


@dataclass(frozen=True)
class Part:
    """One readable piece: a save_to_disk split folder or one parquet file, and its split name (or None)."""

    path: Path
    split: str | None


def _split_name(name: str, where: Path) -> str:
    if name.lower() not in SPLIT_NAMES:
        raise MedprobeError(f"{where}: split {name!r} is not one of {', '.join(SPLIT_NAMES)}; rename it or save the "
                            "splits you want as train/validation/test")
    return SPLIT_NAMES[name.lower()]


def find_parts(path: Path) -> list[Part]:
    if path.is_file() and path.suffix == ".parquet":
        match = _PARQUET_SPLIT.match(path.name)
        return [Part(path, _split_name(match.group(1), path) if match else None)]
    if not path.is_dir():
        raise MedprobeError(f"{path} is neither a datasets folder (save_to_disk) nor parquet; pass one of those")
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        return [Part(path / name, _split_name(name, path)) for name in splits]
    if (path / "state.json").is_file():
        return [Part(path, None)]
    files = sorted(path.rglob("*.parquet"))
    if not files and any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.rglob("*")):
        raise MedprobeError(f"{path} is an image folder (an HF imagefolder layout?), which medprobe does not read "
                            "through datasets; pass the folder itself as DATA (class sub-folders), or its "
                            "metadata.csv as a CSV manifest (path,label)")
    if not files:
        raise MedprobeError(f"{path} holds no save_to_disk dataset (dataset_dict.json / state.json) and no .parquet "
                            "files; save it with Dataset.save_to_disk or to_parquet")
    parts = [find_parts(file)[0] for file in files]
    if len({part.split for part in parts}) > 1 and any(part.split is None for part in parts):
        raise MedprobeError(f"{path}: some parquet files name a split (train-..., test-...) and some do not; name "
                            "them all or none")
    return parts


def open_part(part_path: Path):
    datasets = hf_datasets()
    try:
        if part_path.suffix == ".parquet":  # converted to arrow once, in medprobe's cache folder
            from medprobe.locations import default_cache_dir

            return datasets.Dataset.from_parquet(str(part_path), cache_dir=str(default_cache_dir() / "hf-datasets"))
        return datasets.load_from_disk(str(part_path))
    except Exception as exc:  # datasets raises many types for broken folders
        raise MedprobeError(f"cannot read the datasets data {part_path}: {exc}; save it again") from exc


def _labels(table, column: str, where: Path) -> tuple[list[str], list[str] | None]:
    """Each row's label as text, and the ClassLabel's names (its class order) when it has them."""
    feature = table.features[column]
    values = table[column]
    names = getattr(feature, "names", None)
    if names:
        return [names[v] if v is not None and v >= 0 else NO_LABEL for v in values], list(names)
    if any(isinstance(v, (list, tuple, dict)) for v in values[:1]):
        raise MedprobeError(f"{where}: label column {column!r} holds {type(values[0]).__name__} values; medprobe "
                            "reads one label per image for now")
    return [NO_LABEL if v is None else str(v) for v in values], None


def load_hf_dataset(path: Path, *, image_column: str | None = None, label_column: str | None = None,
                    name: str | None = None, source: Path | str | None = None,
                    decoding: DecodingOptions | None = None) -> Dataset:
    image_column = image_column or IMAGE_COLUMN
    decoding = decoding or DecodingOptions()
    parts = find_parts(path)
    samples: list[Sample] = []
    class_order: list[str] | None = None
    labelled = True
    offsets: dict[str | None, int] = {}
    for part in parts:
        table = open_part(part.path)
        columns = list(table.column_names)
        if image_column not in columns:
            raise MedprobeError(f"{part.path} has no image column {image_column!r}; columns: {', '.join(columns)} "
                                "(pass --image-column or image_column in the spec)")
        if label_column and label_column not in columns:
            raise MedprobeError(f"{part.path} has no label column {label_column!r}; columns: {', '.join(columns)}")
        column = label_column or (LABEL_COLUMN if LABEL_COLUMN in columns else None)
        if column is None:
            labels, names = [NO_LABEL] * len(table), None
            labelled = False
        else:
            labels, names = _labels(table, column, part.path)
        class_order = class_order or names
        offset = offsets.get(part.split, 0)
        for local, label in enumerate(labels):
            index = offset + local
            sample_id = f"{part.split}/{index:06d}" if part.split else f"{index:06d}"
            samples.append(Sample(id=sample_id, path=part.path, label=label, split=part.split, windows=decoding.windows,
                                  member=Member("hf-dataset", f"{image_column}/{local}", local // CHUNK)))
        offsets[part.split] = offset + len(labels)
    present = {s.label for s in samples} - {NO_LABEL}
    classes = [c for c in class_order if c in present] if class_order else []
    fix = (f"{path} has no label column {LABEL_COLUMN!r}; pass --label-column (or label_column in the spec)"
           if not labelled else "give every row a label")
    dataset = Dataset(name=name or path.stem, root=path, source=Path(source or path), samples=samples,
                      classes=classes, label_fix=fix, decoding=decoding.text)
    return checked(dataset, path)

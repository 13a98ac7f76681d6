"""MedMNIST .npz files as a dataset: `medmnist:pneumoniamnist_224` (in MedMNIST's root, ~/.medmnist) or a
path to the .npz. Nothing is downloaded. The official train/val/test split becomes the `split` column; ids
are `train/000123`; labels are MedMNIST's class names. 3-D variants (`organmnist3d`, ...) give one slice
sample per plane along the volume's first axis (`train/000123#slice:14`), grouped by volume. Multi-label
ChestMNIST becomes a multi-label dataset: its 14 findings in MedMNIST's order, each image's 0/1 vector.

The `medmnist` package (extra `medprobe[medmnist]`) supplies the class names and the root folder; only its
`info` module is read, so loading a dataset never imports torch.
"""

from __future__ import annotations

import importlib.util
import re
import zipfile
from pathlib import Path

import numpy as np

from medprobe.data.findings import finding_label
from medprobe.data.samples import SPLITS, Dataset, Member, Sample
from medprobe.data.sources import checked
from medprobe.errors import MedprobeError

PREFIX = "medmnist:"
CHUNK = 1024  # samples decoded per unit: one load of the split's image array serves this many
_SIZE_SUFFIX = re.compile(r"_(28|64|128|224)$")


def medmnist_info():
    """medmnist's `info` module (INFO, DEFAULT_ROOT), loaded without the package's torch-importing __init__."""
    spec = importlib.util.find_spec("medmnist")
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise MedprobeError("MedMNIST data needs the medmnist package; install it with: "
                            "pip install 'medprobe[medmnist]'")
    info_spec = importlib.util.spec_from_file_location("_medprobe_medmnist_info", Path(locations[0]) / "info.py")
    module = importlib.util.module_from_spec(info_spec)
    info_spec.loader.exec_module(module)
    return module


def resolve(text: str) -> Path:
    """`medmnist:NAME` -> NAME.npz in MedMNIST's root folder."""
    name = text[len(PREFIX):].strip()
    path = Path(medmnist_info().DEFAULT_ROOT) / f"{name.removesuffix('.npz')}.npz"
    if not path.is_file():
        raise MedprobeError(f"{text}: {path} does not exist; medprobe downloads nothing: put the MedMNIST .npz "
                            "there (python -m medmnist download, or from Zenodo) or pass its path")
    return path


def _array_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Each array's shape from the .npz headers (no pixel data read)."""
    shapes = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                with archive.open(member) as handle:
                    version = np.lib.format.read_magic(handle)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, _ = read_header(handle)
                    shapes[member.removesuffix(".npy")] = tuple(shape)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise MedprobeError(f"cannot read MedMNIST file {path}: {exc}; download it again") from exc
    return shapes


def load_medmnist(path: Path, source: str | Path | None = None) -> Dataset:
    info = medmnist_info()
    flag = _SIZE_SUFFIX.sub("", path.stem.lower())
    if flag not in info.INFO:
        raise MedprobeError(f"{path}: {flag!r} is not a MedMNIST dataset; the file name must be one of "
                            f"{', '.join(sorted(info.INFO))} (optionally _64, _128 or _224), as MedMNIST names it")
    meta = info.INFO[flag]
    multilabel = meta["task"].startswith("multi-label")
    shapes = _array_shapes(path)
    missing = [f"{s}_{part}" for s in SPLITS for part in ("images", "labels") if f"{s}_{part}" not in shapes]
    if missing:
        raise MedprobeError(f"{path} lacks {', '.join(missing)}; it is not a MedMNIST .npz (train_images, "
                            "train_labels, val_..., test_...)")
    names = meta["label"]
    findings = [names[k] for k in sorted(names, key=int)] if multilabel else []
    volumetric = len(shapes["train_images"]) == 4 and flag.endswith("3d")
    with np.load(path) as arrays:
        labels = {split: np.asarray(arrays[f"{split}_labels"]).reshape(len(arrays[f"{split}_labels"]), -1)
                  for split in SPLITS}
    samples = []
    for split in SPLITS:
        expected = len(findings) if multilabel else 1
        if labels[split].shape[1] != expected:
            raise MedprobeError(f"{path}: {split}_labels has {labels[split].shape[1]} labels per image, but {flag} "
                                f"has {expected}; download the file again")
        for index, row in enumerate(labels[split]):
            base = f"{split}/{index:06d}"
            vector = tuple(float(v) for v in row) if multilabel else None
            label = finding_label(vector, findings) if multilabel else names.get(str(int(row[0])), str(int(row[0])))
            chunk = index // CHUNK
            planes = range(shapes[f"{split}_images"][1]) if volumetric else [None]
            for plane in planes:
                sample_id = base if plane is None else f"{base}#slice:{plane}"
                samples.append(Sample(id=sample_id, path=path, label=label, split=split, findings=vector,
                                      group=base if volumetric else None, member=Member("medmnist", sample_id, chunk)))
    present = {s.label for s in samples}
    classes = [names[k] for k in sorted(names, key=int) if names[k] in present]  # MedMNIST's order (ordinal sets)
    return checked(Dataset(name=path.stem, root=path, source=Path(source or path), samples=samples, classes=classes,
                           findings=findings), path)

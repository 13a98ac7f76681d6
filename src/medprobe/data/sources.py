"""Turn the DATA argument (a class-folder tree, a CSV manifest, or a TOML dataset spec) into a Dataset.

Every command resolves DATA through `resolve_data_argument` + `load_dataset`, so all stages see the
same samples in the same order.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

from medprobe.data.decoding import DECODING_KEYS, DecodingOptions, parse_decoding
from medprobe.data.findings import (
    LABELS_COLUMN,
    FindingColumns,
    column_findings,
    finding_label,
    parse_finding_columns,
    pipe_findings,
)
from medprobe.data.findings import SPEC_KEYS as FINDING_KEYS
from medprobe.data.images import IMAGE_SUFFIXES
from medprobe.data.samples import NO_LABEL, SPLITS, Dataset, Member, Sample
from medprobe.data.slicing import VOLUME_KEYS, VolumeOptions, expand_volumes, parse_volume_options
from medprobe.data.volumes import VOLUME_SUFFIXES, is_volume_source
from medprobe.errors import MedprobeError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PROJECT_FILE = "medprobe.toml"
HF_KEYS = {"hf_dataset", "image_column", "label_column"}
SPEC_KEYS = {"manifest", "folder", "name", *VOLUME_KEYS, *DECODING_KEYS, *HF_KEYS, *FINDING_KEYS}
TARGET_KEYS = ("manifest", "folder", "hf_dataset")
MANIFEST_COLUMNS = ("path", "label", LABELS_COLUMN, "group", "split")  # any other column: a sample attribute


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise MedprobeError(f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise MedprobeError(f"{path} is not valid TOML ({exc}); fix the file") from exc


def _medmnist(path: Path) -> Dataset:
    from medprobe.data.medmnist import load_medmnist

    return load_medmnist(path)


def _named_medmnist(text: str, **_columns) -> Dataset:
    from medprobe.data.medmnist import load_medmnist, resolve

    return load_medmnist(resolve(text), source=text)


def _named_hf_dataset(text: str, **columns) -> Dataset:
    from medprobe.data.hf_datasets import PREFIX, load_hf_dataset

    path = Path(text[len(PREFIX):]).expanduser()
    if not path.exists():
        raise MedprobeError(f"{text}: {path} does not exist; pass a save_to_disk folder or parquet file(s)")
    return load_hf_dataset(path, source=text, **columns)


# DATA forms that name a dataset instead of a path; they take the --image-column / --label-column options
NAMED_SOURCES = {"medmnist:": _named_medmnist, "hf-dataset:": _named_hf_dataset}


def _named(data: str | Path) -> str | None:
    text = str(data)
    return next((prefix for prefix in NAMED_SOURCES if text.startswith(prefix)), None)


def resolve_data_argument(data: str | Path | None, cwd: Path | None = None) -> Path:
    """DATA as given, or the dataset named by ./medprobe.toml (`[dataset] path = ...`)."""
    if data is not None and _named(data):
        return Path(str(data))  # resolved by load_dataset
    if data is not None:
        path = Path(data).expanduser()
        if not path.exists():
            raise MedprobeError(f"DATA {path} does not exist; pass a class folder, a CSV manifest, a .toml spec or a "
                                "MedMNIST .npz")
        return path
    project = (cwd or Path.cwd()) / PROJECT_FILE
    if not project.is_file():
        raise MedprobeError(
            f"no DATA given and no {PROJECT_FILE} here; pass DATA or write {PROJECT_FILE} with "
            '[dataset] path = "your-data"'
        )
    table = read_toml(project).get("dataset")
    if not isinstance(table, dict) or "path" not in table:
        raise MedprobeError(f'{project} has no [dataset] path; add: [dataset] path = "your-data"')
    path = (project.parent / str(table["path"])).expanduser()
    if not path.exists():
        raise MedprobeError(f"{project}: dataset path {path} does not exist; fix [dataset] path")
    return path


def load_dataset(path: Path, *, image_column: str | None = None, label_column: str | None = None) -> Dataset:
    """`image_column` / `label_column`: for a Hugging Face dataset (hf-dataset:PATH)."""
    prefix = _named(path)
    if prefix:
        return NAMED_SOURCES[prefix](str(path), image_column=image_column, label_column=label_column)
    path = Path(path)
    if path.is_dir():
        return _from_folder(path, name=path.name)
    suffix = path.suffix.lower()
    if suffix == ".csv":  # "xray-labels" reads better in tables than a bare "labels"
        return _from_manifest(path, name=f"{path.resolve().parent.name}-{path.stem}", options=None)
    if suffix == ".toml":
        return _from_spec(path)
    if suffix == ".npz":
        return _medmnist(path)
    raise MedprobeError(f"DATA {path} is not a folder, a .csv manifest, a .toml spec or a MedMNIST .npz; pass one "
                        "of those")


def _from_spec(path: Path) -> Dataset:
    spec = read_toml(path)
    if "dataset" in spec and isinstance(spec["dataset"], dict):  # a medprobe.toml given explicitly
        return load_dataset(resolve_data_argument(None, cwd=path.parent))
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise MedprobeError(
            f"{path}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(SPEC_KEYS))}"
        )
    name = str(spec.get("name", path.stem))
    given = [key for key in TARGET_KEYS if key in spec]
    if len(given) != 1:
        raise MedprobeError(f'{path}: give exactly one of manifest = "file.csv", folder = "dir" or hf_dataset = "dir"')
    target = path.parent / str(spec[given[0]])
    if not target.exists():
        raise MedprobeError(f"{path}: {target} does not exist; fix the path in the spec")
    decoding = parse_decoding(spec, path)
    if "hf_dataset" in spec:
        from medprobe.data.hf_datasets import load_hf_dataset

        return load_hf_dataset(target, image_column=spec.get("image_column"), label_column=spec.get("label_column"),
                               name=name, source=path, decoding=decoding)
    options = parse_volume_options(spec, path, decoding.windows, channel_columns=not decoding.window_channels)
    finding_columns = parse_finding_columns(spec, path)
    if "manifest" in spec:
        return _from_manifest(target, name=name, options=options, spec=path, decoding=decoding,
                              finding_columns=finding_columns)
    if finding_columns is not None:
        raise MedprobeError(f"{path}: labels = [...] names manifest columns; use manifest = \"file.csv\"")
    return _from_folder(target, name=name, options=options, decoding=decoding)


def _is_sample_file(path: Path, volumes: bool) -> bool:
    suffixes = IMAGE_SUFFIXES + VOLUME_SUFFIXES if volumes else IMAGE_SUFFIXES
    return path.is_file() and path.name.lower().endswith(suffixes) and not path.name.startswith(".")


def _from_folder(root: Path, *, name: str, options: VolumeOptions | None = None,
                 decoding: DecodingOptions | None = None) -> Dataset:
    """Class sub-folders (each one's name is its images' label), or, when images sit in the folder itself,
    an unlabelled folder: every image below it, flat or nested. Ids are paths relative to `root`."""
    volumes = options is not None
    loose = [p for p in root.iterdir() if _is_sample_file(p, volumes)]
    if loose:
        files = sorted(p for p in root.rglob("*") if _is_sample_file(p, volumes))
        rows = [{"path": p.relative_to(root).as_posix(), "label": NO_LABEL} for p in files]
        fix = f"{root} has no class sub-folders; put images in {root}/<class>/ or pass a CSV manifest with labels"
        if len(files) > len(loose):
            fix = (f"{root} holds {len(loose)} image(s) in itself (e.g. {loose[0].name}) besides its sub-folders, so "
                   "the sub-folders are not read as classes; move those images into class sub-folders or remove them")
        return _dataset_from_rows(rows, root=root, source=root, name=name, options=options, decoding=decoding,
                                  where=lambda i: f"{root}/{rows[i]['path']}", label_fix=fix)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise MedprobeError(f"{root} holds no images ({', '.join(IMAGE_SUFFIXES)}); point DATA at your image folder")
    rows: list[dict[str, str]] = []
    for class_dir in class_dirs:
        files = sorted(p for p in class_dir.rglob("*") if _is_sample_file(p, volumes))
        if not files:
            raise MedprobeError(
                f"class folder {class_dir} has no images ({', '.join(IMAGE_SUFFIXES)}); add images or remove it"
            )
        rows += [{"path": p.relative_to(root).as_posix(), "label": class_dir.name} for p in files]
    return _dataset_from_rows(rows, root=root, source=root, name=name, options=options, decoding=decoding,
                              where=lambda i: f"{root}/{rows[i]['path']}")


def _from_manifest(manifest: Path, *, name: str, options: VolumeOptions | None, spec: Path | None = None,
                   decoding: DecodingOptions | None = None, finding_columns: FindingColumns | None = None) -> Dataset:
    """Rows path[,label,group,split]; without a label column the dataset is unlabelled. Multi-label: a
    `labels` column of findings joined by `|`, or the spec's `finding_columns` (0/1 per finding)."""
    root = manifest.parent
    required = list(options.channels) if options and options.channels else ["path"]
    if options and options.rule.needs_mask:
        required.append(options.mask_column)
    header = required + [c for c in (finding_columns.columns if finding_columns else ()) if c not in required]
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in header if c not in columns]
            if missing:
                raise MedprobeError(
                    f"{manifest} lacks column(s) {', '.join(missing)}; the header needs {','.join(header)} "
                    f"(optional: label, group, split), found: {', '.join(columns) or 'nothing'}"
                )
            rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
            labelled = "label" in columns
            piped = LABELS_COLUMN in columns and finding_columns is None
    except OSError as exc:
        raise MedprobeError(f"cannot read manifest {manifest}: {exc.strerror}") from exc
    if not rows:
        raise MedprobeError(f"{manifest} lists no images; add rows {','.join(required)}")
    multilabel = piped or finding_columns is not None
    if multilabel and (labelled or options is not None):
        raise MedprobeError(f"{manifest}: multi-label findings ({'the labels column' if piped else 'labels = [...]'})"
                            f" {'with a label column' if labelled else 'of volumes'} is not supported; "
                            f"{'drop one of the two' if labelled else 'list the slices as images'}")
    findings, vectors = [], []
    if multilabel:
        where = lambda i: f"{manifest}:{i + 2}"  # noqa: E731 - the row's line in the CSV
        findings, vectors = (pipe_findings(rows) if piped else
                             (list(finding_columns.columns), column_findings(rows, finding_columns, where)))
        if not findings:
            raise MedprobeError(f"{manifest}: the labels column names no finding; join findings with | "
                                "(e.g. effusion|atelectasis), an empty cell meaning no finding")
        for row, vector in zip(rows, vectors, strict=True):
            row["label"] = finding_label(vector, findings)
        labelled = True
    for line, row in enumerate(rows, start=2):
        if labelled and not row.get("label"):
            raise MedprobeError(f"{manifest}:{line}: empty label; fill it in or delete the row (or drop the label "
                                "column to extract without labels)")
        row.setdefault("label", NO_LABEL)
        for column in required:
            if not row.get(column):
                raise MedprobeError(f"{manifest}:{line}: empty {column}; fill it in or delete the row")
            if not (root / row[column]).expanduser().exists():
                raise MedprobeError(f"{manifest}:{line}: {column} {root / row[column]} does not exist; fix the path "
                                    f"(relative to {root})")
        split = row.get("split") or None
        if split is not None and split not in SPLITS:
            raise MedprobeError(f"{manifest}:{line}: split {split!r} is not one of {', '.join(SPLITS)}")
        if options is None and is_volume_source(root / row["path"]):
            if spec is not None:  # a spec without volume keys: the documented defaults
                options = VolumeOptions(windows=(decoding or DecodingOptions()).windows)
                continue
            raise MedprobeError(
                f"{manifest}:{line}: {row['path']} is a volume; volumes need a dataset spec, e.g. a file "
                f'{manifest.stem}.toml with: manifest = "{manifest.name}"  axis = "axial"  slices = "middle:8"'
            )
    fix = (f"{manifest} has no label column; add one (header {','.join(required)},label[,group,split]), found: "
           f"{', '.join(columns)}")
    known = finding_columns.columns if finding_columns else ()
    return _dataset_from_rows(rows, root=root, source=spec or manifest, name=name, options=options,
                              decoding=decoding, where=lambda i: f"{manifest}:{i + 2}",
                              findings=findings, vectors=vectors, known=known,
                              **({} if labelled else {"label_fix": fix}))


def _row_attributes(row: dict[str, str], options: VolumeOptions | None,
                    known_columns: tuple[str, ...] = ()) -> tuple[tuple[str, str], ...]:
    """The row's columns that say nothing about where its pixels are, what it shows or how it is split (sex,
    site, age_group); `known_columns`: more such columns (a spec's finding columns)."""
    known = set(MANIFEST_COLUMNS) | set(known_columns)
    if options is not None:
        known.update(options.channels or ())
        known.add(options.mask_column)
    return tuple((column, value) for column, value in row.items() if column not in known)


def _image_samples(row: dict[str, str], root: Path, decoding: DecodingOptions,
                   attributes: tuple[tuple[str, str], ...], findings: tuple[float, ...] | None) -> list[Sample]:
    """One sample per image row, or per frame of a multi-frame DICOM under frames = "all"."""
    relative = Path(row["path"]).as_posix()
    path = (root / row["path"]).expanduser()
    common = dict(path=path, label=row["label"], split=row.get("split") or None, windows=decoding.windows,
                  attributes=attributes, findings=findings)
    frames = 1
    if decoding.all_frames and path.name.lower().endswith(".dcm"):
        from medprobe.data.dicom import frames_in

        frames = frames_in(path)
    if frames == 1:
        return [Sample(id=relative, group=row.get("group") or None, **common)]
    group = row.get("group") or relative  # the frames of one file never land in different splits
    return [Sample(id=f"{relative}#frame:{i}", group=group, member=Member("dicom-frame", str(i)), **common)
            for i in range(frames)]


def _dataset_from_rows(rows: list[dict[str, str]], *, root: Path, source: Path, name: str,
                       options: VolumeOptions | None, decoding: DecodingOptions | None, where,
                       label_fix: str | None = None, findings: list[str] = (),
                       vectors: list[tuple[float, ...]] = (), known: tuple[str, ...] = ()) -> Dataset:
    """`findings` / `vectors`: a multi-label dataset's finding names and each row's vector (image rows only)."""
    decoding = decoding or DecodingOptions()
    attributes = [_row_attributes(row, options, known) for row in rows]
    if options is None:
        per_row = vectors or [None] * len(rows)
        samples = [sample for row, attrs, vector in zip(rows, attributes, per_row, strict=True)
                   for sample in _image_samples(row, root, decoding, attrs, vector)]
    else:
        samples = expand_volumes(rows, root=root, options=options, where=where, attributes=attributes)
    extra = {"label_fix": label_fix} if label_fix else {}
    return checked(Dataset(name=name, root=root, source=source, samples=samples, decoding=decoding.text,
                           findings=list(findings), **extra), source)


def checked(dataset: Dataset, source: Path) -> Dataset:
    """Rules every source's dataset obeys (labels are checked later, by what needs them)."""
    seen: set[str] = set()
    for sample in dataset.samples:
        if sample.id in seen:
            raise MedprobeError(f"{source}: image {sample.id} is listed twice; each image may appear once")
        seen.add(sample.id)
    if not dataset.samples:
        raise MedprobeError(f"{source}: no samples (no slice passed the slice rule); loosen `slices`")
    splits = {s.split for s in dataset.samples}
    if len(splits) > 1 and None in splits:
        raise MedprobeError(f"{source}: some rows have a split and some do not; fill the split column for all")
    return dataset

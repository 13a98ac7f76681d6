"""The experiment file of `medprobe run`: datasets x backbones x methods, in one TOML file.

    out = "results"                  # run records, report/ and run-state.json (relative to this file)
    cache_dir = "cache"              # optional; default: MEDPROBE_CACHE or ~/.cache/medprobe
    backbones = ["resnet50", "dinov2-small"]
    seeds = [0]                      # every probe and fine-tune runs once per seed
    folds = 5
    bootstrap = 5000
    metric = "accuracy"              # the report's headline metric

    [[datasets]]
    data = "chest/labels.csv"        # anything DATA accepts: folder, CSV, dataset .toml (volumes)
    ordinal = false                  # optional, per dataset
    classes = ["II", "III", "IV"]    # optional class order
    finetune = false                 # optional: probe this dataset only
    test = "site2/labels.csv"        # optional: an external test cohort (extracted, probed and fine-tuned too)
    subgroups = ["sex", "site"]      # optional: manifest columns, every metric per value (subgroup_min = 20)

    [extract]                        # optional: precision, batch_size, device, workers, image_size, skip_bad
    [probe]                          # classifiers = ["logreg", "svm", "knn"], pools = ["auto"], shots = [],
                                     # calibrate = "temperature" (optional)
    [finetune]                       # optional; modes = ["none", "all"], epochs, lr, head_lr, batch_size, ...

Every key is checked; an unknown one is an error naming it, so a typo never silently changes the study.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from medprobe.data.sources import read_toml
from medprobe.errors import MedprobeError
from medprobe.probe.settings import SUBGROUP_MIN_SAMPLES

TOP_KEYS = {"out", "cache_dir", "backbones", "seeds", "folds", "bootstrap", "metric", "datasets", "extract",
            "probe", "finetune"}
DATASET_KEYS = {"data", "ordinal", "classes", "finetune", "test", "subgroups", "subgroup_min"}
PROBE_KEYS = {"classifiers", "pools", "shots", "repeats", "calibrate"}
FINETUNE_EXCLUDED = {"unfreeze", "seed", "folds", "bootstrap", "ordinal", "resume", "fold"}  # set by the run


@dataclass(frozen=True)
class DatasetEntry:
    data: Path
    ordinal: bool = False
    classes: tuple[str, ...] = ()
    finetune: bool = True  # false: probes only (fine-tuning every dataset may cost too much)
    test: Path | None = None  # an external test cohort (--test)
    subgroups: tuple[str, ...] = ()  # --subgroups
    subgroup_min: int = SUBGROUP_MIN_SAMPLES


@dataclass
class Experiment:
    path: Path
    out: Path
    cache_dir: Path | None
    backbones: list[str]
    datasets: list[DatasetEntry]
    seeds: list[int] = field(default_factory=lambda: [0])
    folds: int = 5
    bootstrap: int = 5000
    metric: str = "accuracy"
    extract: dict = field(default_factory=dict)
    classifiers: list[str] = field(default_factory=lambda: ["logreg", "svm", "knn"])
    pools: list[str] = field(default_factory=lambda: ["auto"])
    shots: list[int | str] = field(default_factory=list)
    repeats: int = 5
    calibrate: str | None = None
    finetune_modes: list[str] = field(default_factory=list)
    finetune: dict = field(default_factory=dict)


def _unknown(table: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise MedprobeError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def _list_of(value, kind, where: str, key: str) -> list:
    if not isinstance(value, list) or not all(isinstance(v, kind) for v in value):
        raise MedprobeError(f"{where}: {key} must be a list, e.g. {key} = [...]")
    return value


def _table(spec: dict, key: str, path: Path) -> dict:
    value = spec.get(key, {})
    if not isinstance(value, dict):
        raise MedprobeError(f"{path}: [{key}] must be a table ([{key}] on its own line, then key = value)")
    return value


def load_experiment(path: Path) -> Experiment:
    path = Path(path)
    if not path.is_file():
        raise MedprobeError(f"experiment file {path} does not exist; see `medprobe run --help` for its format")
    spec = read_toml(path)
    _unknown(spec, TOP_KEYS, str(path))
    base = path.parent
    backbones = _list_of(spec.get("backbones"), str, str(path), "backbones") if "backbones" in spec else []
    if not backbones:
        raise MedprobeError(f'{path}: no backbones; add backbones = ["resnet50", "dinov2-small"]')
    raw_datasets = spec.get("datasets", [])
    if not isinstance(raw_datasets, list) or not raw_datasets:
        raise MedprobeError(f'{path}: no datasets; add a [[datasets]] table with data = "path/to/labels.csv"')
    datasets = []
    for number, entry in enumerate(raw_datasets, start=1):
        where = f"{path}: [[datasets]] #{number}"
        if not isinstance(entry, dict) or "data" not in entry:
            raise MedprobeError(f'{where} needs data = "a folder, CSV or dataset .toml"')
        _unknown(entry, DATASET_KEYS, where)
        data = (base / str(entry["data"])).expanduser()
        if not data.exists():
            raise MedprobeError(f"{where}: data {data} does not exist; fix the path (relative to {base})")
        classes = tuple(_list_of(entry.get("classes", []), str, where, "classes"))
        test = (base / str(entry["test"])).expanduser() if "test" in entry else None
        if test is not None and not test.exists():
            raise MedprobeError(f"{where}: test {test} does not exist; fix the path (relative to {base})")
        datasets.append(DatasetEntry(data=data, ordinal=bool(entry.get("ordinal", False)), classes=classes,
                                     finetune=bool(entry.get("finetune", True)), test=test,
                                     subgroups=tuple(_list_of(entry.get("subgroups", []), str, where, "subgroups")),
                                     subgroup_min=int(entry.get("subgroup_min", SUBGROUP_MIN_SAMPLES))))
    seeds = _list_of(spec.get("seeds", [0]), int, str(path), "seeds")
    extract = _table(spec, "extract", path)
    from medprobe.extract.settings import ExtractSettings  # torch-free dataclass

    _unknown(extract, {f.name for f in fields(ExtractSettings)}, f"{path}: [extract]")
    probe = _table(spec, "probe", path)
    _unknown(probe, PROBE_KEYS, f"{path}: [probe]")
    calibrate = probe.get("calibrate")
    if calibrate is not None:
        from medprobe.results.calibration import get_calibrator

        get_calibrator(str(calibrate))  # an unknown name fails here, before any step runs
    finetune = dict(_table(spec, "finetune", path))
    modes = _list_of(finetune.pop("modes", ["all"] if finetune or "finetune" in spec else []), str, str(path),
                     "[finetune] modes")
    from medprobe.finetune.settings import FinetuneSettings  # torch-free dataclass

    allowed = {f.name for f in fields(FinetuneSettings)} - FINETUNE_EXCLUDED
    _unknown(finetune, allowed | {"modes"}, f"{path}: [finetune]")
    cache_dir = spec.get("cache_dir")
    return Experiment(
        path=path, out=(base / str(spec.get("out", "medprobe-results"))).expanduser(),
        cache_dir=(base / str(cache_dir)).expanduser() if cache_dir else None, backbones=backbones,
        datasets=datasets, seeds=seeds, folds=int(spec.get("folds", 5)), bootstrap=int(spec.get("bootstrap", 5000)),
        metric=str(spec.get("metric", "accuracy")), extract=extract,
        classifiers=_list_of(probe.get("classifiers", ["logreg", "svm", "knn"]), str, str(path), "classifiers"),
        pools=_list_of(probe.get("pools", ["auto"]), str, str(path), "pools"),
        shots=list(probe.get("shots", [])), repeats=int(probe.get("repeats", 5)),
        calibrate=str(calibrate) if calibrate is not None else None, finetune_modes=modes,
        finetune=finetune,
    )

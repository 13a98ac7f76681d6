"""medprobe's Python API: the CLI's stages as functions with keyword-only arguments, for notebooks and scripts.

    import medprobe
    caches = medprobe.extract("data/labels.csv", models=["efficientnet-lite0"])
    fs = medprobe.features("data/labels.csv", model="efficientnet-lite0")   # numpy, torch-free
    plan = medprobe.splits(fs)                                               # medprobe's own folds
    records = medprobe.probe("data/labels.csv", clf=["logreg", "knn"], out="results")
    table = medprobe.load_results("results")                                 # a pandas DataFrame

Every default comes from the settings dataclasses the CLI reads too (ExtractSettings, ProbeSettings,
FinetuneSettings), so `medprobe.probe(data)` and `medprobe probe DATA` run the same protocol and write the
same records. Bad input raises medprobe.MedprobeError with the CLI's one-line message. `progress=False`
turns the progress bars off (rich draws them in Jupyter too).

`data` is what the CLI's DATA argument takes (a class folder, a CSV manifest, a .toml spec, a MedMNIST
.npz, medmnist:NAME, hf-dataset:PATH; None: ./medprobe.toml), or a loaded medprobe.data.Dataset.
"""

from __future__ import annotations

import inspect
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np

from medprobe.errors import MedprobeError
from medprobe.extract.settings import CacheInfo, ExtractSettings
from medprobe.finetune.settings import FinetuneSettings
from medprobe.locations import RESULTS_DIR
from medprobe.probe.settings import ProbeSettings

if TYPE_CHECKING:
    import pandas

    from medprobe.data.samples import Dataset
    from medprobe.data.splits import SplitPlan
    from medprobe.report import Report
    from medprobe.report.records import RunRecord

Data = Union[str, Path, "Dataset", None]
_E, _P, _F = ExtractSettings(), ProbeSettings(), FinetuneSettings()

__all__ = ["CacheInfo", "FeatureSet", "extract", "features", "finetune", "load_results", "probe", "report",
           "splits"]


def load(data: Data = None, *, image_column: str | None = None, label_column: str | None = None) -> Dataset:
    """The dataset `data` names, as the CLI's DATA argument reads it (a Dataset is returned as is)."""
    from medprobe.data import load_dataset, resolve_data_argument
    from medprobe.data.samples import Dataset

    if isinstance(data, Dataset):
        return data
    return load_dataset(resolve_data_argument(data), image_column=image_column, label_column=label_column)


def _cache_dir(value: str | Path | None) -> Path:
    from medprobe.locations import default_cache_dir

    return Path(value).expanduser() if value else default_cache_dir()


def _names(value: str | Sequence[str] | None) -> list[str]:
    """A name, names, or comma-separated names (as --clf takes them)."""
    items = [value] if isinstance(value, str) else list(value or [])
    return [name.strip() for item in items for name in str(item).split(",") if name.strip()]


def _class_order(classes: str | Sequence[str]) -> list[str]:
    """--classes: "II,III,IV" or a list."""
    return [c.strip() for c in classes.split(",")] if isinstance(classes, str) else [str(c) for c in classes]


def parse_shots(shots: str | Sequence[int | str] | None) -> tuple[int | str, ...]:
    """Label budgets per class: "1,4,16,all" or [1, 4, 16, "all"]."""
    if not shots:
        return ()
    text = shots if isinstance(shots, str) else ",".join(str(s) for s in shots)
    try:
        parsed = tuple(s.strip() if s.strip() == "all" else int(s) for s in text.split(",") if s.strip())
    except ValueError as exc:
        raise MedprobeError(f"--shots {text!r}: give counts per class and/or all, e.g. 1,4,16,all") from exc
    if any(s != "all" and s < 1 for s in parsed):
        raise MedprobeError(f"--shots {text!r}: counts must be at least 1")
    return parsed


def extract(data: Data = None, *, models: str | Sequence[str], cache_dir: str | Path | None = None,
            device: str = _E.device, precision: str = _E.precision, batch_size: int = _E.batch_size,
            workers: int | None = _E.workers, image_size: int | None = _E.image_size,
            revision: str | None = _E.revision, skip_bad: bool = _E.skip_bad, decode: str = _E.decode,
            image_column: str | None = None, label_column: str | None = None,
            progress: bool = True) -> list[CacheInfo]:
    """Embed every image of `data` once with each backbone of `models` into the HDF5 feature cache under
    `cache_dir` (default: $MEDPROBE_CACHE or ~/.cache/medprobe), as `medprobe extract`. Resumable and
    incremental: only new or changed images are embedded. Needs torch, except to find that every
    cache is already complete and fresh.

    device: auto | cpu | cuda | cuda:i. precision: auto | fp32 | bf16 | fp16. workers: decoding processes
    (default: CPU cores - 1, at most 8). image_size: override the input size. revision: pin a hub revision.
    skip_bad: leave out unreadable images (recorded in the cache) instead of raising. decode: cpu | gpu.

    Returns one CacheInfo per backbone: its cache file (`path`), images extracted, reused and changed, and
    the throughput. Each image is decoded once for all the backbones that need it. Several GPUs (--gpus)
    are the CLI's: it launches torchrun."""
    from medprobe.extract.plan import up_to_date_reports

    names = [models] if isinstance(models, str) else list(models)
    if not names:
        raise MedprobeError("--model names no backbone; see `medprobe models`")
    dataset = load(data, image_column=image_column, label_column=label_column)
    settings = ExtractSettings(device=device, precision=precision, batch_size=batch_size, workers=workers,
                               image_size=image_size, revision=revision, skip_bad=skip_bad, decode=decode)
    cache = _cache_dir(cache_dir)
    answered = up_to_date_reports(dataset, names, cache, settings)
    if answered is not None:  # nothing to do: decided without importing torch
        return answered
    try:
        from medprobe.extract.runner import extract_models
    except ImportError as exc:
        needed = exc.name or "torch"
        raise MedprobeError(f"{', '.join(names)}: images to embed (or a cache to check), which needs {needed}; "
                            "install it (pip install torch torchvision) or extract on a machine that has it") from exc
    return extract_models(dataset, names, cache, settings, show_progress=progress)


@dataclass
class FeatureSet:
    """One backbone's cached features of a dataset, in the dataset's sample order.

    `X` (samples x features, float32) holds the pools in `pools` order, concatenated, as the probes read
    them; `labels`, `groups` (patients) and `split` are per sample (None where absent); `classes` is the
    class order; `provenance` the cache's attributes (backbone, weights, preprocessing, precision, device,
    timings); `skipped` the samples extraction left out as unreadable (id -> reason), which are not in X.
    """

    ids: list[str]
    X: np.ndarray = field(repr=False)
    labels: list[str | None] = field(repr=False)
    groups: list[str | None] = field(repr=False)
    split: list[str | None] = field(repr=False)
    provenance: dict = field(repr=False)
    model: str = ""
    pools: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    cache: Path | None = None
    skipped: dict[str, str] = field(default_factory=dict, repr=False)
    dataset: Dataset | None = field(default=None, repr=False)  # the samples behind the rows

    @property
    def y(self) -> np.ndarray:
        """Each sample's class index into `classes` (raises MedprobeError when the data has no labels)."""
        if self.dataset is None:
            raise MedprobeError("this FeatureSet has no dataset; load it with medprobe.features()")
        return self.dataset.targets()


def features(data: Data = None, *, model: str, pool: str = _P.pool, cache_dir: str | Path | None = None,
             classes: str | Sequence[str] | None = None, image_column: str | None = None,
             label_column: str | None = None) -> FeatureSet:
    """The cached features of `model` for `data` as numpy, exactly what `medprobe probe` reads: the newest
    fresh cache (a stale or missing one raises MedprobeError naming the extract command), the pools of
    `pool` (auto: cls+mean for ViTs, gap for CNNs; or cls, mean, cls+mean, cls4, gap). Never imports torch.
    `classes`: the class order (as --classes), e.g. "II,III,IV"."""
    from medprobe.data.samples import NO_LABEL
    from medprobe.probe.features import feature_stream, find_cache, skipped_in

    dataset = load(data, image_column=image_column, label_column=label_column)
    ref = find_cache(dataset, model, _cache_dir(cache_dir))
    skipped = skipped_in(ref.attrs, dataset)
    if skipped:  # as the probes do: unreadable images were never embedded
        dataset = dataset.without(set(skipped))
    if classes:
        dataset = dataset.with_class_order(_class_order(classes))
    stream, sources = feature_stream([dataset], [[ref]], pool, dataset.ids)
    samples = dataset.samples
    return FeatureSet(ids=dataset.ids, X=stream.matrix(), labels=[s.label if s.label != NO_LABEL else None
                                                                  for s in samples],
                      groups=[s.group for s in samples], split=[s.split for s in samples], provenance=dict(ref.attrs),
                      model=ref.model, pools=tuple(sources[0]["pools"]), classes=tuple(dataset.classes),
                      cache=ref.path, skipped=skipped, dataset=dataset)


def splits(data: Data | FeatureSet = None, *, folds: int = _P.folds, seed: int = _P.seed,
           image_column: str | None = None, label_column: str | None = None) -> SplitPlan:
    """medprobe's splits, from the one split function probe and finetune use: the same data, folds and seed
    give the same test samples. A `split` column is used as given; otherwise stratified k-fold, grouped by
    patient when the data has groups, with validation carved from each fold's training part.

    Returns a SplitPlan: `folds`, each with `train`, `val` and `test` positions into the samples (for a
    FeatureSet: into its rows, so `fs.X[fold.test]` are that fold's test features), and `protocol`."""
    from medprobe.data.splits import dataset_splits

    dataset = data.dataset if isinstance(data, FeatureSet) else load(data, image_column=image_column,
                                                                       label_column=label_column)
    return dataset_splits(dataset, folds=folds, seed=seed)


def _run_records(records: list[dict]) -> list[RunRecord]:
    from medprobe.report.records import RunRecord

    return [RunRecord(Path(record["record_path"]), record) for record in records]


def probe(data: Data = None, *, models: str | Sequence[str] | None = None,
          clf: str | Sequence[str] = _P.classifiers, pool: str = _P.pool, folds: int = _P.folds,
          seed: int = _P.seed, bootstrap: int = _P.bootstrap, n_jobs: int = _P.n_jobs,
          out: str | Path = RESULTS_DIR, cache_dir: str | Path | None = None, ordinal: bool = _P.ordinal,
          classes: str | Sequence[str] | None = None, shots: str | Sequence[int | str] | None = _P.shots,
          repeats: int = _P.repeats, fuse: bool = _P.fuse, with_data: Sequence[str | Path | Dataset] = (),
          save_model: bool = _P.save_model, coarse_to_fine: bool = _P.coarse_to_fine, backend: str = _P.backend,
          scheduler: str | None = _P.scheduler, out_of_core: bool = _P.out_of_core,
          memory_fraction: float = _P.memory_fraction, calibrate: str | None = _P.calibrate,
          test: Data = None, subgroups: str | Sequence[str] = _P.subgroups, subgroup_min: int = _P.subgroup_min,
          image_column: str | None = None, label_column: str | None = None,
          progress: bool = True) -> list[RunRecord]:
    """Logistic regression, SVM and kNN probes on the cached features of `models` (default: every backbone
    with a fresh cache), as `medprobe probe`: hyperparameters chosen on validation data, refit on
    train+val, test predictions pooled over the folds, bootstrap CIs. Never imports torch.

    clf: logreg | svm | knn | all, one or several (a list or "logreg,svm"). pool: auto | cls | mean |
    cls+mean | cls4 | gap. folds: k of the stratified (patient-grouped) k-fold when the data has no split
    column. bootstrap: resamples of the 95% CIs (0: none). n_jobs: folds in parallel processes (-1: one per
    core). out: the results folder. ordinal: ordered labels (adds quadratic kappa). classes: class order.
    shots: label-efficiency budgets per class ("1,4,16,all"), each drawn `repeats` times. fuse: one probe on
    the concatenated features of all `models`. with_data: other datasets with the same sample ids whose
    features are concatenated. save_model: also save the fitted probes (joblib). coarse_to_fine: logreg on
    ~24 of its 45 C values. backend: local | dask | ray, with `scheduler` its address. out_of_core /
    memory_fraction: stream features from the cache (logreg-sgd) always / above that share of free memory.
    calibrate: "temperature" fits a temperature on each fold's validation predictions (runs with
    probabilities) and records the calibrated ECE/Brier/NLL beside the raw ones. test: an external cohort
    (another site; its features extracted like `data`'s): each backbone x classifier is also tuned and refit on
    all of `data` and scored on it, in a second record with protocol "external". subgroups: manifest columns
    ("sex,site"): every metric per value, with the worst group and the largest gap; groups of fewer than
    `subgroup_min` test samples are listed as too small.

    Returns one RunRecord per backbone x classifier (x budget, + external): `.data` is the record saved at `.path`
    (JSON, beside its predictions CSV); `.value("accuracy")` gives (value, [ci low, ci high])."""
    from medprobe.data import Dataset, load_dataset
    from medprobe.probe.classifiers import CLASSIFIERS
    from medprobe.probe.runner import probe as run_probe

    methods = _names(clf)
    methods = list(CLASSIFIERS) if "all" in methods else methods
    settings = ProbeSettings(classifiers=tuple(dict.fromkeys(methods)), pool=pool, folds=folds, seed=seed,
                             bootstrap=bootstrap, n_jobs=n_jobs, ordinal=ordinal, shots=parse_shots(shots),
                             repeats=repeats, fuse=fuse, coarse_to_fine=coarse_to_fine, save_model=save_model,
                             backend=backend, scheduler=scheduler, out_of_core=out_of_core,
                             memory_fraction=memory_fraction, calibrate=calibrate,
                             subgroups=tuple(_names(subgroups)), subgroup_min=subgroup_min)
    dataset = load(data, image_column=image_column, label_column=label_column)
    dataset.require_labels()
    if classes:
        dataset = dataset.with_class_order(_class_order(classes))
    others = [other if isinstance(other, Dataset) else load_dataset(Path(other)) for other in with_data]
    names = [models] if isinstance(models, str) else list(models or [])
    records = run_probe(dataset=dataset, models=names or None, cache_dir=_cache_dir(cache_dir),
                        out_dir=Path(out), settings=settings, with_datasets=others,
                        tested=None if test is None else load(test, image_column=image_column,
                                                              label_column=label_column),
                        show_progress=progress)
    return _run_records(records)


def finetune(data: Data = None, *, model: str, unfreeze: str = _F.unfreeze, epochs: int = _F.epochs,
             lr: float = _F.lr, head_lr: float = _F.head_lr, weight_decay: float = _F.weight_decay,
             layer_decay: float | None = _F.layer_decay, warmup_epochs: float = _F.warmup_epochs,
             patience: int = _F.patience, class_weights: bool = _F.class_weights, batch_size: int = _F.batch_size,
             precision: str = _F.precision, device: str = _F.device, workers: int | None = _F.workers,
             image_size: int | None = _F.image_size, seed: int = _F.seed, folds: int = _F.folds,
             fold: int | None = _F.fold, bootstrap: int = _F.bootstrap, ordinal: bool = _F.ordinal,
             resume: bool = _F.resume, calibrate: str | None = _F.calibrate,
             subgroups: str | Sequence[str] = _F.subgroups, subgroup_min: int = _F.subgroup_min,
             test: Data = None, out: str | Path = RESULTS_DIR,
             image_column: str | None = None, label_column: str | None = None, progress: bool = True,
             verbose: bool = True) -> RunRecord:
    """Fine-tune `model` (frozen, partly or fully unfrozen) with a linear head on exactly the probes'
    splits, as `medprobe finetune`; the same kind of run record. Needs torch.

    unfreeze: none (the head only) | all | last-N blocks. lr / head_lr: backbone and head learning rates;
    layer_decay: layer-wise lr decay (e.g. 0.75); warm-up then cosine decay; early stopping after `patience`
    epochs without a better validation score. fold: one fold (0-based) instead of all. resume: continue an
    interrupted run from its last checkpoint. calibrate: "temperature" fits a temperature on each fold's
    validation predictions of the best checkpoint (calibrated ECE/Brier/NLL beside the raw ones). subgroups /
    subgroup_min: as for probe(). test: an external cohort: also fine-tune once on all of `data` (checkpoint
    chosen on a validation part carved from it) and score the cohort. verbose: a progress bar and a line per
    epoch (else one bar).

    Returns the RunRecord (`.data["cost"]` holds parameters, throughput and device); with `test`, a list of
    two: the k-fold record, then the external one."""
    from medprobe.finetune.runner import finetune as run_finetune

    settings = FinetuneSettings(
        unfreeze=unfreeze, epochs=epochs, lr=lr, head_lr=head_lr, weight_decay=weight_decay, layer_decay=layer_decay,
        warmup_epochs=warmup_epochs, patience=patience, class_weights=class_weights, batch_size=batch_size,
        precision=precision, device=device, workers=workers, image_size=image_size, seed=seed, folds=folds,
        fold=fold, bootstrap=bootstrap, ordinal=ordinal, resume=resume, calibrate=calibrate,
        subgroups=tuple(_names(subgroups)), subgroup_min=subgroup_min)
    dataset = load(data, image_column=image_column, label_column=label_column)
    dataset.require_labels()
    tested = None if test is None else load(test, image_column=image_column, label_column=label_column)
    records = _run_records(run_finetune(dataset=dataset, model=model, settings=settings, out_dir=Path(out),
                                        show_progress=progress, verbose=verbose, tested=tested))
    return records if tested is not None else records[0]


def _report_default(name: str):
    """A default of build_report (the report's own, so they are written in one place)."""
    from medprobe.report import build_report

    return inspect.signature(build_report).parameters[name].default


def report(results: str | Path | Sequence[str | Path] = RESULTS_DIR, *, out: str | Path, metric: str | None = None,
           latex: bool = False, bootstrap: int | None = None, seed: int | None = None,
           embedding: str | None = None) -> Report:
    """Tables (backbone x method, 95% CIs, paired test against each column's best), a leaderboard and
    figures from every run record under `results`, written to `out` (report.html, report.md, summary.csv,
    comparisons.csv, figures/; report.tex with `latex`), as `medprobe report`. Never imports torch.

    metric: accuracy (default) | balanced_accuracy | auroc | f1_weighted | f1_macro | ... bootstrap: shared
    resamples of the paired test (default 2000); seed: its seed (default 0). embedding: the 2-D projection
    of the embedding maps, pca (default) | tsne | umap. Unset options take the report's own defaults.

    Returns the Report: its file paths (`html`, `summary_csv`, ...) and tables."""
    from medprobe.report import build_report

    folders = [results] if isinstance(results, (str, Path)) else list(results) or [RESULTS_DIR]
    options = {"metric": metric, "replicates": bootstrap, "seed": seed, "embedding": embedding}
    return build_report(results_dirs=[Path(f) for f in folders], out_dir=Path(out), latex=latex,
                        **{k: v for k, v in options.items() if v is not None})


def load_results(folder: str | Path | Sequence[str | Path] = RESULTS_DIR, *, metric: str | None = None,
                 bootstrap: int | None = None, seed: int | None = None) -> pandas.DataFrame:
    """Every run record under `folder` (recursively) as a pandas DataFrame: one row per record with the
    columns of the report's summary.csv (dataset, model, method, kind, protocol, pool, seed, each metric
    with `_ci_low` / `_ci_high`, patient-level metrics, cost, p_vs_best_<metric>, record, predictions), plus
    `run_record`: the RunRecord itself (`.data`, `.read_predictions()`). `metric`, `bootstrap` and `seed`
    are those of the paired test behind p_vs_best, as in report(). Unusable records are left out and listed
    in `df.attrs["problems"]`. Never imports torch; needs pandas."""
    try:
        import pandas
    except ImportError as exc:
        raise MedprobeError("load_results needs pandas; pip install pandas (or medprobe[notebook])") from exc
    from medprobe import __version__
    from medprobe.report import render
    from medprobe.report.records import REPORT_METRICS, load_records
    from medprobe.report.stats import PairedBootstrap
    from medprobe.report.tables import TableBuilder

    metric = metric or _report_default("metric")
    replicates = _report_default("replicates") if bootstrap is None else bootstrap
    seed = _report_default("seed") if seed is None else seed
    if metric not in REPORT_METRICS:  # the report's own checks and messages
        raise MedprobeError(f"--metric {metric!r} is not one of {', '.join(REPORT_METRICS)}")
    if replicates < 1:
        raise MedprobeError(f"--bootstrap {replicates}: the paired test needs at least 1 resample (e.g. 2000)")
    folders = [folder] if isinstance(folder, (str, Path)) else list(folder)
    loaded = load_records([Path(f) for f in folders], metric)
    problems = list(loaded.problems)
    builder = TableBuilder(metric, PairedBootstrap(metric, replicates, seed), problems)
    tables = builder.build(loaded.records)
    content = render.ReportContent(metric=metric, sources=[Path(f) for f in folders], records=loaded.records,
                                   tables=tables, leaderboard=None, figures=[], sections=[], problems=problems,
                                   notes=[],
                                   replicates=replicates, seed=seed, created_at="", version=__version__)
    frame = pandas.read_csv(io.StringIO(render.render_summary_csv(content)), keep_default_na=True)
    frame["run_record"] = loaded.records  # the CSV's rows follow the records' order
    frame.attrs["problems"] = [f"{p.path}: {p.reason}" for p in problems]
    return frame

"""The command line: parses arguments and calls the stages' public functions, nothing more.

A MedprobeError (bad input) becomes one `error: ...` line on stderr and exit code 2; `--debug`, anywhere
on the command line, shows the traceback instead.
"""

from __future__ import annotations

import functools
import signal
import sys
from collections import Counter
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from medprobe.errors import Interrupted, MedprobeError
from medprobe.extract.settings import ExtractSettings
from medprobe.finetune.settings import FinetuneSettings
from medprobe.locations import RESULTS_DIR
from medprobe.probe.settings import ProbeSettings
from medprobe.runtime.workers import debugging, quiet_background_errors, set_debug

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Which pretrained backbone, frozen or fine-tuned, classifies your medical images best?")
datasets_app = typer.Typer(no_args_is_help=True, help="Look at a dataset before spending compute on it.")
cache_app = typer.Typer(no_args_is_help=True, help="List, inspect, verify and remove feature caches.")
app.add_typer(datasets_app, name="datasets")
app.add_typer(cache_app, name="cache")
console = Console(highlight=False, soft_wrap=True)
if not console.is_terminal:  # piped output keeps whole table rows instead of wrapping at 80 columns
    console = Console(highlight=False, soft_wrap=True, width=200)

DATA_HELP = ("A class-folder tree, an image folder, a CSV manifest (path[,label,group,split]), a .toml spec, a "
             "MedMNIST .npz (or medmnist:NAME) or hf-dataset:PATH; default: ./medprobe.toml")
CacheDirOption = typer.Option(None, "--cache-dir", help="Cache folder [default: $MEDPROBE_CACHE or ~/.cache/medprobe]")
ImageColumnOption = typer.Option(None, "--image-column", help="hf-dataset:PATH: the image column [default: image]")
LabelColumnOption = typer.Option(None, "--label-column", help="hf-dataset:PATH: the label column [default: label, "
                                 "none: no labels]")
SubgroupsOption = typer.Option(None, "--subgroups", help="Manifest columns, e.g. sex,site: every metric per value "
                               "with CIs, the worst group and the largest gap")
SUBGROUP_MIN_HELP = "--subgroups: groups with fewer test samples are reported as too small, not scored"


def _cache_dir(value: Path | None) -> Path:
    from medprobe.locations import default_cache_dir

    return value or default_cache_dir()


def _dataset(data: Path | None, image_column: str | None = None, label_column: str | None = None):
    from medprobe.api import load

    return load(data, image_column=image_column, label_column=label_column)


@app.command("models")
def models_command(
    names: list[str] = typer.Argument(None, help="Models to --check (registry names, hf:..., a folder)",
                                      show_default=False),
    check: bool = typer.Option(False, "--check", help="Say per model whether it is cached, reachable, gated, and "
                               "its licence (metadata only, no weights are downloaded)"),
) -> None:
    """List the backbone families and registered backbones (plus: hf:ORG/NAME, timm:NAME,
    openclip:hf-hub:ORG/NAME, or a local model folder)."""
    from medprobe.models.families import FAMILIES
    from medprobe.models.registry import REGISTRY, resolve_model

    if check:
        from medprobe.models.hub import check_model, hub_reachable

        specs = [resolve_model(name) for name in names] if names else list(REGISTRY.values())
        reachable = hub_reachable(timeout=5.0)
        table = Table("name", "cached", "hub access", "licence", "gated")
        for result in (check_model(spec, reachable=reachable) for spec in specs):
            table.add_row(result.name, "yes" if result.cached else "no", result.access, result.licence or "?",
                          "yes" if result.gated else "no")
        console.print(table)
        return
    if names:
        raise MedprobeError("model names go with --check (e.g. medprobe models --check uni); drop them to list all")
    families = Table("family", "backend", "pools", "standard embedding", "what")
    for family in FAMILIES.values():
        families.add_row(family.name, family.backend, ",".join(family.pools), "+".join(family.standard),
                         family.summary)
    console.print(families)
    table = Table("name", "family", "hub id / source", "licence", "gated", "params (M)", "input", "dim", "standard")
    for spec in REGISTRY.values():
        standard = spec.standard or tuple(p for p in FAMILIES[spec.family].standard if p in (spec.pools or ()))
        table.add_row(spec.name, spec.family, spec.source, spec.licence, "yes" if spec.gated else "no",
                      f"{spec.params_m:g}", str(spec.input_size), str(spec.embed_dim),
                      "+".join(standard or (spec.pools or ())[:1]))
    console.print(table)
    console.print("Also: hf:ORG/NAME (transformers), timm:NAME, openclip:hf-hub:ORG/NAME, or a folder saved by "
                  "save_pretrained / save_for_hf / open_clip. Gated models: accept the terms on the model page, "
                  "then `hf auth login`; `medprobe models --check NAME` tells what is reachable.")


@app.command("extract")
def extract_command(
    data: Path = typer.Argument(None, help=DATA_HELP, show_default=False),
    model: list[str] = typer.Option(..., "--model", "-m", help="Backbone name (repeatable); see `medprobe models`"),
    cache_dir: Path = CacheDirOption,
    device: str = typer.Option(ExtractSettings.device, help="auto | cpu | cuda | cuda:i"),
    precision: str = typer.Option(ExtractSettings.precision, help="auto | fp32 | bf16 | fp16 (auto: bf16 where "
                                  "supported)"),
    batch_size: int = typer.Option(ExtractSettings.batch_size, "--batch-size", min=1),
    workers: int = typer.Option(None, help="Decoding worker processes [default: CPU cores - 1, at most 8]"),
    image_size: int = typer.Option(None, "--image-size", help="Override the input size (ViTs interpolate)"),
    revision: str = typer.Option(None, help="Pin a hub revision (branch, tag or commit)"),
    skip_bad: bool = typer.Option(ExtractSettings.skip_bad, "--skip-bad", help="Leave out unreadable images "
                                  "(recorded in the cache) instead of stopping"),
    gpus: int = typer.Option(None, "--gpus", min=1, help="Processes, one per GPU, launched with torchrun (with "
                             "--device cpu: CPU processes)"),
    decode: str = typer.Option(ExtractSettings.decode, "--decode", help="cpu | gpu: decode and resize JPEGs on the "
                               "GPU"),
    image_column: str = ImageColumnOption,
    label_column: str = LabelColumnOption,
) -> None:
    """Embed every image once with each backbone into the HDF5 feature cache (resumable, incremental); with
    several backbones each image is decoded once for all of them."""
    from medprobe.api import extract
    from medprobe.runtime.world import is_distributed, is_leader

    settings = ExtractSettings(device=device, precision=precision, batch_size=batch_size, workers=workers,
                               image_size=image_size, revision=revision, skip_bad=skip_bad, decode=decode)
    dataset = _dataset(data, image_column, label_column)
    if gpus and gpus > 1 and not is_distributed():  # one torchrun process per GPU
        from medprobe.extract.plan import up_to_date_reports

        answered = up_to_date_reports(dataset, list(model), _cache_dir(cache_dir), settings)
        if answered is not None:  # nothing to do: no processes to start
            print_extract_reports(answered)
            return
        from medprobe.extract import distributed

        job = distributed.ShardedJob(data=str(data) if data else None, models=list(model),
                                     cache_dir=str(_cache_dir(cache_dir)), settings=settings,
                                     image_column=image_column, label_column=label_column)
        print_extract_reports(distributed.launch(gpus, job))
        return
    if is_distributed():  # started by torchrun itself: this process is one rank
        from medprobe.extract import distributed

        reports = distributed.extract_sharded(dataset, list(model), _cache_dir(cache_dir), settings)
        if is_leader():  # rank 0 reports for all
            print_extract_reports(reports)
        return
    print_extract_reports(extract(dataset, models=list(model), cache_dir=_cache_dir(cache_dir), **vars(settings)))


@app.command("extract-rank", hidden=True)
def extract_rank_command(job_file: Path = typer.Argument(..., help="The job `medprobe extract --gpus` wrote")) -> None:
    """One torchrun process of `medprobe extract --gpus N` (started by it; rank 0 writes the reports)."""
    from medprobe.extract import distributed

    distributed.run_job_file(job_file)


def print_extract_reports(reports) -> None:
    for report in reports:
        for sample_id, why in list(report.skipped.items())[:5]:
            console.print(f"[yellow]skipped:[/] {sample_id}: {why['reason']}")
        if report.skipped:
            console.print(f"{len(report.skipped)} unreadable image(s) skipped and recorded in the cache")
        if report.up_to_date:
            console.print(f"{report.model}: up to date ({report.reused} images) {report.path}")
        else:
            rate = f", {report.images_per_second:.1f} img/s" if report.images_per_second else ""
            changed = f", {report.changed} changed" if report.changed else ""
            console.print(f"{report.model}: extracted {report.extracted}, reused {report.reused}{changed}{rate} "
                          f"{report.path}")


@app.command("probe")
def probe_command(
    data: Path = typer.Argument(None, help=DATA_HELP, show_default=False),
    model: list[str] = typer.Option(None, "--model", "-m", help="Backbone(s) to probe [default: every cached one]"),
    clf: list[str] = typer.Option(list(ProbeSettings.classifiers), "--clf", help="logreg | svm | knn | all "
                                  "(repeatable or comma-separated)"),
    pool: str = typer.Option(ProbeSettings.pool, help="auto | cls | mean | cls+mean | cls4 | gap (auto: cls+mean "
                             "for ViTs, gap)"),
    folds: int = typer.Option(ProbeSettings.folds, help="k for stratified (patient-grouped) k-fold, when DATA has "
                              "no split column"),
    seed: int = typer.Option(ProbeSettings.seed, help="Seed for splits, classifiers and the bootstrap"),
    bootstrap: int = typer.Option(ProbeSettings.bootstrap, help="Bootstrap resamples for the 95% CIs (0: none)"),
    n_jobs: int = typer.Option(ProbeSettings.n_jobs, "--n-jobs", help="Folds in parallel processes (-1: one per "
                               "core)"),
    out: Path = typer.Option(RESULTS_DIR, "--out", help="Results folder"),
    cache_dir: Path = CacheDirOption,
    ordinal: bool = typer.Option(ProbeSettings.ordinal, "--ordinal", help="Labels are ordered (e.g. grades): adds "
                                 "quadratic kappa"),
    classes: str = typer.Option(None, "--classes", help="Class order, e.g. II,III,IV [default: natural sort]"),
    shots: str = typer.Option(None, "--shots", help="Label-efficiency curve, e.g. 1,4,16,all (per class)"),
    repeats: int = typer.Option(ProbeSettings.repeats, "--repeats", help="Draws per --shots budget"),
    fuse: bool = typer.Option(ProbeSettings.fuse, "--fuse", help="One probe on the concatenated features of all "
                              "--model"),
    with_data: list[Path] = typer.Option(None, "--with", help="Another dataset with the same sample ids (e.g. a "
                                         "second modality) whose features are concatenated"),
    save_model: bool = typer.Option(ProbeSettings.save_model, "--save-model", help="Also save the fitted probes "
                                    "(joblib)"),
    coarse_to_fine: bool = typer.Option(ProbeSettings.coarse_to_fine, "--coarse-to-fine",
                                        help="logreg: ~24 of the 45 C values around the best peaks (faster)"),
    backend: str = typer.Option(ProbeSettings.backend, "--backend", help="local | dask | ray: where the folds and "
                                "grid run"),
    scheduler: str = typer.Option(ProbeSettings.scheduler, "--scheduler", help="Dask scheduler (tcp://host:8786) or "
                                  "Ray cluster address"),
    out_of_core: bool = typer.Option(ProbeSettings.out_of_core, "--out-of-core", help="Stream features from the "
                                     "cache (logreg-sgd), for caches larger than memory"),
    memory_fraction: float = typer.Option(ProbeSettings.memory_fraction, "--memory-fraction", help="Stream "
                                          "automatically when the feature matrix exceeds this share of available "
                                          "memory"),
    calibrate: str = typer.Option(ProbeSettings.calibrate, "--calibrate", help="temperature: fit a temperature "
                                  "on each fold's validation predictions; records calibrated ECE/Brier/NLL too"),
    test: Path = typer.Option(None, "--test", help="An external test cohort (another site), extracted like DATA: "
                              "also tune and refit on all of DATA and score it (protocol external)"),
    subgroups: str = SubgroupsOption,
    subgroup_min: int = typer.Option(ProbeSettings.subgroup_min, "--subgroup-min", help=SUBGROUP_MIN_HELP),
    image_column: str = ImageColumnOption,
    label_column: str = LabelColumnOption,
) -> None:
    """Logistic regression, SVM and kNN probes on cached features, with honest splits and bootstrap CIs."""
    from medprobe.api import probe
    from medprobe.results.table import records_table

    records = probe(data, models=list(model) if model else None, clf=clf, pool=pool, folds=folds, seed=seed,
                    bootstrap=bootstrap, n_jobs=n_jobs, out=out, cache_dir=_cache_dir(cache_dir), ordinal=ordinal,
                    classes=classes, shots=shots, repeats=repeats, fuse=fuse, with_data=list(with_data or []),
                    save_model=save_model, coarse_to_fine=coarse_to_fine, backend=backend, scheduler=scheduler,
                    out_of_core=out_of_core, memory_fraction=memory_fraction, calibrate=calibrate,
                    test=test, subgroups=subgroups or (), subgroup_min=subgroup_min,
                    image_column=image_column, label_column=label_column)
    console.print(records_table([record.data for record in records]))
    console.print(f"records: {records[0].path.parent}")


@app.command("finetune")
def finetune_command(
    data: Path = typer.Argument(None, help=DATA_HELP, show_default=False),
    model: str = typer.Option(..., "--model", "-m", help="Backbone name; see `medprobe models`"),
    unfreeze: str = typer.Option(FinetuneSettings.unfreeze, help="none (train the head only) | all | last-N (last N "
                                 "blocks)"),
    epochs: int = typer.Option(FinetuneSettings.epochs, min=1),
    lr: float = typer.Option(FinetuneSettings.lr, help="Backbone learning rate"),
    head_lr: float = typer.Option(FinetuneSettings.head_lr, "--head-lr", help="Linear head learning rate"),
    weight_decay: float = typer.Option(FinetuneSettings.weight_decay, "--weight-decay"),
    layer_decay: float = typer.Option(FinetuneSettings.layer_decay, "--layer-decay", help="Layer-wise lr decay, e.g. "
                                      "0.75 (off by default)"),
    warmup_epochs: float = typer.Option(FinetuneSettings.warmup_epochs, "--warmup-epochs", help="Linear warm-up, then "
                                        "cosine decay"),
    patience: int = typer.Option(FinetuneSettings.patience, help="Early stopping: epochs without a better validation "
                                 "score"),
    class_weights: bool = typer.Option(FinetuneSettings.class_weights, "--class-weights", help="Weight the loss by "
                                       "inverse class frequency"),
    batch_size: int = typer.Option(FinetuneSettings.batch_size, "--batch-size", min=1),
    precision: str = typer.Option(FinetuneSettings.precision, help="auto | fp32 | bf16 | fp16"),
    device: str = typer.Option(FinetuneSettings.device, help="auto | cpu | cuda | cuda:i"),
    workers: int = typer.Option(FinetuneSettings.workers, help="Data-loading worker processes"),
    image_size: int = typer.Option(FinetuneSettings.image_size, "--image-size"),
    seed: int = typer.Option(FinetuneSettings.seed),
    folds: int = typer.Option(FinetuneSettings.folds, help="k of the (patient-grouped) k-fold, as in probe"),
    fold: str = typer.Option("all", help="all | i (one fold, 0-based)"),
    bootstrap: int = typer.Option(FinetuneSettings.bootstrap),
    ordinal: bool = typer.Option(FinetuneSettings.ordinal, "--ordinal"),
    out: Path = typer.Option(RESULTS_DIR, "--out", help="Results folder"),
    resume: bool = typer.Option(FinetuneSettings.resume, "--resume", help="Continue an interrupted run from its last "
                                "checkpoint"),
    calibrate: str = typer.Option(FinetuneSettings.calibrate, "--calibrate", help="temperature: fit a temperature on "
                                  "each fold's validation predictions; records calibrated ECE/Brier/NLL too"),
    test: Path = typer.Option(None, "--test", help="An external test cohort (another site): also fine-tune once on "
                              "all of DATA and score it (protocol external)"),
    subgroups: str = SubgroupsOption,
    subgroup_min: int = typer.Option(FinetuneSettings.subgroup_min, "--subgroup-min", help=SUBGROUP_MIN_HELP),
    image_column: str = ImageColumnOption,
    label_column: str = LabelColumnOption,
) -> None:
    """Fine-tune a backbone (frozen, partly or fully unfrozen) on the probes' splits; same run records."""
    from medprobe.api import finetune
    from medprobe.results.table import records_table

    if fold != "all" and not fold.isdigit():
        raise MedprobeError(f"--fold {fold!r}: use all or a fold number such as 0")
    result = finetune(data, model=model, unfreeze=unfreeze, epochs=epochs, lr=lr, head_lr=head_lr,
                      weight_decay=weight_decay, layer_decay=layer_decay, warmup_epochs=warmup_epochs,
                      patience=patience, class_weights=class_weights, batch_size=batch_size, precision=precision,
                      device=device, workers=workers, image_size=image_size, seed=seed, folds=folds,
                      fold=None if fold == "all" else int(fold), bootstrap=bootstrap, ordinal=ordinal, resume=resume,
                      calibrate=calibrate, subgroups=subgroups or (), subgroup_min=subgroup_min, test=test, out=out,
                      image_column=image_column, label_column=label_column)
    records = [r.data for r in (result if isinstance(result, list) else [result])]
    console.print(records_table(records))
    cost = records[0]["cost"]
    console.print(f"trainable {cost['trainable_parameters']:,} of {cost['total_parameters']:,} parameters, "
                  f"{cost['train_images_per_second']:.1f} train img/s on {cost['device_name']}; "
                  f"record{'s' if len(records) > 1 else ''}: {', '.join(r['record_path'] for r in records)}")


@app.command("explain")
def explain_command(
    data: Path = typer.Argument(None, help=DATA_HELP, show_default=False),
    model: str = typer.Option(..., "--model", "-m", help="The backbone the record was run with"),
    record: Path = typer.Option(..., "--record", help="A logreg or linear-SVM probe record (.json) saved with "
                                "`medprobe probe --save-model`"),
    count: int = typer.Option(None, "--count", min=1, help="How many correct and how many wrong test images "
                              "(default 4)", show_default=False),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:i"),
) -> None:
    """Where a run's evidence lies: its probe applied to every patch token (ViT) or feature-map cell (CNN,
    a class activation map) of a few correct and wrong test images; overlays beside the record."""
    from medprobe.explain import explain

    result = explain(dataset=_dataset(data), model=model, record_path=record, device=device,
                     **({"count": count} if count else {}))
    correct = sum(e.correct for e in result.explanations)
    console.print(f"{len(result.explanations)} overlays ({correct} correct, {len(result.explanations) - correct} "
                  f"wrong; map over {result.kind}): {result.folder}")


@app.command("report")
def report_command(
    results: list[Path] = typer.Argument(None, help="Results folders of probe/finetune [default: medprobe-results]"),
    out: Path = typer.Option(..., "--out", help="Where report.html, report.md, summary.csv and figures/ go"),
    metric: str = typer.Option("accuracy", help="accuracy | balanced_accuracy | auroc | f1_weighted | f1_macro | ..."),
    latex: bool = typer.Option(False, "--latex", help="Also write report.tex (booktabs tables)"),
    bootstrap: int = typer.Option(2000, help="Shared resamples of the paired test against each column's best"),
    seed: int = typer.Option(0, help="Seed of the paired bootstrap"),
    embedding: str = typer.Option(None, "--embedding", help="2-D projection of the embedding maps: pca (default) | "
                                  "tsne | umap (needs umap-learn)", show_default=False),
) -> None:
    """A leaderboard (backbone x dataset), tables (backbone x method, CI, paired test vs the best) and figures
    from every run record."""
    from medprobe.api import report as build_report
    from medprobe.report.render import print_headline

    report = build_report(list(results or []) or [RESULTS_DIR], out=out, metric=metric, latex=latex,
                          bootstrap=bootstrap, seed=seed, embedding=embedding)
    print_headline(console, report.leaderboard, report.tables, report.content.sections)
    console.print(f"report: {report.html}")


@datasets_app.command("inspect")
def inspect_command(
    data: Path = typer.Argument(None, help=DATA_HELP, show_default=False),
    decode: bool = typer.Option(True, "--decode/--no-decode", help="Decode every image to find unreadable ones"),
    image_column: str = ImageColumnOption,
    label_column: str = LabelColumnOption,
) -> None:
    """Counts per class, split and group, and every unreadable file."""
    from medprobe.data.inspect import summarize
    from medprobe.progress import progress_bar

    dataset = _dataset(data, image_column, label_column)
    with progress_bar("decode", total=len(dataset.samples), enabled=decode) as advance:
        summary = summarize(dataset, decode=decode, on_progress=advance)
    labels = f"{len(summary.classes)} classes" if summary.classes else "no labels"
    console.print(f"dataset {summary.name} ({summary.source}): {summary.samples} images, {labels}, "
                  f"{summary.groups} groups")
    table = Table("split", *summary.classes, "total")
    for split, counts in summary.splits.items():
        table.add_row(split, *(str(counts.get(c, 0)) for c in summary.classes), str(sum(counts.values())))
    table.add_row("all", *(str(n) for n in summary.classes.values()), str(summary.samples))  # none: totals only
    console.print(table)
    if summary.samples_per_group:
        low, high = summary.samples_per_group
        console.print(f"images per group: {low}..{high}")
    if summary.volumes:
        counts = [v.slices for v in summary.volumes]
        console.print(f"{len(summary.volumes)} volumes, {min(counts)}..{max(counts)} slices per volume")
        geometries = Counter(v.geometry for v in summary.volumes)
        for geometry, count in geometries.most_common():
            console.print(f"  {count} x {geometry}")
        for volume in summary.volumes[:3]:
            console.print(f"  {volume.path}: {volume.slices} slices, {volume.geometry}")
    if summary.groups_in_several_splits:
        console.print(f"[yellow]warning:[/] {len(summary.groups_in_several_splits)} group(s) appear in several "
                  f"splits (leakage): {', '.join(summary.groups_in_several_splits[:5])}")
    for path, reason in summary.unreadable:
        console.print(f"[red]unreadable:[/] {path}: {reason}")
    if decode:
        console.print(f"{len(summary.unreadable)} unreadable file(s)")


@cache_app.command("ls")
def cache_ls(cache_dir: Path = CacheDirOption) -> None:
    """Every cache file under the cache folder."""
    from medprobe.cache.manage import describe
    from medprobe.cache.paths import list_cache_files

    root = _cache_dir(cache_dir)
    table = Table("dataset", "model", "done/rows", "precision", "MB", "updated", "file")
    for path in list_cache_files(root):
        item = describe(path)
        table.add_row(item.dataset, item.model, f"{item.done}/{item.rows}", item.precision, f"{item.size_mb:.1f}",
                      item.updated, str(path.relative_to(root)))
    console.print(f"cache folder: {root}")
    console.print(table)


@cache_app.command("info")
def cache_info(path: Path = typer.Argument(..., help="A cache file (see `medprobe cache ls`)")) -> None:
    """Provenance and contents of one cache file."""
    from medprobe.cache.store import read_contents

    if not path.is_file():
        raise MedprobeError(f"cache file {path} does not exist; see `medprobe cache ls`")
    contents = read_contents(path)
    table = Table("attribute", "value")
    for key, value in sorted(contents.attrs.items()):
        table.add_row(key, str(value))
    table.add_row("rows / done", f"{len(contents.ids)} / {int(contents.done.sum())}")
    table.add_row("features", ", ".join(f"{pool} ({dim})" for pool, dim in contents.dims.items()))
    console.print(table)


@cache_app.command("verify")
def cache_verify(
    paths: list[Path] = typer.Argument(None, help="Cache files [default: all under --cache-dir]"),
    cache_dir: Path = CacheDirOption,
    deep: bool = typer.Option(False, "--deep", help="Re-hash every source file, not only changed ones"),
) -> None:
    """Check structure, finite features and that each source image is unchanged. Exit 1 on problems."""
    from medprobe.cache.manage import verify
    from medprobe.cache.paths import list_cache_files

    targets = paths or list_cache_files(_cache_dir(cache_dir))
    failed = 0
    for path in targets:
        result = verify(path, deep=deep)
        state = "ok" if result.ok else "PROBLEMS"
        console.print(f"{state}: {path} ({result.done}/{result.rows} rows done)")
        for problem in result.problems:
            console.print(f"  {problem}")
        if result.stale:
            console.print(f"  {len(result.stale)} changed source file(s), e.g. {result.stale[0]}: run extract again")
        if result.missing_sources:
            console.print(f"  {len(result.missing_sources)} source file(s) gone, e.g. {result.missing_sources[0]}")
        failed += not result.ok
    if failed:
        raise typer.Exit(1)


@cache_app.command("rm")
def cache_rm(
    paths: list[Path] = typer.Argument(None, help="Cache files to remove"),
    all_files: bool = typer.Option(False, "--all", help="Remove every cache under --cache-dir"),
    cache_dir: Path = CacheDirOption,
) -> None:
    """Remove cache files."""
    from medprobe.cache.manage import remove
    from medprobe.cache.paths import list_cache_files

    if all_files == bool(paths):
        raise MedprobeError("give cache file paths or --all (not both, not neither)")
    for path in remove(list_cache_files(_cache_dir(cache_dir)) if all_files else list(paths)):
        console.print(f"removed {path}")


VerboseOption = typer.Option(False, "--verbose", help="A progress bar and a line (train loss, validation score) per "
                             "fine-tune epoch; default: one progress bar per fine-tune")


@app.command("run")
def run_command(
    experiment: Path = typer.Argument(..., help="Experiment .toml: datasets x backbones x methods (see README)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and what is already done; run nothing"),
    verbose: bool = VerboseOption,
) -> None:
    """Run a whole study grid from one file: extraction once per dataset x backbone, probes, fine-tunes and one
    report; finished steps are skipped on a rerun, so an interrupted run resumes."""
    from medprobe.run.experiment import load_experiment
    from medprobe.run.runner import Runner

    runner = Runner(load_experiment(experiment), console, verbose=verbose)
    summary = runner.run(dry_run=dry_run)
    print_run_summary(summary, dry_run=dry_run)


def print_run_summary(summary, *, dry_run: bool) -> None:
    """The plan (with --dry-run) or the outcome, then the headline tables and the report's path."""
    from medprobe.report.render import print_headline

    if dry_run:
        table = Table("step", "status")
        for step in summary.steps:
            table.add_row(step.label(summary.names), step.status)
        console.print(table)
    print_headline(console, summary.report_leaderboard, summary.report_tables, summary.report_sections)
    counts = {status: summary.count(status) for status in ("done", "ran")}
    failed = [step for step in summary.steps if step.status.startswith(("failed", "blocked"))]
    to_do = len(summary.steps) - counts["done"] - counts["ran"] - len(failed)
    console.print(f"{len(summary.steps)} steps: {counts['done']} already done, {counts['ran']} ran, "
                  f"{len(failed)} failed or blocked" + (f", {to_do} to do" if dry_run else ""))
    if summary.report_html:
        console.print(f"report: {summary.report_html}")
    if failed:
        raise MedprobeError(f"{len(failed)} step(s) failed or were blocked, first: {failed[0].label(summary.names)}: "
                            f"{failed[0].status}; fix it and run again (finished steps are skipped)")


@app.command("demo")
def demo_command(
    out_dir: Path = typer.Option(Path("medprobe-demo"), "--out", help="Where the demo writes its data, cache and "
                                 "results"),
    verbose: bool = VerboseOption,
) -> None:
    """The whole study, offline, on synthetic X-rays and brain MRI: extraction, probes, fine-tuning, report."""
    from medprobe.demo import prepare_demo
    from medprobe.run.experiment import load_experiment
    from medprobe.run.runner import Runner

    experiment = prepare_demo(out_dir, console)
    console.print(f"experiment: {experiment} (rerun it with `medprobe run {experiment}`)")
    summary = Runner(load_experiment(experiment), console, verbose=verbose).run()
    print_run_summary(summary, dry_run=False)


def _interruptible(command):
    """Ctrl-C anywhere in a command ends with one line and exit code 130 (typer alone would exit silently).
    Stages that save work on Ctrl-C raise Interrupted themselves, naming what was kept."""

    @functools.wraps(command)
    def guarded(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            raise Interrupted("stopped; finished work is kept: run the same command again to resume") from None

    return guarded


for _typer_app in (app, datasets_app, cache_app):
    for _command in _typer_app.registered_commands:
        _command.callback = _interruptible(_command.callback)


def _take_library_warnings() -> Counter:
    dicom = sys.modules.get("medprobe.data.dicom")
    return dicom.take_warnings() if dicom else Counter()


def _print_library_warnings(debug: bool) -> None:
    """pydicom's warnings as one counted line (each was printed in full under --debug)."""
    counted = _take_library_warnings()
    if counted and not debug:
        first = next(iter(counted))
        print(f"note: pydicom warned {sum(counted.values())} time(s) about {len(counted)} thing(s), e.g. {first}; "
              "--debug shows each", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    previous_debug = debugging()
    _take_library_warnings()  # count this command's only
    if debug:
        set_debug(True)  # workers inherit it: library warnings and background-thread errors in full
    try:
        try:
            app(args=args, prog_name="medprobe")
        finally:
            if argv is None:  # the real command has ended, its work saved or reported: a Ctrl-C landing now
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # must not turn its exit into a traceback or -2
    except Interrupted as exc:
        quiet_background_errors()  # threads dying while the process shuts down are not the user's news
        print(f"interrupted: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except MedprobeError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    finally:
        _print_library_warnings(debug)
        if debug and not previous_debug:
            set_debug(False)

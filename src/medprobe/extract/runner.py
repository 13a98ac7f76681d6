"""`medprobe extract`: plan against the cache first (no weights loaded when nothing is to do), validate the
images that need work, then stream them through the backbone and write rows incrementally."""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medprobe import __version__
from medprobe.cache import cache_key, cache_lock, cache_path, plan_rows, read_contents
from medprobe.cache.journal import Journal, commit
from medprobe.data.images import check_image_header
from medprobe.data.samples import Dataset, Sample
from medprobe.data.signature import stat_or_empty, unchanged_records
from medprobe.errors import Interrupted, MedprobeError
from medprobe.extract.device_decode import resolve_decode
from medprobe.extract.pipeline import CacheTarget, Job, ShardStats, run_jobs
from medprobe.extract.plan import requested
from medprobe.extract.settings import CacheInfo, ExtractSettings
from medprobe.models.backbone import load_backbone
from medprobe.models.identity import resolve_preprocessing, weights_identity
from medprobe.models.registry import resolve_model
from medprobe.runtime.device import device_name, peak_memory_mb, resolve_device, resolve_precision
from medprobe.runtime.workers import default_workers


def library_versions() -> dict[str, str]:
    import h5py
    import timm
    import torchvision
    import transformers

    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "timm": timm.__version__,
            "transformers": transformers.__version__, "h5py": h5py.__version__, "numpy": np.__version__}


def locate_cache(*, dataset: Dataset, model: str, cache_dir: Path, device: str = "auto",
                 precision: str = "auto", image_size: int | None = None, revision: str | None = None,
                 decode: str = "cpu") -> CacheTarget:
    """The cache file a given extraction writes (needs only configs, never weights)."""
    spec = resolve_model(model, revision=revision)
    torch_device = resolve_device(device)
    resolved_precision = resolve_precision(precision, torch_device)
    prep = resolve_preprocessing(spec, image_size=image_size)
    key = cache_key(spec.cache_identity(), prep.to_json(), resolved_precision, decode)
    return CacheTarget(spec, cache_path(cache_dir, dataset.cache_slug, spec.slug, key), resolved_precision,
                       torch_device)


VALIDATE_BLOCK = 4096


def find_bad_headers(samples: list[Sample], workers: int = 8) -> list[tuple[Sample, str]]:
    """Header-check every image about to be extracted, before any compute is spent (volume headers were
    checked when the dataset was loaded)."""
    images = [s for s in samples if s.decode_key is None]  # whole image files (not slices, frames, members)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # in blocks: a future per image cost 1.5 KB each
        reasons = [reason for start in range(0, len(images), VALIDATE_BLOCK)
                   for reason in pool.map(lambda s: check_image_header(s.path), images[start:start + VALIDATE_BLOCK])]
    return [(s, r) for s, r in zip(images, reasons, strict=True) if r]


def provenance(target: CacheTarget, backbone, dataset: Dataset, settings: ExtractSettings, *, workers: int,
               processes: int = 1) -> dict:
    """What a cache records about how its features were made."""
    return {
        "medprobe_version": __version__, "model_name": target.spec.name, "backend": target.spec.backend,
        "source": target.spec.source, "revision_requested": target.spec.revision,
        "revision_resolved": backbone.resolved_revision, "num_parameters": backbone.num_parameters,
        "preprocessing": backbone.preprocessing.to_dict(), "precision": target.precision,
        "device": str(target.device), "device_name": device_name(target.device), "pools": list(backbone.pools),
        "dataset_name": dataset.name, "dataset_root": str(dataset.root.resolve()),
        "dataset_root_relative": os.path.relpath(dataset.root.resolve(), target.path.parent.resolve()),
        "library_versions": library_versions(), "batch_size": settings.batch_size, "workers": workers,
        "weights_identity": backbone.weights_identity, "decode": settings.decode, "processes": processes,
        "family": backbone.family, "licence": target.spec.licence, "requested": requested(target.spec, settings),
    }


def recover(target: CacheTarget, journal: Journal, dataset: Dataset) -> None:
    """Commit the batches a killed extraction left in the journal, so their work is not lost."""
    meta = journal.meta()
    if meta is None or not journal.batches():
        journal.clear()
        return
    commit(target.path, journal, ids=dataset.ids, provenance=meta["provenance"], pending=meta["pending"],
           fresh=meta["fresh"])


def extract(*, dataset: Dataset, model: str, cache_dir: Path, show_progress: bool = True, **options) -> CacheInfo:
    """One backbone: `extract_models` with ExtractSettings(**options)."""
    return extract_models(dataset, [model], cache_dir, ExtractSettings(**options), show_progress=show_progress)[0]


def extract_models(dataset: Dataset, models: list[str], cache_dir: Path, settings: ExtractSettings | None = None, *,
                   show_progress: bool = True) -> list[CacheInfo]:
    """Embed every sample of `dataset` not yet fresh in each backbone's cache under `cache_dir` (resumable,
    incremental), decoding each image once for all the backbones that need it; one report per backbone."""
    settings = settings or ExtractSettings()
    check_settings(settings)
    named = locate_caches(dataset, models, cache_dir, settings)
    targets = distinct(named)
    decode_device = resolve_decode(settings.decode, targets[0].device)
    with contextlib.ExitStack() as locks:
        for target in targets:
            locks.enter_context(cache_lock(target.path))
        journals = [Journal(target.path) for target in targets]
        try:
            works = plan_work(dataset, targets, journals, settings)
            jobs = [Job(work.backbone, work.todo, journal, target)
                    for work, journal, target in zip(works, journals, targets, strict=True) if isinstance(work, Work)]
            shard = run_jobs(jobs, dataset.root, batch_size=settings.batch_size, workers=resolved_workers(settings),
                             show_progress=show_progress, decode_device=decode_device) if jobs else []
            reports = commit_works(dataset, targets, journals, works, shard, skip_bad=settings.skip_bad)
        except KeyboardInterrupt:
            raise interrupted(targets, journals, dataset) from None
    return per_name(named, reports)


def locate_caches(dataset: Dataset, models: list[str], cache_dir: Path, settings: ExtractSettings) -> list[CacheTarget]:
    """Each named backbone's cache target under these settings, in the order named."""
    return [locate_cache(dataset=dataset, model=name, cache_dir=cache_dir, device=settings.device,
                         precision=settings.precision, image_size=settings.image_size, revision=settings.revision,
                         decode=settings.decode) for name in models]


def distinct(named: list[CacheTarget]) -> list[CacheTarget]:
    """A backbone named twice (or by two names for one cache) is extracted once."""
    return list({target.path: target for target in named}.values())


def per_name(named: list[CacheTarget], reports: list[CacheInfo]) -> list[CacheInfo]:
    """One report per backbone as named, from the reports of the distinct caches."""
    by_path = {report.path: report for report in reports}
    return [by_path[target.path] for target in named]


def check_settings(settings: ExtractSettings) -> None:
    if settings.batch_size < 1:
        raise MedprobeError(f"--batch-size {settings.batch_size} must be at least 1")


def resolved_workers(settings: ExtractSettings) -> int:
    return default_workers() if settings.workers is None else settings.workers


def plan_work(dataset: Dataset, targets: list[CacheTarget], journals: list[Journal], settings: ExtractSettings, *,
              processes: int = 1) -> list[Work | CacheInfo]:
    """With the caches locked: commit what killed runs left, then per backbone the work, or its report
    when there is none (no weights loaded then)."""
    works = []
    for target, journal in zip(targets, journals, strict=True):
        recover(target, journal, dataset)
        works.append(prepare(dataset, target, journal, settings, processes=processes))
    return works


def commit_works(dataset: Dataset, targets: list[CacheTarget], journals: list[Journal], works: list[Work | CacheInfo],
                 shard: list[ShardStats], *, skip_bad: bool) -> list[CacheInfo]:
    """Commit every backbone's journal (its stats in `shard`, in the order of the works that had work), then
    raise the first error, so one backbone's bad images never cost another its rows."""
    stats = iter(shard)
    reports, errors = [], []
    for target, journal, work in zip(targets, journals, works, strict=True):
        if isinstance(work, CacheInfo):
            reports.append(work)
            continue
        try:
            reports.append(finish(dataset, target, journal, work, next(stats), skip_bad=skip_bad))
        except MedprobeError as exc:
            errors.append(exc)
    if errors:
        raise errors[0]
    return reports


def interrupted(targets: list[CacheTarget], journals: list[Journal], dataset: Dataset) -> Interrupted:
    """Commit every finished batch of every backbone, and say how to resume."""
    parts = []
    for target, journal in zip(targets, journals, strict=True):
        recover(target, journal, dataset)
        done = int(read_contents(target.path).done.sum()) if target.path.exists() else 0
        parts.append(f"{target.spec.name}: {done} of {len(dataset.samples)} images are cached in {target.path}")
    return Interrupted("; ".join(parts) + "; run the same command again to resume")


@dataclass
class Work:
    """What an extraction will do, decided with the cache locked: the samples to embed and how to commit."""

    backbone: object
    todo: list[Sample]
    plan: object  # the FreshnessPlan
    skipped: dict[str, dict]
    pending: list[str]
    fresh: bool
    made: dict  # provenance


def prepare(dataset: Dataset, target: CacheTarget, journal: Journal, settings: ExtractSettings, *,
            processes: int = 1) -> Work | CacheInfo:
    """Plan against the cache, check the images, load the backbone: the work, or the report when there is
    none. Loads no weights when the cache is up to date."""
    samples, skip_bad, image_size = dataset.samples, settings.skip_bad, settings.image_size
    contents = read_contents(target.path) if target.path.exists() else None
    known_identity = weights_identity(target.spec)
    if contents is not None and known_identity and contents.attrs.get("weights_identity") != known_identity:
        contents = None  # the weights moved on: every row is stale
    plan = plan_rows(contents, samples, dataset.root)
    previously_skipped = dict(contents.attrs.get("skipped") or {}) if contents is not None else {}
    skipped: dict[str, dict] = {}
    if skip_bad:  # a skipped file stays skipped until it changes
        skipped = unchanged_records(previously_skipped, samples, dataset.root)
        plan.todo = [i for i in plan.todo if samples[i].id not in skipped]
    if plan.up_to_date and known_identity is not None:
        if plan.restat:
            commit(target.path, journal, ids=[], provenance={}, restat=plan.restat)
        return CacheInfo(target.spec.name, target.path, 0, plan.fresh, 0, None, skipped=skipped)

    todo = _checked_todo(samples, plan, skipped, dataset.root, skip_bad)
    backbone = load_backbone(target.spec, image_size=image_size)
    stored_identity = contents.attrs.get("weights_identity", "") if contents is not None else ""
    fresh = target.path.exists() and (contents is None or stored_identity not in ("", backbone.weights_identity))
    if fresh:  # the stored rows came from other weights: every sample is extracted anew
        plan, skipped = plan_rows(None, samples, dataset.root), {}
        todo = _checked_todo(samples, plan, skipped, dataset.root, skip_bad)
    made = provenance(target, backbone, dataset, settings, workers=resolved_workers(settings), processes=processes)
    pending = [samples[i].id for i in plan.changed]
    journal.start(made, pending=pending, fresh=fresh)
    return Work(backbone, todo, plan, skipped, pending, fresh, made)


def finish(dataset: Dataset, target: CacheTarget, journal: Journal, work: Work, stats: ShardStats, *,
           skip_bad: bool) -> CacheInfo:
    """Commit the journal into the cache (recording skipped files and timings), then report."""
    skipped = dict(work.skipped)
    skipped.update({sample.id: {"reason": reason, "stat": stat_or_empty(sample, dataset.root)}
                    for sample, reason in stats.errors if skip_bad})
    attrs = {"skipped": skipped}
    if stats.count:
        attrs.update({"embed_dims": stats.dims, "extract_seconds": round(stats.seconds, 3),
                      "images_extracted": stats.count, "images_per_second": stats.rate,
                      "extract_stage_seconds": stats.stages.to_dict(), "extract_bottleneck": stats.stages.bottleneck(),
                      "peak_memory_mb": round(max(stats.peak_memory_mb, peak_memory_mb(target.device)), 1)})
    commit(target.path, journal, ids=dataset.ids, provenance=work.made, attrs=attrs, pending=work.pending,
           restat=work.plan.restat, fresh=work.fresh)
    errors = [reason for _, reason in stats.errors]
    if errors and not skip_bad:
        raise MedprobeError(
            f"{len(errors)} image(s) failed to decode, the rest were cached: {errors[0]}"
            f"{' (and more)' if len(errors) > 1 else ''}; fix them, or pass --skip-bad to leave them out"
        )
    return CacheInfo(target.spec.name, target.path, stats.count, work.plan.fresh, len(work.plan.changed),
                     stats.rate, skipped=skipped)


def _checked_todo(samples: list[Sample], plan, skipped: dict, root: Path, skip_bad: bool) -> list[Sample]:
    """The samples to extract: header-checked before any compute; bad ones refused, or with --skip-bad
    recorded in `skipped` (id -> reason and stat) and left out."""
    todo = [samples[i] for i in plan.todo if samples[i].id not in skipped]
    bad = find_bad_headers(todo)
    if bad and not skip_bad:
        first = ", ".join(f"{s.path} ({reason})" for s, reason in bad[:3])
        raise MedprobeError(
            f"{len(bad)} unreadable image(s): {first}{' ...' if len(bad) > 3 else ''}; fix or remove them, or "
            "pass --skip-bad to extract the rest (`medprobe datasets inspect DATA` lists all)"
        )
    skipped.update({s.id: {"reason": reason, "stat": stat_or_empty(s, root)} for s, reason in bad})
    return [s for s in todo if s.id not in skipped]

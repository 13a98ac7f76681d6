"""`medprobe extract`: plan against the cache first (no weights loaded when nothing is to do), validate the
images that need work, then stream them through the backbone and write rows incrementally."""

from __future__ import annotations

import os
import time
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
from medprobe.extract.device_decode import make_device_decode_loader, resolve_decode
from medprobe.extract.loader import make_loader
from medprobe.extract.settings import CacheInfo, ExtractSettings
from medprobe.models.backbone import load_backbone, resolve_preprocessing, weights_identity
from medprobe.models.registry import ModelSpec, resolve_model
from medprobe.models.transforms import ImageTransform
from medprobe.progress import progress_bar
from medprobe.runtime.device import autocast, device_name, peak_memory_mb, resolve_device, resolve_precision
from medprobe.runtime.workers import default_workers


@dataclass
class CacheTarget:
    spec: ModelSpec
    path: Path
    precision: str
    device: torch.device


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


def provenance(target: CacheTarget, backbone, dataset: Dataset, *, batch_size: int, workers: int,
               decode: str = "cpu", processes: int = 1) -> dict:
    """What a cache records about how its features were made."""
    return {
        "medprobe_version": __version__, "model_name": target.spec.name, "backend": target.spec.backend,
        "source": target.spec.source, "revision_requested": target.spec.revision,
        "revision_resolved": backbone.resolved_revision, "num_parameters": backbone.num_parameters,
        "preprocessing": backbone.preprocessing.to_dict(), "precision": target.precision,
        "device": str(target.device), "device_name": device_name(target.device), "pools": list(backbone.pools),
        "dataset_name": dataset.name, "dataset_root": str(dataset.root.resolve()),
        "dataset_root_relative": os.path.relpath(dataset.root.resolve(), target.path.parent.resolve()),
        "library_versions": library_versions(), "batch_size": batch_size, "workers": workers,
        "weights_identity": backbone.weights_identity, "decode": decode, "processes": processes,
        "family": backbone.family, "licence": target.spec.licence,
    }


def recover(target: CacheTarget, journal: Journal, dataset: Dataset) -> None:
    """Commit the batches a killed extraction left in the journal, so their work is not lost."""
    meta = journal.meta()
    if meta is None or not journal.batches():
        journal.clear()
        return
    commit(target.path, journal, ids=dataset.ids, provenance=meta["provenance"], pending=meta["pending"],
           fresh=meta["fresh"])


_DEFAULTS = ExtractSettings()


def extract(*, dataset: Dataset, model: str, cache_dir: Path, device: str = _DEFAULTS.device,
            precision: str = _DEFAULTS.precision, batch_size: int = _DEFAULTS.batch_size,
            workers: int | None = _DEFAULTS.workers, image_size: int | None = _DEFAULTS.image_size,
            revision: str | None = _DEFAULTS.revision, show_progress: bool = True,
            skip_bad: bool = _DEFAULTS.skip_bad, decode: str = _DEFAULTS.decode) -> CacheInfo:
    """Embed every sample of `dataset` not yet fresh in `model`'s cache under `cache_dir` (resumable,
    incremental); what it did, and where the cache is."""
    options = dict(dataset=dataset, model=model, cache_dir=cache_dir, device=device, precision=precision,
                   batch_size=batch_size, workers=workers, image_size=image_size, revision=revision,
                   show_progress=show_progress, skip_bad=skip_bad, decode=decode)
    from medprobe.extract import distributed

    if distributed.is_distributed():  # one process of a torchrun world: one shard (extract/distributed.py)
        return distributed.extract_sharded(**options)
    if batch_size < 1:
        raise MedprobeError(f"--batch-size {batch_size} must be at least 1")
    target = locate_cache(dataset=dataset, model=model, cache_dir=cache_dir, device=device,
                          precision=precision, image_size=image_size, revision=revision, decode=decode)
    decode_device = resolve_decode(decode, target.device)
    with cache_lock(target.path):
        journal = Journal(target.path)
        try:
            recover(target, journal, dataset)
            work = prepare(dataset, target, journal, batch_size=batch_size, workers=workers, image_size=image_size,
                           skip_bad=skip_bad, decode=decode)
            if isinstance(work, CacheInfo):
                return work
            stats = _run(work.backbone, work.todo, dataset.root, journal, target, batch_size=batch_size,
                         workers=work.workers, show_progress=show_progress,
                         decode_device=decode_device)
            return finish(dataset, target, journal, work, stats, skip_bad=skip_bad)
        except KeyboardInterrupt:
            raise interrupted(target, journal, dataset) from None


def interrupted(target: CacheTarget, journal: Journal, dataset: Dataset) -> Interrupted:
    """Commit every finished batch, and say how to resume."""
    recover(target, journal, dataset)
    done = int(read_contents(target.path).done.sum()) if target.path.exists() else 0
    return Interrupted(f"{target.spec.name}: {done} of {len(dataset.samples)} images are cached in {target.path}; "
                       "run the same command again to resume")


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
    workers: int


def prepare(dataset: Dataset, target: CacheTarget, journal: Journal, *, batch_size: int, workers: int | None,
            image_size: int | None, skip_bad: bool, decode: str, processes: int = 1) -> Work | CacheInfo:
    """Plan against the cache, check the images, load the backbone: the work, or the report when there is
    none. Loads no weights when the cache is up to date."""
    samples = dataset.samples
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
    workers = default_workers() if workers is None else workers
    made = provenance(target, backbone, dataset, batch_size=batch_size, workers=workers, decode=decode,
                      processes=processes)
    pending = [samples[i].id for i in plan.changed]
    journal.start(made, pending=pending, fresh=fresh)
    return Work(backbone, todo, plan, skipped, pending, fresh, made, workers)


def finish(dataset: Dataset, target: CacheTarget, journal: Journal, work: Work, stats: dict, *,
           skip_bad: bool) -> CacheInfo:
    """Commit the journal into the cache (recording skipped files and timings), then report."""
    skipped = dict(work.skipped)
    skipped.update({sample_id: {"reason": reason, "stat": stat_or_empty(sample, dataset.root)}
                    for sample, sample_id, reason in stats["errors"] if skip_bad})
    attrs = {"skipped": skipped}
    if stats["count"]:
        attrs.update({"embed_dims": stats["dims"], "extract_seconds": round(stats["seconds"], 3),
                      "images_extracted": stats["count"], "images_per_second": stats["rate"],
                      "peak_memory_mb": round(max(stats.get("peak_memory_mb", 0.0),
                                                  peak_memory_mb(target.device)), 1)})
    commit(target.path, journal, ids=dataset.ids, provenance=work.made, attrs=attrs, pending=work.pending,
           restat=work.plan.restat, fresh=work.fresh)
    errors = [reason for _, _, reason in stats["errors"]]
    if errors and not skip_bad:
        raise MedprobeError(
            f"{len(errors)} image(s) failed to decode, the rest were cached: {errors[0]}"
            f"{' (and more)' if len(errors) > 1 else ''}; fix them, or pass --skip-bad to leave them out"
        )
    return CacheInfo(target.spec.name, target.path, stats["count"], work.plan.fresh, len(work.plan.changed),
                         stats["rate"], skipped=skipped)


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


def _run(backbone, todo: list[Sample], root: Path, journal: Journal, target: CacheTarget, *, batch_size: int,
         workers: int, show_progress: bool, decode_device: torch.device | None = None) -> dict:
    device = target.device
    module = backbone.module.to(device)
    if backbone.is_cnn:
        module = module.to(memory_format=torch.channels_last)
    transform = ImageTransform(backbone.preprocessing)
    if decode_device is not None:  # JPEGs decoded and preprocessed on the GPU (extract/device_decode.py)
        loader = make_device_decode_loader(todo, root, transform, device=decode_device, batch_size=batch_size,
                                           workers=workers)
    else:
        loader = make_loader(todo, root, transform, batch_size=batch_size, workers=workers,
                             pin_memory=device.type == "cuda")
    errors: list[tuple[Sample, str, str]] = []
    dims: dict[str, int] = {}
    count, started, warm_start, warm_count = 0, time.perf_counter(), None, 0
    with progress_bar(f"extract {backbone.spec.name}", total=len(todo), enabled=show_progress) as advance:
        for batch in loader:
            errors += [(todo[position], todo[position].id, reason) for position, reason in batch["errors"]]
            if batch["pixels"] is not None:
                features = _embed_fixed_shape(backbone, batch["pixels"], batch_size, target)
                dims = {pool: int(value.shape[1]) for pool, value in features.items()}
                _check_finite(features, backbone.spec.name)
                journal.append([todo[p].id for p in batch["positions"]], features, batch["fingerprints"],
                               batch["stats"])
            size = len(batch["positions"]) + len(batch["errors"])
            count += len(batch["positions"])
            if warm_start is None:  # the marginal rate leaves out start-up and the first batch
                warm_start = time.perf_counter()
            else:
                warm_count += len(batch["positions"])
            advance(size)
    seconds = time.perf_counter() - started
    warm_seconds = time.perf_counter() - warm_start if warm_start else 0.0
    rate = warm_count / warm_seconds if warm_count and warm_seconds > 0 else (count / seconds if seconds else None)
    return {"count": count, "seconds": seconds, "rate": round(rate, 2) if rate else None, "dims": dims,
            "errors": errors}


def _embed_fixed_shape(backbone, pixels: torch.Tensor, batch_size: int, target: CacheTarget) -> dict[str, np.ndarray]:
    """Forward a batch padded to `batch_size` rows: kernels may pick another algorithm for another batch
    shape, and a fixed shape keeps every image's features bit-identical however the batches were cut
    (an interrupted and resumed extraction equals an uninterrupted one)."""
    count = pixels.shape[0]
    if count < batch_size:
        pixels = torch.cat([pixels, pixels[-1:].expand(batch_size - count, *pixels.shape[1:])])
    pixels = pixels.to(target.device, non_blocking=True)
    if backbone.is_cnn:
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(target.device, target.precision):
        pooled = backbone.embed(pixels)
    return {pool: value[:count].float().cpu().numpy() for pool, value in pooled.items()}


def _check_finite(features: dict[str, np.ndarray], model: str) -> None:
    for pool, values in features.items():
        if not np.isfinite(values).all() or np.abs(values).max(initial=0) > 65000:
            raise MedprobeError(
                f"{model} produced non-finite or float16-overflowing {pool} features; try --precision fp32"
            )

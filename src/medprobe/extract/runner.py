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
from medprobe.cache import CacheWriter, cache_key, cache_path, plan_rows, read_contents
from medprobe.data.images import check_image_header
from medprobe.data.samples import Dataset, Sample
from medprobe.errors import MedprobeError
from medprobe.extract.device import autocast, device_name, peak_memory_mb, resolve_device, resolve_precision
from medprobe.extract.device_decode import make_device_decode_loader, resolve_decode
from medprobe.extract.loader import make_loader
from medprobe.models.backbone import load_backbone, resolve_preprocessing, weights_identity
from medprobe.models.registry import ModelSpec, resolve_model
from medprobe.models.transforms import ImageTransform
from medprobe.progress import progress_bar


@dataclass
class ExtractReport:
    model: str
    path: Path
    extracted: int
    reused: int
    changed: int
    images_per_second: float | None

    @property
    def up_to_date(self) -> bool:
        return self.extracted == 0


@dataclass
class CacheTarget:
    spec: ModelSpec
    path: Path
    precision: str
    device: torch.device


VALIDATE_BLOCK = 4096


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def library_versions() -> dict[str, str]:
    import h5py
    import timm
    import torchvision
    import transformers

    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "timm": timm.__version__,
            "transformers": transformers.__version__, "h5py": h5py.__version__, "numpy": np.__version__}


def locate_cache(*, dataset: Dataset, model: str, cache_dir: Path, device: str = "auto",
                 precision: str = "auto", image_size: int | None = None, revision: str | None = None) -> CacheTarget:
    """The cache file a given extraction writes (needs only configs, never weights)."""
    spec = resolve_model(model, revision=revision)
    torch_device = resolve_device(device)
    resolved_precision = resolve_precision(precision, torch_device)
    prep = resolve_preprocessing(spec, image_size=image_size)
    key = cache_key(spec.cache_identity(), prep.to_json(), resolved_precision)
    return CacheTarget(spec, cache_path(cache_dir, dataset.cache_slug, spec.slug, key), resolved_precision,
                       torch_device)


def validate_images(samples: list[Sample], workers: int = 8) -> None:
    """Header-check every image about to be extracted, before any compute is spent (volume headers were
    checked when the dataset was loaded)."""
    samples = [s for s in samples if s.slice is None]
    with ThreadPoolExecutor(max_workers=workers) as pool:  # in blocks: a future per image cost 1.5 KB each
        reasons = [reason for start in range(0, len(samples), VALIDATE_BLOCK)
                   for reason in pool.map(lambda s: check_image_header(s.path), samples[start:start + VALIDATE_BLOCK])]
    bad = [(s.path, r) for s, r in zip(samples, reasons, strict=True) if r]
    if bad:
        first = ", ".join(f"{path} ({reason})" for path, reason in bad[:3])
        raise MedprobeError(
            f"{len(bad)} unreadable image(s): {first}{' ...' if len(bad) > 3 else ''}; fix or remove them "
            "(`medprobe datasets inspect DATA` lists all)"
        )


def provenance(target: CacheTarget, backbone, dataset: Dataset, *, batch_size: int, workers: int,
               decode: str = "cpu", processes: int = 1) -> dict:
    return {
        "medprobe_version": __version__, "model_name": target.spec.name, "backend": target.spec.backend,
        "source": target.spec.source, "revision_requested": target.spec.revision,
        "revision_resolved": backbone.resolved_revision, "num_parameters": backbone.num_parameters,
        "preprocessing": backbone.preprocessing.to_dict(), "precision": target.precision,
        "device": str(target.device), "device_name": device_name(target.device), "pools": list(backbone.pools),
        "dataset_name": dataset.name, "dataset_root": str(dataset.root.resolve()),
        "library_versions": library_versions(), "batch_size": batch_size, "workers": workers,
        "decode": decode, "processes": processes,
    }


def extract(*, dataset: Dataset, model: str, cache_dir: Path, device: str = "auto", precision: str = "auto",
            batch_size: int = 32, workers: int | None = None, image_size: int | None = None,
            revision: str | None = None, show_progress: bool = True, decode: str = "cpu") -> ExtractReport:
    # --- scale hook: inside a torchrun world each process extracts one shard (extract/distributed.py)
    from medprobe.extract import distributed

    if distributed.is_distributed():
        return distributed.extract_sharded(
            dataset=dataset, model=model, cache_dir=cache_dir, device=device, precision=precision,
            batch_size=batch_size, workers=workers, image_size=image_size, revision=revision,
            show_progress=show_progress, decode=decode)
    # --- end scale hook
    if batch_size < 1:
        raise MedprobeError(f"--batch-size {batch_size} must be at least 1")
    target = locate_cache(dataset=dataset, model=model, cache_dir=cache_dir, device=device,
                          precision=precision, image_size=image_size, revision=revision)
    decode_device = resolve_decode(decode, target.device)
    samples = dataset.samples
    contents = read_contents(target.path) if target.path.exists() else None
    known_identity = weights_identity(target.spec)
    if contents is not None and known_identity and contents.attrs.get("weights_identity") != known_identity:
        contents = None  # the weights moved on: every row is stale
    plan = plan_rows(contents, samples, dataset.root)
    if plan.up_to_date and known_identity is not None:
        if plan.restat:
            with CacheWriter(target.path, {}) as writer:
                writer.update_stats(plan.restat)
        return ExtractReport(model, target.path, 0, plan.fresh, 0, None)

    todo = [samples[i] for i in plan.todo]
    validate_images(todo)
    backbone = load_backbone(target.spec, image_size=image_size)
    workers = default_workers() if workers is None else workers
    with CacheWriter(target.path, provenance(target, backbone, dataset, batch_size=batch_size, workers=workers,
                                             decode=decode)) as writer:
        stored_identity = writer.file.attrs.get("weights_identity", "")
        if stored_identity and stored_identity != backbone.weights_identity:
            writer.clear()
            plan = plan_rows(None, samples, dataset.root)
            todo = list(samples)
            validate_images(todo)
        writer.set_attrs({"weights_identity": backbone.weights_identity})
        writer.update_stats(plan.restat)
        known = set(writer.ids)
        writer.append_rows([s.id for s in todo if s.id not in known])
        row_of = {sample_id: row for row, sample_id in enumerate(writer.ids)}
        writer.mark_pending([row_of[samples[i].id] for i in plan.changed])
        stats = {"count": 0, "rate": None, "errors": []}
        if todo:
            stats = _run(backbone, todo, dataset.root, [row_of[s.id] for s in todo], writer, target,
                         batch_size=batch_size, workers=workers, show_progress=show_progress,
                         decode_device=decode_device)
            writer.set_attrs({
                "embed_dims": stats["dims"], "extract_seconds": round(stats["seconds"], 3),
                "images_extracted": stats["count"], "images_per_second": stats["rate"],
                "peak_memory_mb": round(peak_memory_mb(target.device), 1),
            })
    if stats["errors"]:
        errors = stats["errors"]
        raise MedprobeError(
            f"{len(errors)} image(s) failed to decode, the rest were cached: {errors[0]}"
            f"{' (and more)' if len(errors) > 1 else ''}"
        )
    return ExtractReport(model, target.path, stats["count"], plan.fresh, len(plan.changed), stats["rate"])


def _run(backbone, todo: list[Sample], root: Path, rows: list[int], writer: CacheWriter, target: CacheTarget, *,
         batch_size: int, workers: int, show_progress: bool, decode_device: torch.device | None = None) -> dict:
    device = target.device
    module = backbone.module.to(device)
    if backbone.is_cnn:
        module = module.to(memory_format=torch.channels_last)
    transform = ImageTransform(backbone.preprocessing)
    if decode_device is not None:  # scale hook: JPEGs decoded and preprocessed on the GPU (extract/device_decode.py)
        loader = make_device_decode_loader(todo, root, transform, device=decode_device, batch_size=batch_size,
                                           workers=workers)
    else:
        loader = make_loader(todo, root, transform, batch_size=batch_size, workers=workers,
                             pin_memory=device.type == "cuda")
    rows_array = np.asarray(rows, dtype=np.int64)
    errors: list[str] = []
    dims: dict[str, int] = {}
    count, started, warm_start, warm_count = 0, time.perf_counter(), None, 0
    with progress_bar(f"extract {backbone.spec.name}", total=len(todo), enabled=show_progress) as advance:
        for batch in loader:
            errors += batch["errors"]
            if batch["pixels"] is not None:
                pixels = batch["pixels"].to(device, non_blocking=True)
                if backbone.is_cnn:
                    pixels = pixels.contiguous(memory_format=torch.channels_last)
                with torch.inference_mode(), autocast(device, target.precision):
                    pooled = backbone.embed(pixels)
                features = {pool: value.float().cpu().numpy() for pool, value in pooled.items()}
                dims = {pool: int(value.shape[1]) for pool, value in features.items()}
                _check_finite(features, backbone.spec.name)
                writer.write(rows_array[batch["positions"]], features, batch["fingerprints"], batch["stats"])
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


def _check_finite(features: dict[str, np.ndarray], model: str) -> None:
    for pool, values in features.items():
        if not np.isfinite(values).all() or np.abs(values).max(initial=0) > 65000:
            raise MedprobeError(
                f"{model} produced non-finite or float16-overflowing {pool} features; try --precision fp32"
            )

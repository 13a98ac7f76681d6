"""The extraction pipeline, for one backbone or several at once:

    decode (loader worker processes, each image once) -> per-backbone transform (in the workers)
      -> host-to-device copy and forward pass (main process, one backbone after another)
      -> journal write (a background thread)

Queues are bounded (the loader's prefetch, a per-backbone buffer of under one batch, at most
`WRITE_DEPTH` batches waiting for the writer), so memory stays flat however many images there are. Each
stage's time is measured: waiting for the loader (decode-bound: more `--workers` or `--decode gpu` would
help), the host-to-device copies (transfer-bound: pinned memory is on already; smaller batches in flight
or `--decode gpu` would help), the forward passes (compute-bound: the backbone is the limit), waiting
for the writer (write-bound: a slow disk); the progress line names the slowest.

Ctrl-C is deferred while the loader runs (runtime.workers.deferred_interrupts) and raised between batches,
never inside the loader's queue code.

Every backbone forwards batches of exactly `batch_size` rows (the last one padded), as a single-backbone
run does, so its features are bit-identical whichever backbones ran beside it and however a resumed run
cut the batches.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medprobe.cache.journal import Journal
from medprobe.data.samples import Sample
from medprobe.errors import MedprobeError
from medprobe.extract.device_decode import make_device_decode_loader
from medprobe.extract.loader import make_loader
from medprobe.models.spec import ModelSpec
from medprobe.models.transforms import ImageTransform
from medprobe.progress import progress_bar
from medprobe.runtime.device import autocast
from medprobe.runtime.workers import deferred_interrupts, interruption_point

WRITE_DEPTH = 2  # batches computed but not yet in the journal
STAGES = ("decode", "transfer", "compute", "write")  # StageSeconds' fields, in pipeline order


@dataclass
class CacheTarget:
    """Where one backbone's features go, and how they are computed."""

    spec: ModelSpec
    path: Path
    precision: str
    device: torch.device


@dataclass
class Job:
    """One backbone's share of a pipeline run: the samples it still needs and where their rows go."""

    backbone: object  # models.backbone.Backbone
    todo: list[Sample]
    journal: Journal
    target: CacheTarget


@dataclass
class StageSeconds:
    decode: float = 0.0  # waiting for the loader's next batch
    transfer: float = 0.0  # host-to-device copies (timed on the GPU by CUDA events; none on a CPU)
    compute: float = 0.0  # forward passes and the features' copy back
    write: float = 0.0  # waiting for the journal writer

    def bottleneck(self) -> str:
        stages = self.to_dict()
        return f"{max(stages, key=stages.get)}-bound"

    def to_dict(self) -> dict[str, float]:
        return {stage: round(getattr(self, stage), 3) for stage in STAGES}


@dataclass
class ShardStats:
    """What one pipeline run did for one backbone (a torchrun rank's part, or the whole extraction)."""

    count: int = 0  # images embedded
    seconds: float = 0.0  # wall time of the run
    rate: float | None = None  # images/s: the marginal rate, the backbone's share of a shared run
    dims: dict[str, int] = field(default_factory=dict)
    errors: list[tuple[Sample, str]] = field(default_factory=list)  # (sample, why it did not decode)
    stages: StageSeconds = field(default_factory=StageSeconds)
    peak_memory_mb: float = 0.0


class JournalWriter:
    """Journal appends on one background thread, at most WRITE_DEPTH waiting; an error is raised in the
    caller on the next submit or on drain."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medprobe-journal")
        self.pending: deque[Future] = deque()

    def submit(self, journal: Journal, *args) -> float:
        """Queue one append; the seconds spent waiting for room."""
        waited = 0.0
        while len(self.pending) >= WRITE_DEPTH:
            began = time.perf_counter()
            self.pending.popleft().result()
            waited += time.perf_counter() - began
        self.pending.append(self.pool.submit(journal.append, *args))
        return waited

    def drain(self) -> float:
        began = time.perf_counter()
        while self.pending:
            self.pending.popleft().result()
        return time.perf_counter() - began

    def close(self) -> None:
        """Let writes in flight finish (a journal batch is atomic, so even a kill loses nothing else)."""
        self.pool.shutdown(wait=True)


class _Buffer:
    """One backbone's rows waiting to fill a batch."""

    def __init__(self) -> None:
        self.chunks: list[torch.Tensor] = []
        self.ids: list[str] = []
        self.fingerprints: list[str] = []
        self.stats: list[str] = []

    def add(self, pixels: torch.Tensor, ids: list[str], fingerprints: list[str], stats: list[str]) -> None:
        self.chunks.append(pixels)
        self.ids += ids
        self.fingerprints += fingerprints
        self.stats += stats

    def take(self, size: int) -> tuple[torch.Tensor, list[str], list[str], list[str]]:
        pixels = self.chunks[0] if len(self.chunks) == 1 else torch.cat(self.chunks)
        taken = (pixels[:size], self.ids[:size], self.fingerprints[:size], self.stats[:size])
        rest = pixels[size:]
        self.chunks = [rest] if len(rest) else []
        self.ids, self.fingerprints, self.stats = self.ids[size:], self.fingerprints[size:], self.stats[size:]
        return taken


def run_jobs(jobs: list[Job], root: Path, *, batch_size: int, workers: int, show_progress: bool,
             decode_device: torch.device | None = None) -> list[ShardStats]:
    """Embed every job's samples, each image decoded once for all the jobs that need it."""
    if decode_device is not None and len(jobs) > 1:  # the GPU decoder preprocesses for one backbone
        return [stats for job in jobs for stats in run_jobs([job], root, batch_size=batch_size, workers=workers,
                                                             show_progress=show_progress, decode_device=decode_device)]
    for job in jobs:
        job.backbone.module = job.backbone.module.to(job.target.device)
        if job.backbone.is_cnn:
            job.backbone.module = job.backbone.module.to(memory_format=torch.channels_last)
    samples, needs, transform_of, transforms = _plan_decoding(jobs)
    if decode_device is not None:
        loader = make_device_decode_loader(samples, root, transforms[0], device=decode_device,
                                           batch_size=batch_size, workers=workers)
    else:
        wants = [tuple(sorted({transform_of[j] for j in jobs_of})) for jobs_of in needs]
        loader = make_loader(samples, root, transforms, batch_size=batch_size, workers=workers, wants=wants,
                             pin_memory=any(job.target.device.type == "cuda" for job in jobs))
    stats = [ShardStats() for _ in jobs]
    buffers = [_Buffer() for _ in jobs]
    writer = JournalWriter()
    warm = _Warm(len(jobs))
    began = time.perf_counter()
    names = ", ".join(job.backbone.spec.name for job in jobs)
    batches = None
    try:
        with deferred_interrupts(), \
                progress_bar(f"extract {names}", total=len(samples), enabled=show_progress, status=True) as advance:
            batches = iter(loader)
            while True:
                waited = time.perf_counter()
                batch = next(batches, None)
                for s in stats:
                    s.stages.decode += time.perf_counter() - waited
                if batch is None:
                    break
                for position, reason in batch["errors"]:
                    for j in needs[position]:
                        stats[j].errors.append((samples[position], reason))
                for j, job in enumerate(jobs):
                    rows = [r for r in batch["rows"].get(transform_of[j], []) if j in needs[batch["positions"][r]]]
                    if rows:
                        pixels = batch["pixels"][transform_of[j]]
                        if len(rows) < len(pixels):
                            pixels = pixels[rows]
                        positions = [batch["positions"][r] for r in rows]
                        buffers[j].add(pixels, [samples[p].id for p in positions],
                                       [batch["fingerprints"][r] for r in rows], [batch["stats"][r] for r in rows])
                    while len(buffers[j].ids) >= batch_size:
                        warm.count(j, _forward(job, buffers[j].take(batch_size), batch_size, stats[j], writer))
                warm.start()
                advance(len(batch["positions"]) + len(batch["errors"]), status=_status(stats))
                interruption_point()
            for j, job in enumerate(jobs):
                while buffers[j].ids:
                    warm.count(j, _forward(job, buffers[j].take(batch_size), batch_size, stats[j], writer))
                    interruption_point()
            drained = writer.drain()
            for s in stats:
                s.stages.write += drained
    finally:
        with deferred_interrupts():  # the loader's workers stop and writes in flight finish, Ctrl-C held back
            batches = None
            writer.close()
    seconds = time.perf_counter() - began
    for j, s in enumerate(stats):
        s.seconds = seconds
        s.rate = warm.rate(j, stats, seconds)
    return stats


def _plan_decoding(jobs: list[Job]):
    """The samples to decode (each once, in the jobs' order), which jobs need each, each job's transform,
    and the transforms (one per distinct preprocessing)."""
    by_id: dict[str, Sample] = {}
    for job in jobs:
        for sample in job.todo:
            by_id.setdefault(sample.id, sample)
    samples = list(by_id.values())
    transforms: list[ImageTransform] = []
    index_of: dict[str, int] = {}
    transform_of = []
    for job in jobs:
        key = job.backbone.preprocessing.to_json()
        if key not in index_of:
            index_of[key] = len(transforms)
            transforms.append(ImageTransform(job.backbone.preprocessing))
        transform_of.append(index_of[key])
    id_sets = [{s.id for s in job.todo} for job in jobs]
    needs = [{j for j, ids in enumerate(id_sets) if s.id in ids} for s in samples]
    return samples, needs, transform_of, transforms


class _Warm:
    """The marginal rate leaves out start-up and the first loader batch; a shared run's wall time is split
    between the backbones in proportion to their forward time."""

    def __init__(self, jobs: int) -> None:
        self.began: float | None = None
        self.images = [0] * jobs
        self.compute = [0.0] * jobs

    def start(self) -> None:
        if self.began is None:
            self.began = time.perf_counter()

    def count(self, job: int, done: tuple[int, float]) -> None:
        if self.began is not None:
            self.images[job] += done[0]
            self.compute[job] += done[1]

    def rate(self, job: int, stats: list[ShardStats], seconds: float) -> float | None:
        wall = time.perf_counter() - self.began if self.began is not None else 0.0
        total_compute = sum(self.compute)
        if self.images[job] and wall > 0 and total_compute > 0 and self.compute[job] > 0:
            return round(self.images[job] / (wall * self.compute[job] / total_compute), 2)
        count = stats[job].count
        share = sum(s.stages.compute for s in stats)
        own = stats[job].stages.compute / share if share else 1.0
        return round(count / (seconds * own), 2) if count and seconds > 0 and own > 0 else None


def _status(stats: list[ShardStats]) -> str:
    """The loader is shared, so its wait counts once; the other stages add up over the backbones."""
    total = StageSeconds(**{stage: sum(getattr(s.stages, stage) for s in stats) for stage in STAGES})
    total.decode = stats[0].stages.decode
    return total.bottleneck()


def _forward(job: Job, batch, batch_size: int, stats: ShardStats, writer: JournalWriter) -> tuple[int, float]:
    """One batch through the backbone, queued for the journal; (images, forward seconds)."""
    pixels, ids, fingerprints, file_stats = batch
    began = time.perf_counter()
    features, transfer = _embed_fixed_shape(job.backbone, pixels, batch_size, job.target)
    seconds = time.perf_counter() - began
    stats.stages.transfer += transfer
    stats.stages.compute += seconds - transfer
    stats.dims = {pool: int(value.shape[1]) for pool, value in features.items()}
    _check_finite(features, job.backbone.spec.name)
    stats.stages.write += writer.submit(job.journal, ids, features, fingerprints, file_stats)
    stats.count += len(ids)
    return len(ids), seconds


def _embed_fixed_shape(backbone, pixels: torch.Tensor, batch_size: int,
                       target: CacheTarget) -> tuple[dict[str, np.ndarray], float]:
    """Forward a batch padded to `batch_size` rows: kernels may pick another algorithm for another batch
    shape, and a fixed shape keeps every image's features bit-identical however the batches were cut
    (an interrupted and resumed extraction equals an uninterrupted one). Also: the copy's seconds."""
    count = pixels.shape[0]
    if count < batch_size:
        pixels = torch.cat([pixels, pixels[-1:].expand(batch_size - count, *pixels.shape[1:])])
    copy = _CopyTimer(target.device)
    pixels = copy.to_device(pixels)
    if backbone.is_cnn:
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(target.device, target.precision):
        pooled = backbone.embed(pixels)
    features = {pool: value[:count].float().cpu().numpy() for pool, value in pooled.items()}
    return features, copy.seconds()  # the features' copy back synchronised the stream: the events are done


class _CopyTimer:
    """A non-blocking host-to-device copy, timed between two CUDA events on the copying stream, so timing it
    adds no synchronisation (read only after the batch's results came back)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        cuda = device.type == "cuda"
        self.events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) if cuda else None

    def to_device(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.events is None:
            return pixels.to(self.device)
        self.events[0].record()
        pixels = pixels.to(self.device, non_blocking=True)
        self.events[1].record()
        return pixels

    def seconds(self) -> float:
        return self.events[0].elapsed_time(self.events[1]) / 1000 if self.events is not None else 0.0


def _check_finite(features: dict[str, np.ndarray], model: str) -> None:
    for pool, values in features.items():
        if not np.isfinite(values).all() or np.abs(values).max(initial=0) > 65000:
            raise MedprobeError(
                f"{model} produced non-finite or float16-overflowing {pool} features; try --precision fp32"
            )

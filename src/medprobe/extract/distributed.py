"""Extraction over several processes (one per GPU) with torch.distributed, launched by torchrun.

    torchrun --nproc-per-node N -m medprobe extract DATA --model M      (or: medprobe extract ... --gpus N)

- Rank 0 takes the caches' locks, commits what an interrupted run left in the journals, plans against the
  caches and checks the images (runner.plan_work), exactly as a single-process run does; the plan goes to
  every rank. Several backbones (--model A --model B) decode each image once on every rank, as in one process.
- The to-do list is dealt out in blocks of --batch-size, round robin (block b to rank b % N). Batches run
  at the full batch shape, so every image's features are the single-process run's bit for bit.
- Every rank appends its batches to the cache's journal under its own prefix (`batch-r<rank>-*.npz`,
  written atomically) through the same pipeline as one process (extract/pipeline.py); after a barrier rank 0
  commits the journals into the caches (runner.commit_works), as one process would. The result is the
  single-process file: same ids, order and features.
- Resume: batches of a killed run stay in the journal, and the next run's rank 0 commits them first, so
  only what no batch holds is extracted again.
Only control messages (the plan, errors, timings) travel between ranks; features go through files. That
is why the gloo backend serves CPU and GPU runs alike.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from medprobe.cache import cache_lock
from medprobe.cache.journal import Journal
from medprobe.data.samples import Dataset
from medprobe.errors import MedprobeError
from medprobe.extract import runner
from medprobe.extract.device_decode import resolve_decode
from medprobe.extract.pipeline import STAGES, CacheTarget, Job, ShardStats, StageSeconds, run_jobs
from medprobe.extract.settings import CacheInfo, ExtractSettings
from medprobe.models.backbone import load_backbone
from medprobe.runtime.device import peak_memory_mb
from medprobe.runtime.world import is_leader

# Rank 0 may hash a large archive while the others wait for its plan: a generous limit, since torchrun
# stops every rank as soon as one fails, so the limit only ends a genuine hang.
COLLECTIVE_TIMEOUT = timedelta(hours=6)


@dataclass
class ShardedJob:
    """Everything `medprobe extract --gpus N` hands its torchrun processes: written to a file, so no option
    is rebuilt into a command line."""

    data: str | None
    models: list[str]
    cache_dir: str
    settings: ExtractSettings
    image_column: str | None = None
    label_column: str | None = None

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({**asdict(self), "settings": asdict(self.settings)}))

    @classmethod
    def load(cls, path: Path) -> ShardedJob:
        fields = json.loads(path.read_text())
        return cls(**{**fields, "settings": ExtractSettings(**fields["settings"])})


def reports_path(job_file: Path) -> Path:
    return job_file.with_name(job_file.stem + ".reports.json")


def launch(nproc: int, job: ShardedJob) -> list[CacheInfo]:
    """Run `job` in `nproc` processes under torchrun on this machine; the reports rank 0 wrote."""
    device = job.settings.device
    if device != "cpu" and torch.cuda.device_count() < nproc:
        raise MedprobeError(f"--gpus {nproc}: {torch.cuda.device_count()} GPU(s) visible; use --gpus "
                            f"{max(torch.cuda.device_count(), 1)}, or --device cpu to run {nproc} CPU processes")
    with tempfile.TemporaryDirectory(prefix="medprobe-extract-") as folder:
        job_file = Path(folder) / "job.json"
        job.save(job_file)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                   "-m", "medprobe", "extract-rank", str(job_file)]
        # torchrun would pin every process to one thread (with a banner); share the cores out instead
        threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // nproc))
        code = subprocess.run(command, check=False, env={**os.environ, "OMP_NUM_THREADS": threads}).returncode
        if code == 130:
            raise SystemExit(130)  # rank 0 said what was saved and how to resume
        if code or not reports_path(job_file).is_file():
            raise MedprobeError(f"extraction with --gpus {nproc} failed (torchrun exit code {code}); the failing "
                                "process's error is printed above")
        return [CacheInfo(**{**report, "path": Path(report["path"])})
                for report in json.loads(reports_path(job_file).read_text())]


def run_job_file(job_file: Path) -> None:
    """One torchrun process of a ShardedJob; rank 0 writes the reports next to the job file."""
    from medprobe.data import load_dataset, resolve_data_argument

    job = ShardedJob.load(job_file)
    dataset = load_dataset(resolve_data_argument(Path(job.data) if job.data else None),
                           image_column=job.image_column, label_column=job.label_column)
    reports = extract_sharded(dataset, job.models, Path(job.cache_dir), job.settings)
    if is_leader():
        reports_path(job_file).write_text(json.dumps([{**asdict(r), "path": str(r.path)} for r in reports]))


def rank_device(device: str, local_rank: int, world: int) -> str:
    """Each rank drives its own GPU: `auto`/`cuda` become cuda:<local rank>."""
    if device.startswith("cuda:") and world > 1:
        raise MedprobeError(f"--device {device} pins one GPU, but {world} processes run; use --device cuda "
                            "(process i then uses GPU i)")
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        if local_rank >= torch.cuda.device_count():
            raise MedprobeError(f"{world} processes asked for, but only {torch.cuda.device_count()} GPU(s) are "
                                f"visible; use --gpus {torch.cuda.device_count()}")
        return f"cuda:{local_rank}"
    return device


def default_rank_workers(world: int) -> int:
    """The machine's cores shared between the ranks' loaders (one core each left to the rank itself)."""
    return max(1, min(8, (os.cpu_count() or 2) // world - 1))


def shard(positions: list[int], batch_size: int, rank: int, world: int) -> list[int]:
    """Blocks of `batch_size` consecutive positions, block b to rank b % world."""
    blocks = [positions[start:start + batch_size] for start in range(0, len(positions), batch_size)]
    return [p for block in blocks[rank::world] for p in block]


@dataclass
class Plan:
    """What rank 0 tells every rank before the forward passes."""

    error: str | None = None
    reports: list[CacheInfo | None] = field(default_factory=list)  # per backbone: its report when nothing is to do
    todo: list[list[int]] = field(default_factory=list)  # per backbone: sample positions still to extract


def _broadcast(value, rank: int):
    box = [value if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def extract_sharded(dataset: Dataset, models: list[str], cache_dir: Path, settings: ExtractSettings | None = None, *,
                    show_progress: bool = True) -> list[CacheInfo]:
    """`runner.extract_models` for one rank of a torchrun world; every rank returns the same reports."""
    settings = settings or ExtractSettings()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    runner.check_settings(settings)
    own_group = not dist.is_initialized()
    if own_group:
        dist.init_process_group("gloo", timeout=COLLECTIVE_TIMEOUT)
    try:
        settings = replace(settings, device=rank_device(settings.device, local_rank, world),
                           workers=default_rank_workers(world) if settings.workers is None else settings.workers)
        named = runner.locate_caches(dataset, models, cache_dir, settings)
        targets = runner.distinct(named)
        decode_device = resolve_decode(settings.decode, targets[0].device)
        journals = [Journal(target.path, prefix=f"r{rank}-") for target in targets]
        with contextlib.ExitStack() as locks:
            if rank == 0:
                for target in targets:
                    locks.enter_context(cache_lock(target.path))
            try:
                reports = _run_rank(dataset, targets, journals, rank, world, settings, decode_device=decode_device,
                                    show_progress=show_progress)
            except KeyboardInterrupt:
                if rank == 0:
                    raise runner.interrupted(targets, journals, dataset) from None
                raise SystemExit(130) from None
        return runner.per_name(named, reports)
    finally:
        if own_group:
            dist.destroy_process_group()


def _run_rank(dataset: Dataset, targets: list[CacheTarget], journals: list[Journal], rank: int, world: int,
              settings: ExtractSettings, *, decode_device: torch.device | None,
              show_progress: bool) -> list[CacheInfo]:
    works, plan = None, None
    if rank == 0:
        try:
            works = runner.plan_work(dataset, targets, journals, settings, processes=world)
            position = {s.id: i for i, s in enumerate(dataset.samples)}
            plan = Plan(reports=[w if isinstance(w, CacheInfo) else None for w in works],
                        todo=[[] if isinstance(w, CacheInfo) else [position[s.id] for s in w.todo] for w in works])
        except MedprobeError as exc:
            plan = Plan(error=str(exc))
    plan = _broadcast(plan, rank)
    if plan.error:
        _fail(plan.error, rank)
    active = [i for i, report in enumerate(plan.reports) if report is None]
    if not active:
        return list(plan.reports)
    jobs = []
    for i in active:
        backbone = works[i].backbone if rank == 0 else load_backbone(targets[i].spec, image_size=settings.image_size)
        mine = [dataset.samples[p] for p in shard(plan.todo[i], settings.batch_size, rank, world)]
        jobs.append(Job(backbone, mine, journals[i], targets[i]))
    busy = [job for job in jobs if job.todo]
    shard_stats = run_jobs(busy, dataset.root, batch_size=settings.batch_size, workers=settings.workers,
                           show_progress=show_progress and rank == 0, decode_device=decode_device) if busy else []
    stats_of = iter(shard_stats)
    mine_stats = [next(stats_of) if job.todo else ShardStats() for job in jobs]
    for stats, job in zip(mine_stats, jobs, strict=True):
        stats.peak_memory_mb = round(peak_memory_mb(job.target.device), 1)
    gathered = [None] * world
    dist.all_gather_object(gathered, mine_stats)  # also the barrier: every rank's batches are in the journal
    reports = None
    if rank == 0:
        combined = [_combine([per_rank[k] for per_rank in gathered]) for k in range(len(active))]
        try:
            reports = runner.commit_works(dataset, targets, journals, works, combined, skip_bad=settings.skip_bad)
        except MedprobeError as exc:
            reports = str(exc)
    reports = _broadcast(reports, rank)
    if isinstance(reports, str):
        _fail(reports, rank)
    return reports


def _combine(gathered: list[ShardStats]) -> ShardStats:
    """One backbone's stats for the whole world: images summed, rates summed (the ranks ran side by side)."""
    done = [s for s in gathered if s.count]
    rates = [s.rate for s in done if s.rate]
    return ShardStats(count=sum(s.count for s in gathered), rate=round(sum(rates), 2) if rates else None,
                      errors=[error for s in gathered for error in s.errors],
                      seconds=max((s.seconds for s in gathered), default=0.0),
                      dims=done[0].dims if done else {},
                      stages=StageSeconds(**{stage: max(getattr(s.stages, stage) for s in gathered)
                                             for stage in STAGES}),
                      peak_memory_mb=max(s.peak_memory_mb for s in gathered))


def _fail(message: str, rank: int) -> None:
    """An error every rank knows: rank 0 reports it, the others exit with the same code quietly."""
    if rank == 0:
        raise MedprobeError(message)
    raise SystemExit(2)

"""Extraction over several processes (one per GPU) with torch.distributed, launched by torchrun.

    torchrun --nproc-per-node N -m medprobe extract DATA --model M      (or: medprobe extract ... --gpus N)

- Rank 0 takes the cache's lock, commits what an interrupted run left in the journal, plans against the
  cache and checks the images (runner.prepare), exactly as a single-process run does; the plan goes to
  every rank.
- The to-do list is dealt out in blocks of --batch-size, round robin (block b to rank b % N). Batches run
  at the full batch shape, so every image's features are the single-process run's bit for bit.
- Every rank appends its batches to the cache's journal under its own prefix (`batch-r<rank>-*.npz`,
  written atomically); after a barrier rank 0 commits the journal into the cache (runner.finish), as one
  process would. The result is the single-process file: same ids, order and features.
- Resume: batches of a killed run stay in the journal, and the next run's rank 0 commits them first, so
  only what no batch holds is extracted again.
Only control messages (the plan, errors, timings) travel between ranks; features go through files. That
is why the gloo backend serves CPU and GPU runs alike.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass, field
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
from medprobe.models.backbone import load_backbone
from medprobe.runtime.device import peak_memory_mb

# Rank 0 may hash a large archive while the others wait for its plan: a generous limit, since torchrun
# stops every rank as soon as one fails, so the limit only ends a genuine hang.
COLLECTIVE_TIMEOUT = timedelta(hours=6)


def is_distributed() -> bool:
    """True inside a torchrun world of more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_leader() -> bool:
    return os.environ.get("RANK", "0") == "0"


def launch(nproc: int, device: str, argv: list[str]) -> int:
    """Run `medprobe <argv>` in `nproc` processes under torchrun on this machine; returns its exit code."""
    if device != "cpu" and torch.cuda.device_count() < nproc:
        raise MedprobeError(f"--gpus {nproc}: {torch.cuda.device_count()} GPU(s) visible; use --gpus "
                            f"{max(torch.cuda.device_count(), 1)}, or --device cpu to run {nproc} CPU processes")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "medprobe", *argv]
    # torchrun would pin every process to one thread (with a banner); share the cores out instead
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // nproc))
    return subprocess.run(command, check=False, env={**os.environ, "OMP_NUM_THREADS": threads}).returncode


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
    report: runner.CacheInfo | None = None  # nothing to do
    todo: list[int] = field(default_factory=list)  # sample positions still to extract


def _broadcast(value, rank: int):
    box = [value if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def extract_sharded(*, dataset: Dataset, model: str, cache_dir: Path, device: str = "auto",
                    precision: str = "auto", batch_size: int = 32, workers: int | None = None,
                    image_size: int | None = None, revision: str | None = None, show_progress: bool = True,
                    skip_bad: bool = False, decode: str = "cpu") -> runner.CacheInfo:
    """`extract` for one rank of a torchrun world; every rank returns the same report."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if batch_size < 1:
        raise MedprobeError(f"--batch-size {batch_size} must be at least 1")
    own_group = not dist.is_initialized()
    if own_group:
        dist.init_process_group("gloo", timeout=COLLECTIVE_TIMEOUT)
    try:
        device = rank_device(device, local_rank, world)
        target = runner.locate_cache(dataset=dataset, model=model, cache_dir=cache_dir, device=device,
                                     precision=precision, image_size=image_size, revision=revision, decode=decode)
        decode_device = resolve_decode(decode, target.device)
        workers = default_rank_workers(world) if workers is None else workers
        with cache_lock(target.path) if rank == 0 else contextlib.nullcontext():
            journal = Journal(target.path, prefix=f"r{rank}-")
            try:
                return _run_rank(dataset, target, journal, rank, world, batch_size=batch_size, workers=workers,
                                 image_size=image_size, skip_bad=skip_bad, decode=decode,
                                 decode_device=decode_device, show_progress=show_progress)
            except KeyboardInterrupt:
                if rank == 0:
                    raise runner.interrupted(target, journal, dataset) from None
                raise SystemExit(130) from None
    finally:
        if own_group:
            dist.destroy_process_group()


def _run_rank(dataset: Dataset, target: runner.CacheTarget, journal: Journal, rank: int, world: int, *,
              batch_size: int, workers: int, image_size: int | None, skip_bad: bool, decode: str,
              decode_device: torch.device | None, show_progress: bool) -> runner.CacheInfo:
    work, plan = None, None
    if rank == 0:
        try:
            runner.recover(target, journal, dataset)
            work = runner.prepare(dataset, target, journal, batch_size=batch_size, workers=workers,
                                  image_size=image_size, skip_bad=skip_bad, decode=decode, processes=world)
            if isinstance(work, runner.CacheInfo):
                plan = Plan(report=work)
            else:
                position = {s.id: i for i, s in enumerate(dataset.samples)}
                plan = Plan(todo=[position[s.id] for s in work.todo])
        except MedprobeError as exc:
            plan = Plan(error=str(exc))
    plan = _broadcast(plan, rank)
    if plan.error:
        _fail(plan.error, rank)
    if plan.report is not None:
        return plan.report
    backbone = work.backbone if rank == 0 else load_backbone(target.spec, image_size=image_size)
    mine = [dataset.samples[i] for i in shard(plan.todo, batch_size, rank, world)]
    stats = {"count": 0, "rate": None, "errors": [], "seconds": 0.0, "dims": {}}
    if mine:
        stats = runner._run(backbone, mine, dataset.root, journal, target, batch_size=batch_size, workers=workers,
                            show_progress=show_progress and rank == 0, decode_device=decode_device)
    stats["peak_memory_mb"] = round(peak_memory_mb(target.device), 1)
    gathered = [None] * world
    dist.all_gather_object(gathered, stats)  # also the barrier: every rank's batches are in the journal
    combined = _combine(gathered)
    report = None
    if rank == 0:
        try:
            report = runner.finish(dataset, target, journal, work, combined, skip_bad=skip_bad)
        except MedprobeError as exc:
            report = str(exc)
    report = _broadcast(report, rank)
    if isinstance(report, str):
        _fail(report, rank)
    return report


def _combine(gathered: list[dict]) -> dict:
    """One stats dict for the whole world: images summed, rates summed (the ranks ran side by side)."""
    done = [s for s in gathered if s["count"]]
    rates = [s["rate"] for s in done if s["rate"]]
    return {"count": sum(s["count"] for s in gathered), "rate": round(sum(rates), 2) if rates else None,
            "errors": [error for s in gathered for error in s["errors"]],
            "seconds": max((s["seconds"] for s in gathered), default=0.0),
            "dims": done[0]["dims"] if done else {},
            "peak_memory_mb": max(s["peak_memory_mb"] for s in gathered)}


def _fail(message: str, rank: int) -> None:
    """An error every rank knows: rank 0 reports it, the others exit with the same code quietly."""
    if rank == 0:
        raise MedprobeError(message)
    raise SystemExit(2)

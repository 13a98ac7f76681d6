"""Extraction over several processes (one per GPU) with torch.distributed, launched by torchrun.

    torchrun --nproc-per-node N -m medprobe extract DATA --model M      (or: medprobe extract ... --gpus N)

- Rank 0 plans once against the cache (freshness, header checks), so every rank agrees on the work.
- The to-do list is dealt out in blocks of --batch-size, round robin (block b to rank b % N): each batch a
  rank forms is a batch the single-process run forms (with at most one loader worker), so the features are
  the same bit for bit on the same device and precision.
- HDF5 has no safe concurrent writers, so rank 0 alone writes the cache (holding its lock) and every other
  rank writes its rows to a part file, `<cache>.parts/rank<r>.h5`, itself a medprobe cache. After a
  barrier rank 0 merges the parts' done rows through the same CacheWriter and removes them: the result is
  one cache with the single-process run's ids, order and features.
- Resume: parts left by an interrupted run are merged first (rows whose source is unchanged), so a
  rerun extracts only what neither the cache nor a part holds.
Only control messages (the plan, errors, timings) travel between ranks; features go through files. That
is why the gloo backend serves CPU and GPU runs alike.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from medprobe.cache import CacheWriter, FreshnessPlan, plan_rows, read_contents
from medprobe.data.samples import Dataset, Sample
from medprobe.errors import MedprobeError
from medprobe.extract import runner
from medprobe.extract.device import peak_memory_mb
from medprobe.extract.device_decode import resolve_decode
from medprobe.models.backbone import load_backbone, weights_identity

# Rank 0 may hash a large archive while the others wait for its plan: a generous limit, since torchrun
# stops every rank as soon as one fails, so the limit only ends a genuine hang.
COLLECTIVE_TIMEOUT = timedelta(hours=6)
MERGE_BLOCK_ROWS = 4096


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


def parts_folder(cache: Path) -> Path:
    return cache.with_suffix(".parts")


@dataclass
class Plan:
    """What rank 0 tells every rank before the forward passes."""

    error: str | None = None
    up_to_date: bool = False
    todo: list[int] = field(default_factory=list)  # sample positions still to extract
    reused: int = 0
    recovered: int = 0  # rows taken from an interrupted run's part files
    changed: int = 0


def _broadcast(value, rank: int):
    box = [value if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def extract_sharded(*, dataset: Dataset, model: str, cache_dir: Path, device: str = "auto",
                    precision: str = "auto", batch_size: int = 32, workers: int | None = None,
                    image_size: int | None = None, revision: str | None = None, show_progress: bool = True,
                    decode: str = "cpu") -> runner.ExtractReport:
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
                                     precision=precision, image_size=image_size, revision=revision)
        decode_device = resolve_decode(decode, target.device)
        workers = default_rank_workers(world) if workers is None else workers
        plan, freshness = None, None
        if rank == 0:
            plan, freshness = _first_plan(dataset, target)
        plan = _broadcast(plan, rank)
        if plan.error:
            _fail(plan.error, rank)
        if plan.up_to_date:
            return runner.ExtractReport(model, target.path, 0, plan.reused, 0, None)
        backbone = load_backbone(target.spec, image_size=image_size)
        writer = None
        try:
            if rank == 0:
                writer = CacheWriter(target.path, runner.provenance(target, backbone, dataset, batch_size=batch_size,
                                                                    workers=workers, decode=decode, processes=world))
                plan = _prepare_cache(writer, backbone, dataset, freshness)
            plan = _broadcast(plan, rank)
            if plan.error:
                _fail(plan.error, rank)
            started = time.perf_counter()
            stats = _extract_shard(backbone, dataset, target, writer, plan.todo, rank, world, batch_size=batch_size,
                                   workers=workers, decode_device=decode_device, show_progress=show_progress)
            gathered = [None] * world
            dist.all_gather_object(gathered, stats)  # also the barrier: every part file is complete
            if rank == 0:
                _merge(writer, [parts_folder(target.path) / f"rank{r}.h5" for r in range(1, world)], dataset)
                shutil.rmtree(parts_folder(target.path), ignore_errors=True)
                done = [s for s in gathered if s["count"]]
                if done:
                    writer.set_attrs({
                        "embed_dims": done[0]["dims"],
                        "extract_seconds": round(time.perf_counter() - started, 3),
                        "images_extracted": sum(s["count"] for s in done),
                        "images_per_second": round(sum(s["rate"] or 0 for s in done), 2) or None,
                        "peak_memory_mb": max(s["peak_memory_mb"] for s in gathered),
                    })
        finally:
            if writer is not None:
                writer.close()
        dist.barrier()  # the others return once rank 0 has merged and closed the cache
    finally:
        if own_group:
            dist.destroy_process_group()
    errors = [error for s in gathered for error in s["errors"]]
    if errors:
        _fail(f"{len(errors)} image(s) failed to decode, the rest were cached: {errors[0]}"
              f"{' (and more)' if len(errors) > 1 else ''}", rank)
    extracted = sum(s["count"] for s in gathered)
    rates = [s["rate"] for s in gathered if s["rate"]]
    return runner.ExtractReport(model, target.path, extracted, plan.reused + plan.recovered, plan.changed,
                                round(sum(rates), 2) if rates else None)


def _fail(message: str, rank: int) -> None:
    """An error every rank knows: rank 0 reports it, the others exit with the same code quietly."""
    if rank == 0:
        raise MedprobeError(message)
    raise SystemExit(2)


def _first_plan(dataset: Dataset, target: runner.CacheTarget) -> tuple[Plan, FreshnessPlan | None]:
    """Rank 0, before any weights load: what is fresh, and are the images to extract readable."""
    contents = read_contents(target.path) if target.path.exists() else None
    known_identity = weights_identity(target.spec)
    if contents is not None and known_identity and contents.attrs.get("weights_identity") != known_identity:
        contents = None  # the weights moved on: every row is stale
    plan = plan_rows(contents, dataset.samples, dataset.root)
    if plan.up_to_date and known_identity is not None:  # leftover parts (nothing needed) go with the next run
        if plan.restat:
            with CacheWriter(target.path, {}) as writer:
                writer.update_stats(plan.restat)
        return Plan(up_to_date=True, reused=plan.fresh), None
    try:
        runner.validate_images([dataset.samples[i] for i in plan.todo])
    except MedprobeError as exc:
        return Plan(error=str(exc)), None
    return Plan(todo=plan.todo, reused=plan.fresh, changed=len(plan.changed)), plan


def _prepare_cache(writer: CacheWriter, backbone, dataset: Dataset, plan: FreshnessPlan) -> Plan:
    """Rank 0 with the cache locked, as a single-process run: add the rows to extract in dataset order, mark
    changed ones pending; then recover what an interrupted run's parts hold."""
    samples = dataset.samples
    if writer.file.attrs.get("weights_identity", "") not in ("", backbone.weights_identity):
        writer.clear()  # the weights changed since planning (a hub model fetched just now): all rows anew
        plan = plan_rows(None, samples, dataset.root)
        try:
            runner.validate_images(samples)
        except MedprobeError as exc:
            return Plan(error=str(exc))
    writer.set_attrs({"weights_identity": backbone.weights_identity})
    writer.update_stats(plan.restat)
    known = set(writer.ids)
    writer.append_rows([samples[i].id for i in plan.todo if samples[i].id not in known])
    row_of = {sample_id: row for row, sample_id in enumerate(writer.ids)}
    writer.mark_pending([row_of[samples[i].id] for i in plan.changed])
    recovered = _recover_parts(writer, backbone.weights_identity, dataset, plan.todo)
    remaining = [i for i in plan.todo if samples[i].id not in recovered]
    return Plan(todo=remaining, reused=plan.fresh, recovered=len(recovered), changed=len(plan.changed))


def _recover_parts(writer: CacheWriter, identity: str, dataset: Dataset, todo: list[int]) -> set[str]:
    """Merge the done, still-fresh rows of an interrupted run's part files; returns their ids."""
    folder = parts_folder(writer.path)
    if not folder.is_dir():
        return set()
    wanted = [dataset.samples[i] for i in todo]
    recovered: set[str] = set()
    for path in sorted(folder.glob("rank*.h5")):
        try:
            part = read_contents(path)
        except MedprobeError:
            continue  # a part cut off mid-creation holds nothing usable
        if part.attrs.get("weights_identity") != identity:
            continue
        fresh = plan_rows(part, wanted, dataset.root)
        stale = set(fresh.todo)
        ids = {wanted[i].id for i in range(len(wanted)) if i not in stale} - recovered
        recovered |= _merge(writer, [path], dataset, only=ids, restat=fresh.restat)
    shutil.rmtree(folder, ignore_errors=True)
    return recovered


def _merge(writer: CacheWriter, parts: list[Path], dataset: Dataset, *, only: set[str] | None = None,
           restat: dict[str, str] | None = None) -> set[str]:
    """Copy the done rows of `parts` (those in `only`, when given) into the cache; returns their ids."""
    import h5py

    from medprobe.cache import layout

    row_of = {sample_id: row for row, sample_id in enumerate(writer.ids)}
    restat = restat or {}
    merged: set[str] = set()
    for path in parts:
        if not path.exists():
            continue
        part = read_contents(path)
        with h5py.File(path, "r") as handle:
            for start in range(0, len(part.ids), MERGE_BLOCK_ROWS):
                stop = min(start + MERGE_BLOCK_ROWS, len(part.ids))
                keep = [i for i in range(start, stop) if part.done[i] and part.ids[i] in row_of
                        and (only is None or part.ids[i] in only)]
                if not keep:
                    continue
                local = np.asarray(keep) - start
                features = {pool: handle[layout.FEATURES][pool][start:stop][local] for pool in part.dims}
                rows = np.asarray([row_of[part.ids[i]] for i in keep], dtype=np.int64)
                stats = [restat.get(part.ids[i], part.stats[i]) for i in keep]
                fingerprints = [part.fingerprints[i] for i in keep]
                for run in _runs(rows):  # contiguous row ranges write as slices, far faster than row lists
                    writer.write(rows[run], {p: v[run] for p, v in features.items()},
                                 [fingerprints[i] for i in run], [stats[i] for i in run])
                merged.update(part.ids[i] for i in keep)
    return merged


def _runs(rows: np.ndarray) -> list[np.ndarray]:
    """Index arrays of the maximal runs of consecutive row numbers in `rows` (in the given order)."""
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    return np.split(np.arange(len(rows)), breaks)


def _extract_shard(backbone, dataset: Dataset, target: runner.CacheTarget, writer: CacheWriter | None,
                   todo: list[int], rank: int, world: int, *, batch_size: int, workers: int,
                   decode_device: torch.device | None, show_progress: bool) -> dict:
    """This rank's blocks, into the cache (rank 0) or into its part file."""
    mine: list[Sample] = [dataset.samples[i] for i in shard(todo, batch_size, rank, world)]
    stats = {"count": 0, "rate": None, "dims": {}, "errors": [], "peak_memory_mb": 0.0}
    part = None
    if rank == 0:
        row_of = {sample_id: row for row, sample_id in enumerate(writer.ids)}
        rows = [row_of[s.id] for s in mine]
    else:
        folder = parts_folder(target.path)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"rank{rank}.h5"
        path.unlink(missing_ok=True)
        part = writer = CacheWriter(path, {"model_name": target.spec.name, "weights_identity":
                                           backbone.weights_identity, "part_of": target.path.name})
        writer.append_rows([s.id for s in mine])
        rows = list(range(len(mine)))
    try:
        if mine:
            stats = runner._run(backbone, mine, dataset.root, rows, writer, target, batch_size=batch_size,
                                workers=workers, show_progress=show_progress and rank == 0,
                                decode_device=decode_device)
    finally:
        if part is not None:
            part.close()
    return {"count": stats["count"], "rate": stats["rate"], "dims": stats.get("dims", {}),
            "errors": stats["errors"], "peak_memory_mb": round(peak_memory_mb(target.device), 1)}

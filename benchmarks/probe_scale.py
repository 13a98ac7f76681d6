"""Probe time and peak memory against the number of samples, in memory and out of core, in one run.

For each N, a dataset of N samples (manifest with a seeded 70/10/20 train/val/test `split` column, so one
fold; every file a hard link to one blank PNG, so a million samples cost only directory entries) gets a
cache of synthetic 384-d features: 4 classes whose means differ by `--separation` x N(0, 1) per feature,
plus unit noise (the generator of probe_speed.py; 0.05 is weakly separable, so the solvers work as hard as
on real data). Then, each in a fresh child process, the full `medprobe probe --clf logreg` path runs:

  memory       in-memory logreg: the whole matrix read, standardised, 45 C values (warm-started L-BFGS)
  out-of-core  logreg-sgd: the cache read block by block, streamed standardisation, SGD on 7 alphas

Reported: wall time of probe(), peak resident memory of the probe process and of its busiest fold worker
(VmHWM of each), and test balanced accuracy (bootstrap 200 resamples, the same for both). Sizes
listed in --skip-memory run out of core only (say so when quoting).

    python benchmarks/probe_scale.py [--sizes 10000,100000,1000000] [--skip-memory 1000000] [--separation 0.05]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from child_run import measure_in_child

os.environ.setdefault("HF_HUB_OFFLINE", "1")
WRITE_BLOCK = 65536


def build_dataset(root: Path, n: int, seed: int = 0) -> Path:
    """N manifest rows, each file a hard link to its folder's blank PNG, 10,000 per folder."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    splits = rng.choice(["train", "val", "test"], size=n, p=[0.7, 0.1, 0.2])
    rows = []
    for i in range(n):
        folder = root / "img" / f"{i // 10000:03d}"
        if i % 10000 == 0:  # a blank per folder: a file takes at most 65,000 hard links
            folder.mkdir(parents=True)
            blank = folder / "blank.png"
            Image.new("L", (2, 2)).save(blank)
        os.link(blank, folder / f"{i:07d}.png")
        rows.append((f"img/{i // 10000:03d}/{i:07d}.png", f"class{labels[i]}", splits[i]))
    manifest = root / "labels.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        writer.writerows(rows)
    return manifest


def write_features(manifest: Path, cache_dir: Path, dim: int, separation: float, seed: int = 0) -> None:
    from medprobe.cache import CacheWriter, cache_path
    from medprobe.data import load_dataset
    from medprobe.data.signature import file_stat, fingerprint_bytes
    from medprobe.models.registry import resolve_model

    dataset = load_dataset(manifest)
    rng = np.random.default_rng(seed)
    y = np.array([int(s.label[-1]) for s in dataset.samples])
    means = rng.normal(0, 1, (4, dim)) * separation
    spec = resolve_model("dinov2-small")
    path = cache_path(cache_dir, dataset.cache_slug, spec.slug, "benchmark")
    fingerprint = fingerprint_bytes(dataset.samples[0].path.read_bytes())  # every file has the same bytes
    with CacheWriter(path, {"model_name": "dinov2-small", "pools": ["gap"], "weights_identity": "synthetic"}) as writer:
        writer.append_rows(dataset.ids)
        for start in range(0, len(y), WRITE_BLOCK):
            stop = min(start + WRITE_BLOCK, len(y))
            block = means[y[start:stop]] + rng.normal(0, 1, (stop - start, dim))
            writer.write(np.arange(start, stop), {"gap": block.astype(np.float32)}, [fingerprint] * (stop - start),
                         [file_stat(s.path) for s in dataset.samples[start:stop]])


def peak_rss_mb() -> float:
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent that forked this process
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024


def worker_peak() -> tuple[int, float]:
    return os.getpid(), peak_rss_mb()


def one_probe(manifest: Path, cache_dir: Path, out_dir: Path, out_of_core: bool) -> dict:
    """Runs in a child process: the probe, nothing else."""
    from joblib import Parallel, delayed

    from medprobe.data import load_dataset
    from medprobe.probe.runner import ProbeSettings, probe

    started = time.perf_counter()
    record = probe(dataset=load_dataset(manifest), models=None, cache_dir=cache_dir, out_dir=out_dir,
                   settings=ProbeSettings(classifiers=("logreg",), bootstrap=200, out_of_core=out_of_core),
                   show_progress=False)[0]
    seconds = time.perf_counter() - started
    # ask the (reused) fold workers for their own VmHWM: a child's ru_maxrss would include the parent's
    # memory at the moment it was forked
    peaks = dict(Parallel(n_jobs=-1)(delayed(worker_peak)() for _ in range(16)))
    return {"method": record["method"], "seconds": round(seconds, 1),
            "fit_seconds": record["timings"]["fit_seconds"], "peak_mb": round(peak_rss_mb()),
            "worker_peak_mb": round(max(peaks.values())),
            "balanced_accuracy": round(record["metrics"]["balanced_accuracy"]["value"], 4),
            "hyperparameters": record["hyperparameters"][0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--skip-memory", default="", help="sizes to run out of core only")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--separation", type=float, default=0.05)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        manifest, cache_dir, out_dir, mode = args.one
        print(json.dumps(one_probe(Path(manifest), Path(cache_dir), Path(out_dir), mode == "out-of-core")))
        return
    skip = {int(s) for s in args.skip_memory.split(",") if s}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for n in (int(s) for s in args.sizes.split(",")):
            began = time.perf_counter()
            manifest = build_dataset(tmp / f"data{n}", n)
            write_features(manifest, tmp / "cache", args.dim, args.separation)
            row = {"n": n, "dim": args.dim, "separation": args.separation,
                   "setup_seconds": round(time.perf_counter() - began, 1)}
            for mode in ("memory", "out-of-core"):
                if mode == "memory" and n in skip:
                    continue
                row[mode] = measure_in_child(__file__, manifest, tmp / "cache", tmp / f"out-{mode}", mode)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

"""Sharded extraction (torchrun, N processes) against a single-process run on the same machine, in one run:
wall time of the whole command each way (run twice each, in the order single, sharded, sharded, single),
and whether all the caches are the same (ids, order, source fingerprints and stats, done flags, and every
feature bit for bit).

The backbone is dinov2-small-shaped (ViT-S/14, random weights, the real one's cost), on 512x512 JPEGs,
default precision and workers, so the commands are exactly what a user types:

    medprobe extract DATA --model M --device cpu
    medprobe extract DATA --model M --device cpu --gpus 2        (torchrun, gloo, 2 CPU processes)

    python benchmarks/distributed_extract.py [--images 256] [--batch-size 16] [--processes 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))
from extract_throughput import save_dinov2_small_shape, write_jpegs  # noqa: E402


def same_cache(left: Path, right: Path) -> bool:
    with h5py.File(left, "r") as a, h5py.File(right, "r") as b:
        for name in ("ids", "source_fingerprint", "source_stat", "done"):
            if not np.array_equal(a[name][()], b[name][()]):
                return False
        if sorted(a["features"]) != sorted(b["features"]):
            return False
        return all(np.array_equal(a["features"][p][()].view(np.uint16), b["features"][p][()].view(np.uint16))
                   for p in a["features"])


def timed_extract(data: Path, model: Path, cache_dir: Path, args, *extra: str) -> tuple[float, Path, dict]:
    command = [sys.executable, "-m", "medprobe", "extract", str(data), "--model", str(model), "--cache-dir",
               str(cache_dir), "--device", args.device, "--batch-size", str(args.batch_size), *extra]
    began = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    path = next(cache_dir.rglob("*.h5"))
    with h5py.File(path, "r") as handle:
        attrs = {k: handle.attrs[k] for k in ("extract_seconds", "images_per_second", "precision", "workers")}
    return seconds, path, {k: v.item() if hasattr(v, "item") else str(v) for k, v in attrs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {"single": [], "sharded": []}
    identical = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_jpegs(tmp / "jpegs", args.images)
        model = save_dinov2_small_shape(tmp / "dinov2-small-shape")
        # single, sharded, sharded, single: drift (other jobs on a shared machine) hits both sides alike
        for attempt, mode in enumerate(("single", "sharded", "sharded", "single")):
            extra = ("--gpus", str(args.processes)) if mode == "sharded" else ()
            seconds, path, attrs = timed_extract(tmp / "jpegs", model, tmp / f"cache{attempt}", args, *extra)
            runs[mode].append({"wall_seconds": round(seconds, 1), **attrs, "path": path})
        reference = runs["single"][0]["path"]
        identical = [same_cache(reference, run["path"]) for run in runs["single"][1:] + runs["sharded"]]
    walls = {mode: [run["wall_seconds"] for run in entries] for mode, entries in runs.items()}
    result = {
        "images": args.images, "batch_size": args.batch_size, "device": args.device, "cpu_count": os.cpu_count(),
        "processes": args.processes,
        "runs": {mode: [{k: v for k, v in run.items() if k != "path"} for run in entries]
                 for mode, entries in runs.items()},
        "sharded_over_single_wall": round(float(np.mean(walls["sharded"]) / np.mean(walls["single"])), 2),
        "identical_output": all(identical),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

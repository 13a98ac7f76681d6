"""Extraction's peak memory against the number of images: does it stay flat as the archive grows?

For each size N, a folder of N distinct 32x32 PNGs is extracted from scratch by `extract()` in a fresh child
process with a tiny ViT (DINOv2 config: 32 wide, 4 blocks, 32x32 input; the cost per image is small, so
100k images fit in minutes on a 2-core CPU, and what grows with N shows). Reported per size: the child's
own peak resident memory (VmHWM), the largest loader worker's peak (RUSAGE_CHILDREN), wall time, rate, and
the cache's size on disk. Features go to the cache batch by batch, so only per-sample bookkeeping (ids,
paths, stats) may grow with N.

    python benchmarks/extract_memory.py [--sizes 1000,10000,100000] [--workers 1] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from child_run import measure_in_child


def write_pngs(folder: Path, count: int, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label in ("a", "b"):
        (folder / label).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / ("a" if i % 2 else "b") / f"{i:06d}.png", compress_level=1)


def save_tiny_vit(folder: Path) -> Path:
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                             patch_size=8, image_size=32)).save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def peak_rss_mb() -> float:
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent that forked this process
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024


def one_size(folder: Path, model: Path, cache_dir: Path, batch_size: int, workers: int) -> dict:
    """Runs in a child process: load the dataset and extract it, nothing else."""
    import torch

    # the tiny model gains nothing from a second thread, and on a busy shared 2-core machine OpenMP's
    # spin-waiting made its batches up to 40x slower
    torch.set_num_threads(1)
    from medprobe.data import load_dataset
    from medprobe.extract.runner import extract

    started = time.perf_counter()
    dataset = load_dataset(folder)
    report = extract(dataset=dataset, model=str(model), cache_dir=cache_dir, device="cpu", precision="fp32",
                     batch_size=batch_size, workers=workers, show_progress=False)
    seconds = time.perf_counter() - started
    return {"images": len(dataset.samples), "seconds": round(seconds, 1), "img_s": report.images_per_second,
            "peak_mb": round(peak_rss_mb()),
            "worker_peak_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
            "cache_mb": round(report.path.stat().st_size / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        folder, model, cache_dir = (Path(p) for p in args.one)
        print(json.dumps(one_size(folder, model, cache_dir, args.batch_size, args.workers)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = save_tiny_vit(tmp / "tiny-vit")
        for n in (int(s) for s in args.sizes.split(",")):
            began = time.perf_counter()
            write_pngs(tmp / f"png{n}", n)
            written = time.perf_counter() - began
            row = measure_in_child(__file__, tmp / f"png{n}", model, tmp / f"cache{n}", "--batch-size",
                                   args.batch_size, "--workers", args.workers)
            row["writing_pngs_seconds"] = round(written, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

"""Probe re-run cost against extraction cost, on this machine, in one run.

For each feature width (384 = ViT-S, 1024 = ViT-L) and dataset size N, a dataset of N tiny image files
gets a cache of synthetic features (4 classes, weakly separable, so the solvers work as hard as on real
data), then the full `medprobe probe` path runs: cache read and freshness check, 5-fold splits, all
three classifiers with their default grids, 5000 bootstrap resamples, records. Each size runs in its own
process, so peak memory (the probe process plus its fold workers) is clean.

The extraction side is measured in the same run: the rate of `medprobe extract` with a dinov2-small-shaped
(384-d) or dinov2-large-shaped (1024-d) backbone on 512x512 JPEGs, bf16, with which "extraction time for N
images" = N / rate.

    python benchmarks/probe_speed.py [--sizes 1000,10000] [--dims 384,1024] [--json out.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from child_run import measure_in_child

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build_dataset(root: Path, n: int, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    (root / "img").mkdir(parents=True)
    Image.new("L", (2, 2)).save(root / "img" / "blank.png")
    blank = (root / "img" / "blank.png").read_bytes()
    rows = []
    for i, label in enumerate(labels):
        (root / "img" / f"{i:06d}.png").write_bytes(blank)
        rows.append({"path": f"img/{i:06d}.png", "label": f"class{label}"})
    manifest = root / "labels.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def write_features(manifest: Path, cache_dir: Path, dim: int, seed: int = 0) -> None:
    from medprobe.cache import CacheWriter, cache_path
    from medprobe.data import load_dataset
    from medprobe.data.signature import file_stat, fingerprint_bytes
    from medprobe.models.registry import resolve_model

    dataset = load_dataset(manifest)
    rng = np.random.default_rng(seed)
    y = np.array([int(s.label[-1]) for s in dataset.samples])
    features = rng.normal(0, 1, (4, dim))[y] * 0.05 + rng.normal(0, 1, (len(y), dim))
    model = "dinov2-small" if dim == 384 else "dinov2-large"
    spec = resolve_model(model)
    path = cache_path(cache_dir, dataset.cache_slug, spec.slug, "benchmark")
    fingerprint = fingerprint_bytes(dataset.samples[0].path.read_bytes())  # every file has the same bytes
    with CacheWriter(path, {"model_name": model, "pools": ["gap"], "weights_identity": "synthetic"}) as writer:
        writer.append_rows(dataset.ids)
        writer.write(np.arange(len(y)), {"gap": features.astype(np.float32)}, [fingerprint] * len(y),
                     [file_stat(s.path) for s in dataset.samples])


def one_probe(n: int, dim: int, methods: tuple[str, ...]) -> dict:
    """Runs in a child process: build, then time the probe re-run."""
    from medprobe.data import load_dataset
    from medprobe.probe.runner import ProbeSettings, probe

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        manifest = build_dataset(tmp / "data", n)
        write_features(manifest, tmp / "cache", dim)
        started = time.perf_counter()
        records = probe(dataset=load_dataset(manifest), models=None, cache_dir=tmp / "cache", out_dir=tmp / "out",
                        settings=ProbeSettings(classifiers=methods), show_progress=False)
        seconds = time.perf_counter() - started
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True)  # fold workers exit, so their peak counts as a child's
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent that forked this process
    own_mb = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                  if line.startswith("VmHWM")) / 1024
    worker_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"n": n, "dim": dim, "probe_seconds": round(seconds, 1), "peak_memory_mb": round(own_mb),
            "peak_worker_memory_mb": round(worker_mb),
            "per_classifier_seconds": {r["method"]: r["timings"]["total_seconds"] for r in records},
            "balanced_accuracy": {r["method"]: round(r["metrics"]["balanced_accuracy"]["value"], 3) for r in records}}


def extraction_rate(dim: int, images: int = 48) -> float:
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    from medprobe.data import load_dataset
    from medprobe.extract.runner import extract

    sys.path.insert(0, str(Path(__file__).parent))
    from extract_throughput import write_jpegs

    width = {384: (384, 12, 6), 1024: (1024, 24, 16)}[dim]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_jpegs(tmp / "jpegs", images)
        Dinov2Model(Dinov2Config(hidden_size=width[0], num_hidden_layers=width[1], num_attention_heads=width[2],
                                 intermediate_size=4 * width[0], patch_size=14)).save_pretrained(tmp / "model")
        BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}).save_pretrained(
            tmp / "model")
        report = extract(dataset=load_dataset(tmp / "jpegs"), model=str(tmp / "model"), cache_dir=tmp / "cache",
                         precision="bf16", batch_size=16, show_progress=False)
    return report.images_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--dims", default="384,1024")
    parser.add_argument("--clf", default="logreg,svm,knn", help="classifiers to run (default: all three)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--one", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    methods = tuple(args.clf.split(","))
    if args.one:
        print(json.dumps(one_probe(*args.one, methods)))
        return
    dims = [int(d) for d in args.dims.split(",")]
    rates = {dim: extraction_rate(dim) for dim in dims}
    rows = []
    for dim in dims:
        for n in (int(s) for s in args.sizes.split(",")):
            row = measure_in_child(__file__, n, dim, "--clf", args.clf)
            row["extraction_img_s"] = round(rates[dim], 2)
            row["extraction_seconds_estimate"] = round(n / rates[dim], 1)
            row["probe_over_extraction"] = round(row["probe_seconds"] / row["extraction_seconds_estimate"], 4)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

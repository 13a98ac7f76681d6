"""Volume slicing throughput: can decoding .nii.gz volumes keep up with extraction?

Writes BraTS-sized volumes (240x240x155 int16, gzip) and measures, in one run:

  per-volume  medprobe's reader: each volume read + decompressed once, canonicalised, windowed, then every
              selected slice cut, resampled and turned into RGB (the work of one DataLoader worker)
  per-slice   the naive way: nibabel loads (decompresses) the whole volume again for every slice
  loader      medprobe's extraction DataLoader (decode + the backbone's resize/crop/normalise), `--workers`
  forward     the bare forward pass of efficientnet-lite0 (bf16 autocast) on preprocessed tensors

Slices per second for each, and the ratio loader/forward: above 1, decoding is not the bottleneck.

    python benchmarks/slicing_throughput.py [--volumes 8] [--slices middle:32] [--workers 1]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import nibabel as nib
import numpy as np
import torch


def write_volumes(folder: Path, count: int, shape=(240, 240, 155)) -> Path:
    rng = np.random.default_rng(0)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in shape), indexing="ij")
    head = (x / 0.8) ** 2 + (y / 0.9) ** 2 + (z / 0.9) ** 2 < 1
    rows = ["path,label,group"]
    for i in range(count):
        voxels = (head * (400 + 60 * rng.standard_normal(shape, dtype=np.float32))).astype(np.int16)
        nib.save(nib.Nifti1Image(voxels, np.diag([1.0, 1.0, 1.0, 1.0])), folder / f"p{i:03d}.nii.gz")
        rows.append(f"p{i:03d}.nii.gz,{'ab'[i % 2]},p{i:03d}")
    (folder / "rows.csv").write_text("\n".join(rows) + "\n")
    return folder / "rows.csv"


def rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--volumes", type=int, default=8)
    parser.add_argument("--slices", default="middle:32")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    from medprobe.data import load_dataset
    from medprobe.data.reader import read_all
    from medprobe.extract.loader import make_loader
    from medprobe.models.backbone import load_backbone
    from medprobe.models.registry import resolve_model
    from medprobe.models.transforms import ImageTransform
    from medprobe.runtime.device import autocast, resolve_precision

    torch.set_num_threads(os.cpu_count() or 2)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_volumes(folder, args.volumes)
        (folder / "spec.toml").write_text(f'manifest = "rows.csv"\naxis = "axial"\nslices = "{args.slices}"\n')
        dataset = load_dataset(folder / "spec.toml")
        samples, n = dataset.samples, len(dataset.samples)
        size_mb = sum(p.stat().st_size for p in folder.glob("*.nii.gz")) / 2**20

        started = time.perf_counter()
        assert all(item.error is None for item in read_all(samples, dataset.root))
        per_volume = rate(n, time.perf_counter() - started)

        started = time.perf_counter()
        naive = samples[: max(4, n // args.volumes)]  # one volume's slices is enough to time it
        for sample in naive:
            voxels = np.asarray(nib.as_closest_canonical(nib.load(sample.path)).dataobj, dtype=np.float32)
            np.rot90(voxels[:, :, sample.slice.index]).copy()
        per_slice = rate(len(naive), time.perf_counter() - started)

        device = torch.device("cpu")
        precision = resolve_precision("auto", device)
        backbone = load_backbone(resolve_model("efficientnet-lite0"))
        loader = make_loader(samples, dataset.root, [ImageTransform(backbone.preprocessing)],
                             batch_size=args.batch_size, workers=args.workers, pin_memory=False)
        batches, started = [], time.perf_counter()
        for batch in loader:
            batches.append(batch["pixels"][0])
        loader_rate = rate(n, time.perf_counter() - started)

        module = backbone.module.to(memory_format=torch.channels_last).eval()
        with torch.inference_mode(), autocast(device, precision):
            backbone.embed(batches[0].contiguous(memory_format=torch.channels_last))  # warm-up
            started = time.perf_counter()
            for pixels in batches:
                backbone.embed(pixels.contiguous(memory_format=torch.channels_last))
        forward = rate(n, time.perf_counter() - started)
        del module

    print(json.dumps({
        "volumes": args.volumes, "shape": [240, 240, 155], "gzip_mb": round(size_mb, 1), "slices": n,
        "rule": args.slices, "workers": args.workers, "cpu_threads": torch.get_num_threads(),
        "slices_per_second": {"per_volume_reader": per_volume, "per_slice_naive": per_slice,
                              "loader": loader_rate, "forward_efficientnet_lite0": forward},
        "per_volume_over_per_slice": round(per_volume / per_slice, 1),
        "loader_over_forward": round(loader_rate / forward, 2),
        "precision": precision,
    }, indent=2))


if __name__ == "__main__":
    main()

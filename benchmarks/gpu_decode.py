"""GPU-side JPEG decoding: extraction throughput with CPU decoding and with GPU decoding, against the bare
forward pass of the same backbone, in one run on one GPU.

  bare        the backbone's forward (all pools) on preprocessed tensors already on the GPU
  cpu decode  `extract(decode="cpu")`: loader workers read, decode (PIL) and preprocess; forward; HDF5 writes
  gpu decode  `extract(decode="gpu")`: workers read the bytes; the batch is decoded with nvJPEG
              (torchvision.io.decode_jpeg on the GPU) and resized, cropped and normalised there
  loader      each path's loader alone, no forward: how fast the images can be supplied

Rates are marginal (model loading and the first batch left out). The runs alternate (bare, cpu, gpu, gpu,
cpu, bare) so drift cancels; each rate is the mean of its two runs. The backbone is dinov2-small-shaped
(ViT-S/14, random weights, the real one's cost), built from its config: no download, and none of nibabel,
pydicom or the efficientnet packages is needed. The CPU- and GPU-decoded caches are compared per image
(cosine of the `cls` features).

    PYTHONPATH=$PWD/src python benchmarks/gpu_decode.py [--images 4096] [--batch-size 128] [--workers N]

`--smoke` runs the same code on a CPU with tiny sizes (decoding "on the device" = on the CPU) to check the
script itself; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from extract_throughput import marginal_rate, save_dinov2_small_shape  # noqa: E402


def write_jpeg(args: tuple[Path, int, int]) -> None:
    folder, index, size = args
    rng = np.random.default_rng(index)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = 0.5 + 0.3 * np.sin(6 * xx + index) * np.cos(4 * yy - index) + rng.normal(0, 0.05, (size, size))
    pixels = (np.clip(np.stack([base, base * 0.9, base * 0.8], -1), 0, 1) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    (folder / ("a" if index % 2 else "b") / f"{index:05d}.jpg").write_bytes(buffer.getvalue())


def write_jpegs(folder: Path, count: int, size: int) -> None:
    for label in ("a", "b"):
        (folder / label).mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        list(pool.map(write_jpeg, [(folder, i, size) for i in range(count)], chunksize=64))


def bare_rate(backbone, transform, dataset, batch_size: int, device: torch.device, precision: str,
              batches: int) -> float:
    from medprobe.runtime.device import autocast

    module = backbone.module.to(device)
    unique = torch.stack([transform(Image.open(s.path).convert("RGB")) for s in dataset.samples[:batch_size]])
    unique = unique.to(device)
    times, sizes = [], []
    for _ in range(batches):
        began = time.perf_counter()
        with torch.inference_mode(), autocast(device, precision):
            pooled = backbone.embed(unique)
            {k: v.float().cpu() for k, v in pooled.items()}  # the same device->host copy as extract
        times.append(time.perf_counter() - began)
        sizes.append(len(unique))
    del module
    return marginal_rate(times, sizes)


def loader_rate(dataset, transform, *, decode_device: torch.device | None, batch_size: int, workers: int,
                device: torch.device) -> float:
    """Images per second that a path's loader supplies on its own (pixels on the device)."""
    from medprobe.extract.device_decode import make_device_decode_loader
    from medprobe.extract.loader import make_loader

    if decode_device is None:
        loader = make_loader(dataset.samples, dataset.root, [transform], batch_size=batch_size, workers=workers,
                             pin_memory=device.type == "cuda")
    else:
        loader = make_device_decode_loader(dataset.samples, dataset.root, transform, device=decode_device,
                                           batch_size=batch_size, workers=workers)
    times, sizes, began = [], [], time.perf_counter()
    for batch in loader:
        batch["pixels"][0].to(device, non_blocking=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        times.append(now - began)
        sizes.append(len(batch["positions"]))
        began = now
    return marginal_rate(times, sizes)


def cosine_min_mean(left: Path, right: Path, ids: list[str]) -> tuple[float, float]:
    from medprobe.cache import read_features

    a, b = read_features(left, ids, "cls"), read_features(right, ids, "cls")
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return float(cos.min()), float(cos.mean())


def main() -> None:
    from medprobe.data import load_dataset
    from medprobe.extract import device_decode
    from medprobe.extract.runner import extract
    from medprobe.models.backbone import load_backbone
    from medprobe.models.registry import resolve_model
    from medprobe.models.transforms import ImageTransform
    from medprobe.runtime.device import resolve_device, resolve_precision
    from medprobe.runtime.workers import default_workers

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--image-size", type=int, default=512, help="side of the synthetic JPEGs")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--smoke", action="store_true", help="check the script on a CPU (numbers meaningless)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    if args.smoke:
        device_decode.DECODE_DEVICE_TYPES = ("cuda", "cpu")
        args.images, args.image_size, args.batch_size = min(args.images, 48), 96, 16
    device = resolve_device("cpu" if args.smoke else "cuda")
    precision = resolve_precision(args.precision, device)
    workers = default_workers() if args.workers is None else args.workers
    started = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_jpegs(tmp / "jpegs", args.images, args.image_size)
        written = time.perf_counter() - started
        model_dir = save_dinov2_small_shape(tmp / "dinov2-small-shape")
        dataset = load_dataset(tmp / "jpegs")
        backbone = load_backbone(resolve_model(str(model_dir)))
        transform = ImageTransform(backbone.preprocessing)
        batches = max(4, args.images // args.batch_size)
        rates: dict[str, list[float]] = {"bare": [], "cpu": [], "gpu": []}
        paths: dict[str, Path] = {}

        def run_extract(decode: str, attempt: int) -> None:
            report = extract(dataset=dataset, model=str(model_dir), cache_dir=tmp / f"cache-{decode}-{attempt}",
                             device=str(device), precision=precision, batch_size=args.batch_size, workers=workers,
                             decode=decode, show_progress=False)
            rates[decode].append(report.images_per_second)
            paths[decode] = report.path

        rates["bare"].append(bare_rate(backbone, transform, dataset, args.batch_size, device, precision, batches))
        run_extract("cpu", 0)
        run_extract("gpu", 0)
        run_extract("gpu", 1)
        run_extract("cpu", 1)
        rates["bare"].append(bare_rate(backbone, transform, dataset, args.batch_size, device, precision, batches))
        loader_cpu = loader_rate(dataset, transform, decode_device=None, batch_size=args.batch_size,
                                 workers=workers, device=device)
        loader_gpu = loader_rate(dataset, transform, decode_device=device, batch_size=args.batch_size,
                                 workers=workers, device=device)
        cos_min, cos_mean = cosine_min_mean(paths["cpu"], paths["gpu"], dataset.ids)

    mean = {name: float(np.mean(values)) for name, values in rates.items()}
    import torchvision

    result = {
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke test)",
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "precision": precision, "batch_size": args.batch_size, "workers": workers, "images": args.images,
        "jpeg_side": args.image_size,
        "runs_img_s": {name: [round(v, 1) for v in values] for name, values in rates.items()},
        "bare_img_s": round(mean["bare"], 1),
        "cpu_decode_img_s": round(mean["cpu"], 1),
        "gpu_decode_img_s": round(mean["gpu"], 1),
        "cpu_decode_over_bare": round(mean["cpu"] / mean["bare"], 3),
        "gpu_decode_over_bare": round(mean["gpu"] / mean["bare"], 3),
        "gpu_decode_over_cpu_decode": round(mean["gpu"] / mean["cpu"], 2),
        "loader_only_img_s": {"cpu_decode": round(loader_cpu, 1), "gpu_decode": round(loader_gpu, 1)},
        "cls_cosine_cpu_vs_gpu_decode": {"min": round(cos_min, 5), "mean": round(cos_mean, 5)},
        "peak_gpu_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else None,
        "seconds": {"writing_jpegs": round(written, 1), "total": round(time.perf_counter() - started, 1)},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

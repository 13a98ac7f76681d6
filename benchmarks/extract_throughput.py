"""Extraction throughput: medprobe's pipeline against the bare forward pass of the same backbone.

All three rates are measured in one run, on the same machine, backbone, precision and batch size, on
512x512 JPEGs, as marginal rates (model loading and the first batch left out):

  bare      the backbone's forward (all pools) on tensors already preprocessed and in memory
  medprobe  `extract()`: files read, decoded and preprocessed in DataLoader workers, forward, HDF5 writes
  naive     a notebook loop: HF image processor in the main thread, per-batch forward, fp32, CLS only

The backbone is dinov2-small-shaped (ViT-S/14: 384 wide, 12 blocks, 6 heads, 224 input after a 256
resize), built from its config with random weights: the cost is the same as the real one's. It prints
the ratios medprobe/bare (target >= 0.9) and medprobe/naive, the bf16-vs-fp32 feature cosine of the real
efficientnet-lite0, the bare forward's speed-up from the chosen precision over fp32, medprobe's time per
pipeline stage, and one core's decoding time per image. On a CPU the loader workers decode on the cores the
forward pass uses, so medprobe/bare cannot pass forward / (forward + decode) core-seconds per image
(`cpu_ceiling_shared_cores`).

    python benchmarks/extract_throughput.py [--images 256] [--batch-size 32] [--workers N] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import h5py
import numpy as np
import torch
from PIL import Image


def write_jpegs(folder: Path, count: int, size: int = 512) -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(count):
        label = "a" if i % 2 else "b"
        (folder / label).mkdir(parents=True, exist_ok=True)
        base = 0.5 + 0.3 * np.sin(6 * xx + i) * np.cos(4 * yy - i) + rng.normal(0, 0.05, (size, size))
        pixels = (np.clip(np.stack([base, base * 0.9, base * 0.8], -1), 0, 1) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / label / f"{i:05d}.jpg", quality=90)


def save_dinov2_small_shape(folder: Path) -> Path:
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                             patch_size=14, image_size=518)).save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, resample=3,
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    return folder


def marginal_rate(batch_times: list[float], batch_sizes: list[int]) -> float:
    """Images per second after the first batch."""
    return sum(batch_sizes[1:]) / sum(batch_times[1:])


def bare_rate(model_dir: Path, dataset, batch_size: int, device: torch.device, precision: str) -> float:
    from medprobe.models.backbone import load_backbone
    from medprobe.models.registry import resolve_model
    from medprobe.models.transforms import ImageTransform
    from medprobe.runtime.device import autocast

    backbone = load_backbone(resolve_model(str(model_dir)))
    module = backbone.module.to(device)
    transform = ImageTransform(backbone.preprocessing)
    pixels = torch.stack([transform(Image.open(s.path).convert("RGB")) for s in dataset.samples])
    times, sizes = [], []
    for start in range(0, len(pixels), batch_size):
        batch = pixels[start:start + batch_size].to(device)
        began = time.perf_counter()
        with torch.inference_mode(), autocast(device, precision):
            pooled = backbone.embed(batch)
            {k: v.float().cpu() for k, v in pooled.items()}  # same device->host copy as extract
        times.append(time.perf_counter() - began)
        sizes.append(len(batch))
    del module
    return marginal_rate(times, sizes)


def decode_seconds_per_image(model_dir: Path, dataset) -> float:
    """One core's time to read, decode, resize, crop and normalise an image, as a loader worker does."""
    from medprobe.models.backbone import load_backbone
    from medprobe.models.registry import resolve_model
    from medprobe.models.transforms import ImageTransform

    transform = ImageTransform(load_backbone(resolve_model(str(model_dir))).preprocessing)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    try:
        began = time.perf_counter()
        for sample in dataset.samples:
            transform(Image.open(sample.path).convert("RGB"))
        return (time.perf_counter() - began) / len(dataset.samples)
    finally:
        torch.set_num_threads(threads)


def naive_rate(model_dir: Path, dataset, batch_size: int, device: torch.device) -> float:
    from transformers import AutoImageProcessor, AutoModel

    processor = AutoImageProcessor.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval().to(device)
    times, sizes = [], []
    paths = [s.path for s in dataset.samples]
    for start in range(0, len(paths), batch_size):
        began = time.perf_counter()
        images = [Image.open(p).convert("RGB") for p in paths[start:start + batch_size]]
        inputs = processor(images=images, return_tensors="pt").to(device)
        with torch.no_grad():
            model(**inputs).last_hidden_state[:, 0].cpu()
        times.append(time.perf_counter() - began)
        sizes.append(len(images))
    return marginal_rate(times, sizes)


def bf16_fidelity(dataset) -> float:
    from medprobe.models.backbone import load_backbone
    from medprobe.models.registry import resolve_model
    from medprobe.models.transforms import ImageTransform

    backbone = load_backbone(resolve_model("efficientnet-lite0"))
    transform = ImageTransform(backbone.preprocessing)
    pixels = torch.stack([transform(Image.open(s.path).convert("RGB")) for s in dataset.samples[:64]])
    with torch.inference_mode():
        fp32 = backbone.embed(pixels)["gap"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = backbone.embed(pixels)["gap"].float()
    return float(torch.nn.functional.cosine_similarity(fp32, bf16).min())


def main() -> None:
    from medprobe.data import load_dataset
    from medprobe.extract.runner import extract
    from medprobe.runtime.device import resolve_device, resolve_precision
    from medprobe.runtime.workers import default_workers

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--skip-fidelity", action="store_true", help="skip the efficientnet-lite0 bf16 check")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    workers = default_workers() if args.workers is None else args.workers

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_jpegs(tmp / "jpegs", args.images)
        model_dir = save_dinov2_small_shape(tmp / "dinov2-small-shape")
        dataset = load_dataset(tmp / "jpegs")
        # bare is measured before and after medprobe and averaged, so drift (thermal, other load) cancels
        bare_before = bare_rate(model_dir, dataset, args.batch_size, device, precision)
        report = extract(dataset=dataset, model=str(model_dir), cache_dir=tmp / "cache", device=str(device),
                         precision=precision, batch_size=args.batch_size, workers=workers, show_progress=False)
        ours = report.images_per_second
        bare_after = bare_rate(model_dir, dataset, args.batch_size, device, precision)
        bare = (bare_before + bare_after) / 2
        bare_fp32 = bare_rate(model_dir, dataset, args.batch_size, device, "fp32") if precision != "fp32" else bare
        naive = None if args.skip_naive else naive_rate(model_dir, dataset, args.batch_size, device)
        cosine = None if args.skip_fidelity else bf16_fidelity(dataset)
        decode = decode_seconds_per_image(model_dir, dataset)
        with h5py.File(report.path, "r") as cache:
            stages = json.loads(cache.attrs["extract_stage_seconds"])
    # On a CPU the workers decode on the cores the forward pass uses: at best the forward's core-seconds per
    # image are shared with one image's decoding.
    forward_core_seconds = torch.get_num_threads() / bare
    ceiling = forward_core_seconds / (forward_core_seconds + decode) if device.type == "cpu" else None

    result = {
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "precision": precision,
        "batch_size": args.batch_size, "workers": workers, "images": args.images,
        "bare_img_s": round(bare, 2),
        "bare_before_after_img_s": [round(bare_before, 2), round(bare_after, 2)],
        "medprobe_img_s": round(ours, 2),
        "naive_fp32_img_s": round(naive, 2) if naive else None,
        "medprobe_over_bare": round(ours / bare, 3),
        "bare_fp32_img_s": round(bare_fp32, 2),
        f"bare_{precision}_over_bare_fp32": round(bare / bare_fp32, 2),
        "decode_ms_per_image_one_core": round(1000 * decode, 2),
        "cpu_ceiling_shared_cores": round(ceiling, 3) if ceiling is not None else None,
        "medprobe_stage_seconds": stages,
        "medprobe_over_naive": round(ours / naive, 2) if naive else None,
        "efficientnet_lite0_bf16_vs_fp32_min_cosine": round(cosine, 5) if cosine is not None else None,
        "peak_gpu_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else None,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Extraction as one pipeline for many backbones, measured side by side in one run:

  grid    three backbones in one `medprobe extract -m A -m B -m C` (each image decoded once) against three
          `medprobe extract -m X` commands, one after another; the total wall-time ratio (goal on a GPU,
          where decoding is the bottleneck: <= 0.5 for three ViT-S-sized backbones)
  rerun   a rerun on the complete caches against the first run (goal < 0.15), and a rerun on a complete,
          fresh cache of `--rerun-images` (default 10,000) images in a fresh process (goal < 1.5 s here;
          it imports no torch)

Every command is a fresh `python -m medprobe` process, as a user runs it (start-up and model loading
included). The backbones are built from configs with random weights, the cost of the real ones:
dinov2-small-shaped ViT-S/14 (224 px), and two ViT-S/16-shaped timm models at 224 px. Images are
512x512 JPEGs. The marginal rate against the bare forward pass is benchmarks/extract_throughput.py's.

    python benchmarks/extract_pipeline.py [--images 96] [--rerun-images 10000] [--device cpu]
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from extract_throughput import save_dinov2_small_shape, write_jpegs  # noqa: E402


def save_timm_vit_small(folder: Path, name: str) -> Path:
    import timm
    import torch
    from timm.models import save_for_hf

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=0)
    folder.mkdir(parents=True, exist_ok=True)
    save_for_hf(model, str(folder))
    return folder


def medprobe(*args) -> float:
    """Seconds one `medprobe` command takes, start-up included."""
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "medprobe", *map(str, args)], check=True, capture_output=True, text=True)
    return time.perf_counter() - began


def tiny_pngs(folder: Path, count: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        (folder / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"c{i % 2}" / f"{i:05d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--rerun-images", type=int, default=10_000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_jpegs(tmp / "jpegs", args.images)
        models = [save_dinov2_small_shape(tmp / "dinov2-small-shape"),
                  save_timm_vit_small(tmp / "vit-small-a", "vit_small_patch16_224"),
                  save_timm_vit_small(tmp / "vit-small-b", "deit_small_patch16_224")]
        common = ["--device", args.device, "--precision", args.precision, "--batch-size", args.batch_size]
        medprobe("extract", tmp / "jpegs", "--model", models[0], "--cache-dir", tmp / "warm", *common)  # disk cache
        separate = sum(medprobe("extract", tmp / "jpegs", "--model", m, "--cache-dir", tmp / "separate", *common)
                       for m in models)
        together = medprobe("extract", tmp / "jpegs", *[f"--model={m}" for m in models], "--cache-dir",
                            tmp / "together", *common)
        rerun = medprobe("extract", tmp / "jpegs", *[f"--model={m}" for m in models], "--cache-dir",
                         tmp / "together", *common)
        tiny_pngs(tmp / "many", args.rerun_images)
        tiny = save_timm_vit_small(tmp / "tiny", "test_vit")
        many = ["extract", tmp / "many", "--model", tiny, "--cache-dir", tmp / "many-cache", *common]
        many_first = medprobe(*many)
        many_rerun = medprobe(*many)
    result = {
        "images": args.images, "device": args.device, "precision": args.precision, "cpu_count": os.cpu_count(),
        "three_commands_s": round(separate, 1), "one_command_three_backbones_s": round(together, 1),
        "one_over_three": round(together / separate, 3),
        "rerun_s": round(rerun, 2), "rerun_over_first": round(rerun / together, 3),
        "rerun_images": args.rerun_images, "rerun_first_s": round(many_first, 1),
        "rerun_complete_cache_s": round(many_rerun, 2),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

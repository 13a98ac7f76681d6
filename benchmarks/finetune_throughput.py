"""Fine-tuning throughput: medprobe's training loop against a bare training step on the same backbone.

A dinov2-small-shaped backbone (ViT-S/14, random weights: same cost as the real one), fully unfrozen,
batch B, on 512x512 JPEGs with a given train/val/test split. *medprobe* is `finetune()` (decoding and
augmentation in DataLoader workers, AdamW, warm-up + cosine, validation every epoch, checkpoints);
*bare* is forward + backward + AdamW step on one in-memory batch, repeated. Both in the same precision.

    python benchmarks/finetune_throughput.py --device cuda --images 2048 --epochs 12 --batch-size 64
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

sys.path.insert(0, str(Path(__file__).parent))
from extract_throughput import save_dinov2_small_shape, write_jpegs  # noqa: E402


def bare_steps_per_second(model_dir: Path, batch: int, device: torch.device, precision: str, steps: int = 30) -> float:
    from medprobe.finetune.runner import Classifier
    from medprobe.models.backbone import load_backbone
    from medprobe.models.registry import resolve_model
    from medprobe.runtime.device import autocast

    backbone = load_backbone(resolve_model(str(model_dir)))
    backbone.module.requires_grad_(True)
    model = Classifier(backbone, 2, (224, 224)).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    pixels = torch.randn(batch, 3, 224, 224, device=device)
    labels = torch.randint(0, 2, (batch,), device=device)
    for step in range(steps + 5):
        if step == 5:  # warm-up steps excluded
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        with autocast(device, precision):
            loss = torch.nn.functional.cross_entropy(model(pixels).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - started)


def main() -> None:
    from medprobe.data import load_dataset
    from medprobe.finetune.runner import FinetuneSettings, finetune
    from medprobe.runtime.device import resolve_device, resolve_precision

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_jpegs(tmp / "jpegs", args.images)
        model_dir = save_dinov2_small_shape(tmp / "model")
        rows = []
        for i, path in enumerate(sorted((tmp / "jpegs").rglob("*.jpg"))):
            split = "train" if i % 10 < 8 else ("val" if i % 10 == 8 else "test")
            rows.append({"path": str(path.relative_to(tmp / "jpegs")), "label": path.parent.name, "split": split})
        with (tmp / "jpegs" / "split.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["path", "label", "split"])
            writer.writeheader()
            writer.writerows(rows)
        bare = bare_steps_per_second(model_dir, args.batch_size, device, precision) * args.batch_size
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        record = finetune(dataset=load_dataset(tmp / "jpegs" / "split.csv"), model=str(model_dir),
                          settings=FinetuneSettings(unfreeze="all", epochs=args.epochs, batch_size=args.batch_size,
                                                    precision=precision, device=str(device), workers=args.workers,
                                                    patience=args.epochs, bootstrap=200),
                          out_dir=tmp / "out", show_progress=False)
    cost = record["cost"]
    train = int(args.images * 0.8)
    result = {
        "device_name": cost["device_name"], "precision": precision, "batch_size": args.batch_size,
        "train_images": train, "epochs": args.epochs, "steps": args.epochs * -(-train // args.batch_size),
        "medprobe_train_img_s": cost["train_images_per_second"], "bare_train_img_s": round(bare, 1),
        "medprobe_over_bare": round(cost["train_images_per_second"] / bare, 3),
        "peak_memory_mb": cost["peak_memory_mb"], "wall_seconds": cost["wall_seconds"],
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

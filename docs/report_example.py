"""Re-create docs/report.png: a `medprobe report` screenshot from a real, tiny, fully offline study.

Everything in it is measured, nothing typed in: synthetic images (a bright square left or right, 24
patients x 2 images), three tiny randomly initialised timm backbones saved to local folders, real
extraction on this machine's CPU, real probes and real fine-tuning. The numbers show the layout only;
they say nothing about any real backbone. Needs Debian's chromium for the screenshot.

    python docs/report_example.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from medprobe.data import load_dataset
from medprobe.extract.runner import extract
from medprobe.finetune.runner import FinetuneSettings, finetune
from medprobe.probe.runner import ProbeSettings, probe
from medprobe.report import build_report

DOCS = Path(__file__).resolve().parent


def write_images(root: Path, patients: int = 24, per_patient: int = 2):
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(patients * per_patient):
        label = (i // per_patient) % 2
        pixels = rng.integers(0, 90, (64, 64, 3), dtype=np.uint8)
        corner = 6 + rng.integers(0, 8)
        if label == 0:
            pixels[corner:corner + 18, corner:corner + 18] = 230
        else:
            pixels[-corner - 18:-corner, -corner - 18:-corner] = 230
        Image.fromarray(pixels).save(root / "img" / f"{i:03d}.png")
        rows.append({"path": f"img/{i:03d}.png", "label": ["left", "right"][label], "group": f"p{i // per_patient}"})
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "group"])
        writer.writeheader()
        writer.writerows(rows)
    return load_dataset(root / "labels.csv")


def save_tiny_timm(folder: Path, name: str, **model_args) -> Path:
    import timm
    import torch
    from timm.models import save_for_hf

    torch.manual_seed(0)
    model_args = {"num_classes": 0, **model_args}
    model = timm.create_model(name, pretrained=False, **model_args)
    save_for_hf(model, folder, model_args=model_args, safe_serialization=True,
                data_config={"input_size": (3, 64, 64), "crop_pct": 0.875, "interpolation": "bicubic"})
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="Keep the study here instead of a temporary folder")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="medprobe-report-example-"))
    dataset = write_images(work / "blobs")
    models = [save_tiny_timm(work / "models" / "tiny-resnet", "test_resnet"),
              save_tiny_timm(work / "models" / "tiny-vit", "test_vit", img_size=64),
              save_tiny_timm(work / "models" / "tiny-vgg", "vgg11", mlp_ratio=0.01)]
    cache, results = work / "cache", work / "results"
    for model in models:
        extract(dataset=dataset, model=str(model), cache_dir=cache, device="cpu", precision="fp32", batch_size=16,
                workers=0, show_progress=False)
    settings = {"folds": 4, "bootstrap": 1000, "seed": 0}
    probe(dataset=dataset, models=None, cache_dir=cache, out_dir=results, show_progress=False,
          settings=ProbeSettings(classifiers=("logreg", "svm", "knn"), **settings))
    probe(dataset=dataset, models=None, cache_dir=cache, out_dir=results, show_progress=False,
          settings=ProbeSettings(classifiers=("logreg",), shots=(1, 2, 4), repeats=3, **settings))
    for model in models[:2]:
        for mode in ("none", "all"):
            finetune(dataset=dataset, model=str(model), out_dir=results, show_progress=False,
                     settings=FinetuneSettings(unfreeze=mode, epochs=8, lr=3e-3, head_lr=5e-2, batch_size=8,
                                               workers=0, precision="fp32", device="cpu", **settings))
    os.chdir(work)  # the report names its sources as given: short relative paths
    report = build_report(results_dirs=[Path("results")], out_dir=Path("report"), metric="accuracy")
    screenshot = work / "screenshot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1200,1500", f"--screenshot={screenshot}", report.html.resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)
    with Image.open(screenshot) as image:  # a 128-colour palette keeps the committed PNG small
        image.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=128).save(DOCS / "report.png",
                                                                                          optimize=True)
    print(f"{DOCS / 'report.png'} from {work / report.html}")
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()

"""`medprobe demo`: a small SYNTHETIC chest-X-ray-like cohort (not real patients), extracted offline with
efficientnet-lite0's genuine ImageNet weights, re-run to show the cache at work, then probed with
logistic regression, SVM and kNN under patient-grouped 5-fold cross-validation."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console

DEMO_MODEL = "efficientnet-lite0"


def synthetic_radiograph(rng: np.random.Generator, *, opacity: bool, size: int = 256) -> np.ndarray:
    """A 16-bit 'radiograph': body and two dark lung fields over noise; `opacity` adds a bright
    blurred consolidation inside one lung (the finding a classifier has to see)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    image = 0.55 + 0.1 * yy + rng.normal(0, 0.03, (size, size))
    for centre_x in (0.32, 0.68):
        lung = ((xx - centre_x) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1
        image[lung] -= 0.3
    if opacity:
        cx, cy = rng.choice([0.32, 0.68]) + rng.normal(0, 0.03), 0.5 + rng.normal(0, 0.1)
        radius = rng.uniform(0.05, 0.1)
        image += 0.35 * np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius**2)))
    return (np.clip(image, 0, 1) * 4095).astype(np.uint16)  # 12-bit data in 16-bit PNGs, as detectors write


def write_cohort(folder: Path, *, patients: int = 24, images_per_patient: int = 2, seed: int = 0) -> Path:
    """Writes PNGs and a manifest.csv (path,label,group); returns the manifest path."""
    rng = np.random.default_rng(seed)
    rows = []
    for patient in range(patients):
        label = "opacity" if patient % 2 else "normal"
        for view in range(images_per_patient):
            relative = Path("images") / f"p{patient:03d}_{view}.png"
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(synthetic_radiograph(rng, opacity=label == "opacity")).save(folder / relative)
            rows.append({"path": relative.as_posix(), "label": label, "group": f"patient{patient:03d}"})
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "group"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def run_demo(*, out_dir: Path, console: Console) -> None:
    from medprobe.cache.store import read_contents
    from medprobe.data import load_dataset
    from medprobe.extract.runner import extract
    from medprobe.probe.runner import ProbeSettings, probe
    from medprobe.results.table import records_table

    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = write_cohort(out_dir / "xray")
    dataset = load_dataset(manifest)
    console.print(f"synthetic cohort (not real patients): {len(dataset.samples)} images, "
                  f"{len(dataset.classes)} classes, {manifest}")
    cache_dir = out_dir / "cache"
    started = time.perf_counter()
    report = extract(dataset=dataset, model=DEMO_MODEL, cache_dir=cache_dir, show_progress=True)
    first = time.perf_counter() - started
    started = time.perf_counter()
    again = extract(dataset=dataset, model=DEMO_MODEL, cache_dir=cache_dir, show_progress=False)
    second = time.perf_counter() - started
    contents = read_contents(report.path)
    console.print(f"extracted {report.extracted} images with {DEMO_MODEL} ({contents.attrs['precision']}, "
                  f"{contents.attrs['device']}) in {first:.1f}s; re-run found the cache up to date in {second:.2f}s "
                  f"(reused {again.reused})")
    console.print(f"cache: {report.path} ({', '.join(f'{p}: {d}-d' for p, d in contents.dims.items())})")
    records = probe(dataset=dataset, models=[DEMO_MODEL], cache_dir=cache_dir, out_dir=out_dir / "results",
                    settings=ProbeSettings(classifiers=("logreg", "svm", "knn")), show_progress=False)
    console.print(records_table(records))
    console.print(f"run records and predictions: {Path(records[0]['record_path']).parent}")

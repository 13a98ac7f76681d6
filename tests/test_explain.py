"""`medprobe explain` on a synthetic set whose class is a drawn square (bright or dark) at a random place:
the evidence of a correctly classified image must lie on the square."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import save_tiny_timm
from PIL import Image

from medprobe.cli import main
from medprobe.data import load_dataset
from medprobe.errors import MedprobeError
from medprobe.explain import explain
from medprobe.probe.runner import ProbeSettings, probe
from medprobe.report import build_report

SIZE, SIDE, PATCH = 64, 20, 8


def write_squares(root, count: int = 40) -> dict[str, tuple[int, int]]:
    """bright/ and dark/ images: a SIDE x SIDE square on a noisy grey background; returns id -> (top, left)."""
    rng = np.random.default_rng(0)
    boxes = {}
    for i in range(count):
        label = ("bright", "dark")[i % 2]
        image = 0.5 + rng.normal(0, 0.03, (SIZE, SIZE))
        top, left = (int(v) for v in rng.integers(0, SIZE - SIDE, 2))
        image[top:top + SIDE, left:left + SIDE] = 0.95 if label == "bright" else 0.05
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).convert("RGB").save(root / label / f"{i}.png")
        boxes[f"{label}/{i}.png"] = (top, left)
    return boxes


def save_patch_vit(folder):
    """One transformer block, 8-pixel patches on 64-pixel inputs: an 8 x 8 grid of patch tokens."""
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    model = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                               patch_size=PATCH, image_size=SIZE), add_pooling_layer=False)
    torch.nn.init.normal_(model.embeddings.patch_embeddings.projection.weight, std=0.5)
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": SIZE, "width": SIZE}, resample=2).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def squares(tmp_path_factory):
    from medprobe.extract.runner import extract

    base = tmp_path_factory.mktemp("squares")
    boxes = write_squares(base / "squares")
    dataset = load_dataset(base / "squares")
    models = {"vit": save_patch_vit(base / "tiny-patch-vit"),
              "cnn": save_tiny_timm(base / "tiny-cnn", "test_resnet", input_size=SIZE)}
    records = {}
    for kind, folder in models.items():
        extract(dataset=dataset, model=str(folder), cache_dir=base / "cache", device="cpu", precision="fp32",
                batch_size=8, workers=0, show_progress=False)
        pool = "mean" if kind == "vit" else "gap"
        [record] = probe(dataset=dataset, models=[str(folder)], cache_dir=base / "cache", out_dir=base / "results",
                         show_progress=False, settings=ProbeSettings(classifiers=("logreg",), pool=pool, folds=4,
                                                                     bootstrap=50, n_jobs=1, save_model=True))
        records[kind] = Path(record["record_path"])
    return dataset, boxes, models, records, base


def mass_inside(heat: np.ndarray, top: int, left: int) -> float:
    """Share of the map's mass on the grid cells the square covers."""
    cell = SIZE // heat.shape[0]
    inside = np.zeros_like(heat, dtype=bool)
    inside[top // cell:(top + SIDE - 1) // cell + 1, left // cell:(left + SIDE - 1) // cell + 1] = True
    return float(heat[inside].sum() / heat.sum())


def test_vit_class_evidence_lies_on_the_square(squares):
    dataset, boxes, models, records, _ = squares
    result = explain(dataset=dataset, model=str(models["vit"]), record_path=records["vit"], count=5)
    assert result.kind == "patch tokens"
    correct = [e for e in result.explanations if e.correct]
    assert len(correct) == 5 and all(e.heat.shape == (SIZE // PATCH, SIZE // PATCH) for e in correct)
    masses = [mass_inside(e.heat, *boxes[e.sample_id]) for e in correct]
    assert min(masses) > 0.5, masses  # the square covers 9 to 16 of the 64 cells
    assert all(e.probe_agrees for e in result.explanations)  # the same probe, the same prediction as the record
    for e in result.explanations:  # evidence above the median position, the strongest at 1
        assert e.heat.max() == pytest.approx(1.0) and e.heat.min() == 0
        assert (e.heat == 0).sum() >= e.heat.size / 2
    index = json.loads(result.index.read_text())
    assert [s["id"] for s in index["samples"]] == [e.sample_id for e in result.explanations]
    with Image.open(result.explanations[0].png) as picture:
        assert picture.size == (2 * (2 * SIZE + 4), 2 * SIZE)  # the image and its overlay, drawn twice as large


def test_cnn_map_is_the_class_activation_map_and_the_report_embeds_it(squares, tmp_path, capsys):
    dataset, _, models, records, base = squares
    with pytest.raises(SystemExit) as info:
        main(["explain", str(dataset.source), "--model", str(models["cnn"]), "--record", str(records["cnn"]),
              "--count", "2", "--device", "cpu"])
    assert not info.value.code
    assert "map over feature map" in capsys.readouterr().out
    index = json.loads((records["cnn"].parent / (records["cnn"].stem + ".explain") / "explain.json").read_text())
    assert index["map"] == "feature map" and all(s["probe_agrees"] for s in index["samples"])
    report = build_report(results_dirs=[base / "results"], out_dir=tmp_path / "report", replicates=50)
    explained = [f for f in report.content.figures if "explain" in f.path.parts]
    written = [s for path in (base / "results").rglob("explain.json") for s in json.loads(path.read_text())["samples"]]
    assert len(explained) == len(written) >= len(index["samples"])  # the ViT record's too, when explained first
    html = report.html.read_text()
    assert all(f.title.split(":")[0] in html for f in explained)


def test_the_cnn_map_equals_a_class_activation_map_computed_by_hand(squares):
    """README: on a CNN's gap pool the map is exactly the class activation map, the probe's standardisation
    included: timm's own forward_features, each cell standardised by the fold probe's scaler and weighed by
    its logistic-regression weights, turned towards the predicted class; above the median cell, max 1."""
    import joblib
    import torch

    from medprobe.data.reader import SampleImages
    from medprobe.models.backbone import load_backbone
    from medprobe.models.registry import resolve_model
    from medprobe.models.transforms import ImageTransform

    dataset, _, models, records, _ = squares
    result = explain(dataset=dataset, model=str(models["cnn"]), record_path=records["cnn"], count=2)
    record = json.loads(records["cnn"].read_text())
    folds = joblib.load(records["cnn"].parent / record["model_file"])["fold_models"]
    backbone = load_backbone(resolve_model(str(models["cnn"])))
    transform = ImageTransform(backbone.preprocessing)
    positions = {sample.id: i for i, sample in enumerate(dataset.samples)}
    for e in result.explanations:
        pixels = transform(SampleImages([dataset.samples[positions[e.sample_id]]], dataset.root)[0]).unsqueeze(0)
        with torch.inference_mode():
            feature_map = backbone.module.forward_features(pixels)[0].double().numpy()  # (C, h, w)
        scaler, logreg = folds[e.fold].model.steps[0][1], folds[e.fold].model.steps[-1][1]
        cells = (feature_map.reshape(feature_map.shape[0], -1).T - scaler.mean_) / scaler.scale_
        cam = cells @ logreg.coef_[0] + logreg.intercept_[0]  # evidence for the second class
        cam = cam if dataset.classes.index(e.prediction) == 1 else -cam
        above = np.clip(cam - np.median(cam), 0, None)
        np.testing.assert_allclose(e.heat.ravel(), above / above.max(), atol=1e-4)


def test_explain_refuses_a_record_without_its_probe_or_of_another_model(squares, tmp_path):
    dataset, _, models, records, _ = squares
    with pytest.raises(MedprobeError, match="is a run of"):
        explain(dataset=dataset, model=str(models["cnn"]), record_path=records["vit"])
    data = json.loads(records["vit"].read_text())
    del data["model_file"]
    stripped = records["vit"].with_name("stripped.json")
    stripped.write_text(json.dumps(data))
    try:
        with pytest.raises(MedprobeError, match="--save-model"):
            explain(dataset=dataset, model=str(models["vit"]), record_path=stripped)
        # README: cls4 and fused records are refused with the reason
        fused = json.loads(records["vit"].read_text())
        fused["features"] = fused["features"] * 2
        stripped.write_text(json.dumps(fused))
        with pytest.raises(MedprobeError, match="fused features of several backbones; explain one backbone's"):
            explain(dataset=dataset, model=str(models["vit"]), record_path=stripped)
        cls4 = json.loads(records["vit"].read_text()) | {"pool": "cls4"}
        stripped.write_text(json.dumps(cls4))
        with pytest.raises(MedprobeError, match="'cls4' embedding is not a mean over positions or the CLS token"):
            explain(dataset=dataset, model=str(models["vit"]), record_path=stripped)
    finally:
        stripped.unlink()


@pytest.mark.parametrize("kind", ["vit", "cnn"])
def test_the_map_averages_to_the_probe_s_own_decision_on_the_cached_embedding(squares, kind):
    """README: because the probe is linear and the pool is a mean, the map averages to the probe's own
    decision. The per-position features explain finds average to the image's embedding (the one the cache
    holds, to its float16), and the saved fold probe's per-position decisions average to its decision on it."""
    import joblib

    from medprobe.cache import read_features
    from medprobe.data.reader import SampleImages
    from medprobe.explain.linear import linear_evidence
    from medprobe.explain.spatial import spatial_features
    from medprobe.models.backbone import load_backbone
    from medprobe.models.registry import resolve_model
    from medprobe.models.transforms import ImageTransform

    dataset, _, models, records, base = squares
    record = json.loads(records[kind].read_text())
    pool = record["pool"]
    backbone = load_backbone(resolve_model(str(models[kind])))
    fold_0 = joblib.load(records[kind].parent / record["model_file"])["fold_models"][0]
    probe_0, linear = fold_0.model, linear_evidence(fold_0, records[kind])
    [cache_file] = (base / "cache").rglob(f"*{resolve_model(str(models[kind])).slug}*.h5")
    cached = read_features(cache_file, [s.id for s in dataset.samples[:4]], pool)
    transform = ImageTransform(backbone.preprocessing)
    images = SampleImages(dataset.samples[:4], dataset.root)
    for i in range(4):
        found = spatial_features(backbone, transform(images[i]).unsqueeze(0), pool)
        grid = found.grid[0].numpy().astype(np.float64)
        positions = grid.reshape(-1, grid.shape[-1])
        np.testing.assert_allclose(positions.mean(0), found.pooled[0].numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(positions.mean(0), cached[i], rtol=2**-10, atol=2**-14)  # the cache is float16
        per_position = linear.evidence(positions)
        whole = linear.evidence(found.pooled.numpy().astype(np.float64))
        np.testing.assert_allclose(per_position.mean(0), whole[0], rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(whole[0, 1], probe_0.decision_function(found.pooled.numpy())[0], rtol=1e-5)


@pytest.mark.parametrize("n_classes", [2, 4])
@pytest.mark.parametrize("probe_params", [("logreg", {"C": 1.0}),
                                          ("svm", {"kernel": "linear", "C": 0.1, "solver": "libsvm"}),
                                          ("svm", {"kernel": "linear", "C": 0.1, "solver": "squared-hinge-newton"})])
def test_every_linear_probe_gives_affine_class_evidence_that_matches_its_own_decisions(probe_params, n_classes):
    """README: explain applies a logreg or linear-SVM record's probe to every position. Each saved linear
    probe (logreg; the linear SVM by libsvm one-vs-one or by the squared hinge) becomes per-class evidence that
    is affine in the features (so a mean pool's map averages to the evidence on the embedding) and equals the
    probe's own decisions: the decision value for binary probes, the decision relative to the class mean for
    one-vs-rest ones, the sum of the one-vs-one pair decisions turned towards the class for libsvm's. An RBF
    SVM and a kNN are refused."""
    from medprobe.explain.linear import linear_evidence
    from medprobe.probe.classifiers import get_probe

    rng = np.random.default_rng(n_classes)
    y = np.arange(120) % n_classes
    X = rng.normal(size=(120, 6)) + y[:, None] * 0.8 + 3.0
    name, params = probe_params
    fitted = get_probe(name).fit(params, X, y, n_classes, 0)
    evidence = linear_evidence(fitted, Path("run.json")).evidence(X)
    final = fitted.model[-1]
    if n_classes == 2:
        np.testing.assert_allclose(evidence[:, 1], fitted.model.decision_function(X), rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(evidence[:, 0], -evidence[:, 1], atol=1e-12)
    elif getattr(final, "kernel", None) == "precomputed":
        final.decision_function_shape = "ovo"
        pairs = fitted.model.decision_function(X)  # positive: the pair's first class
        expected = np.zeros_like(evidence)
        for p, (first, second) in enumerate(itertools.combinations(range(n_classes), 2)):
            expected[:, first] += pairs[:, p]
            expected[:, second] -= pairs[:, p]
        np.testing.assert_allclose(evidence, expected, rtol=1e-6, atol=1e-8)
    else:
        decision = fitted.model.decision_function(X)
        np.testing.assert_allclose(evidence, decision - decision.mean(1, keepdims=True), rtol=1e-6, atol=1e-8)
    at_mean = linear_evidence(fitted, Path("run.json")).evidence(X[:16].mean(0, keepdims=True))[0]
    np.testing.assert_allclose(at_mean, evidence[:16].mean(0), rtol=1e-9, atol=1e-9)  # affine: means commute
    for other, other_params in (("svm", {"kernel": "rbf", "C": 1.0, "solver": "libsvm"}),
                                ("knn", {"k": 5, "weighting": "softmax"})):
        with pytest.raises(MedprobeError, match="not linear"):
            linear_evidence(get_probe(other).fit(other_params, X, y, n_classes, 0), Path("run.json"))


def test_explain_picks_the_most_confident_correct_and_wrong_predictions():
    """README: the --count most confident correct and the --count most confident wrong test predictions."""
    from medprobe.explain import choose

    rng = np.random.default_rng(0)
    rows = []
    for i in range(30):
        high = float(rng.uniform(0.5, 1.0))
        label, prediction = ("a", "a") if i % 3 else ("a", "b")
        scores = {"score_a": high, "score_b": 1 - high} if prediction == "a" else {"score_a": 1 - high, "score_b": high}
        rows.append({"id": f"s{i}", "label": label, "prediction": prediction, **scores})
    picked = choose(rows, ["a", "b"], 3)
    confidence = {r["id"]: max(r["score_a"], r["score_b"]) for r in rows}
    correct = sorted((r["id"] for r in rows if r["label"] == r["prediction"]), key=confidence.get, reverse=True)
    wrong = sorted((r["id"] for r in rows if r["label"] != r["prediction"]), key=confidence.get, reverse=True)
    assert [r["id"] for r in picked] == correct[:3] + wrong[:3]

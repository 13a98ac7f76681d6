from __future__ import annotations

import csv
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import blob_image, blob_patients
from PIL import Image
from probe_helpers import write_cache
from safetensors.torch import load_file

from medprobe.cli import main
from medprobe.data import load_dataset
from medprobe.data.samples import Dataset
from medprobe.errors import Interrupted, MedprobeError
from medprobe.finetune import augment
from medprobe.finetune.runner import FinetuneSettings, finetune
from medprobe.models.backbone import load_backbone
from medprobe.models.registry import resolve_model
from medprobe.probe.runner import ProbeSettings, probe


@pytest.fixture
def blobs(tmp_path):
    """30 images, 2 classes (bright square top-left vs bottom-right), 15 patients of 2 images each."""
    return load_dataset(blob_patients(tmp_path / "blobs", patients=15, per_patient=2, size=(48, 44)))


def run(dataset, model, out_dir, **overrides):
    options = dict(epochs=3, lr=1e-3, head_lr=1e-2, batch_size=8, workers=0, fold=0, bootstrap=200,
                   precision="fp32", device="cpu", folds=3)
    options.update(overrides)
    return finetune(dataset=dataset, model=str(model), settings=FinetuneSettings(**options), out_dir=out_dir,
                    show_progress=False)[0]


def best_weights(record_dir, name):
    return load_file(str(next(record_dir.rglob(f"{name}*fold0*/best.safetensors"))))


def test_full_finetuning_lowers_the_loss_and_changes_the_backbone(blobs, tiny_timm_models, tmp_path):
    model = tiny_timm_models["resnet"]
    record = run(blobs, model, tmp_path / "out", epochs=10, patience=20)
    losses = [e["train_loss"] for e in record["history"][0]["epochs"]]
    assert np.mean(losses[-3:]) < 0.75 * losses[0]
    original = load_backbone(resolve_model(str(model))).module.state_dict()
    tuned = best_weights(tmp_path / "out", "resnet")
    changed = [k for k, v in original.items() if v.is_floating_point() and not torch.equal(tuned[f"backbone.{k}"], v)]
    assert changed
    assert record["method"] == "finetune-all" and record["cost"]["trainable_parameters"] == \
        record["cost"]["total_parameters"]


def test_frozen_mode_trains_only_the_head(blobs, tiny_timm_models, tmp_path):
    model = tiny_timm_models["resnet"]
    record = run(blobs, model, tmp_path / "out", unfreeze="none")
    original = load_backbone(resolve_model(str(model))).module.state_dict()
    tuned = best_weights(tmp_path / "out", "resnet")
    for key, value in original.items():  # weights and batch-norm statistics alike
        assert torch.equal(tuned[f"backbone.{key}"], value), key
    head = tuned["head.1.weight"].numel() + tuned["head.1.bias"].numel()
    assert record["cost"]["trainable_parameters"] == head == 96 * 2 + 2


def test_last_n_unfreezes_exactly_the_last_blocks(blobs, tiny_dinov2, tmp_path):
    record = run(blobs, tiny_dinov2, tmp_path / "out", unfreeze="last-2", epochs=1)
    module = load_backbone(resolve_model(str(tiny_dinov2))).module
    expected = sum(p.numel() for block in module.encoder.layer[-2:] for p in block.parameters())
    expected += sum(p.numel() for p in module.layernorm.parameters()) + (2 * 32 * 2 + 2)  # + head on cls+mean
    assert record["cost"]["trainable_parameters"] == expected
    assert record["pool"] == "cls+mean"
    with pytest.raises(MedprobeError, match="has 4 blocks"):
        run(blobs, tiny_dinov2, tmp_path / "out", unfreeze="last-9")


def test_interrupted_run_resumes_to_the_same_result(blobs, tiny_timm_models, tmp_path, monkeypatch):
    model = tiny_timm_models["resnet"]
    reference = run(blobs, model, tmp_path / "a", epochs=4)
    original = augment.TrainImages.__getitem__
    calls = {"n": 0}

    def crash_in_epoch_three(self, key):
        if key // len(self.indices) == 2:
            calls["n"] += 1
            if calls["n"] > 9:
                raise KeyboardInterrupt
        return original(self, key)

    monkeypatch.setattr(augment.TrainImages, "__getitem__", crash_in_epoch_three)
    with pytest.raises(Interrupted, match="run the same command with --resume") as interrupted:
        run(blobs, model, tmp_path / "b", epochs=4)
    named = str(interrupted.value).split("checkpointed under ")[1].split(";")[0]
    assert Path(named) == tmp_path / "b" / blobs.name / "checkpoints" and list(Path(named).rglob("last.safetensors"))
    # README: last.safetensors holds the weights, optimizer moments, scheduler, RNG and history; best the weights
    from safetensors import safe_open

    [last] = Path(named).rglob("last.safetensors")
    assert re.fullmatch(r".+__finetune-all__fold\d+-seed0", last.parent.name), last.parent.name
    with safe_open(str(last), framework="pt") as handle:
        keys, metadata = set(handle.keys()), handle.metadata()
    assert {"rng.cpu"} <= keys and any(k.startswith("model.") for k in keys)
    assert any(k.endswith(".exp_avg") for k in keys) and any(k.endswith(".exp_avg_sq") for k in keys)  # AdamW's
    progress = json.loads(metadata["progress"])
    assert progress["epoch"] == 2 and len(progress["history"]) == 2  # two whole epochs before the stop
    assert json.loads(metadata["scheduler"])["last_epoch"] > 0 and json.loads(metadata["param_groups"])
    with safe_open(str(last.with_name("best.safetensors")), framework="pt") as handle:
        assert not any(k.startswith(("optimizer.", "rng.")) for k in handle.keys())
    epochs_trained = set()

    def record_epochs(self, key):
        epochs_trained.add(key // len(self.indices))
        return original(self, key)

    monkeypatch.setattr(augment.TrainImages, "__getitem__", record_epochs)
    resumed = run(blobs, model, tmp_path / "b", epochs=4, resume=True)
    assert epochs_trained == {2, 3}  # it continued; epochs 1 and 2 were not trained again
    assert resumed["history"] == reference["history"]
    assert resumed["metrics"] == reference["metrics"]


def test_test_samples_are_exactly_the_probes(blobs, tiny_timm_models, tmp_path):
    write_cache(blobs, tmp_path / "cache", "resnet50", {"gap": np.random.default_rng(0).normal(size=(30, 4))})
    probed = probe(dataset=blobs, models=["resnet50"], cache_dir=tmp_path / "cache", out_dir=tmp_path / "out",
                   settings=ProbeSettings(folds=3, bootstrap=100), show_progress=False)[0]
    tuned = run(blobs, tiny_timm_models["resnet"], tmp_path / "out", fold=None, epochs=1)

    def id_fold(record):
        with open(tmp_path / "out" / "blobs-labels" / record["predictions"]) as handle:
            return sorted((row["id"], row["fold"]) for row in csv.DictReader(handle))

    assert id_fold(tuned) == id_fold(probed) and len(id_fold(tuned)) == 30
    assert tuned["patient_metrics"]["patients"] == 15


def test_finetune_cli_and_bad_input(blobs, tiny_timm_models, tmp_path, capsys):
    args = ["finetune", str(blobs.source), "--model", str(tiny_timm_models["resnet"]), "--epochs", "1",
            "--fold", "0", "--folds", "3", "--workers", "0", "--bootstrap", "100", "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as info:
        main([*args, "--epochs", "2"])
    captured = capsys.readouterr()
    assert info.value.code == 0 and "finetune-all" in captured.out and "trainable" in captured.out
    # a line per epoch on stderr, after that epoch's bar: the training loss and the validation score
    assert re.findall(r"fold 0 epoch (\d)/2: train loss \d\.\d{4}, val balanced accuracy \d\.\d{3}",
                      captured.err) == ["1", "2"]
    for bad, message in ((["--unfreeze", "some"], "--unfreeze 'some'"), (["--fold", "7"], "--fold 7")):
        with pytest.raises(SystemExit) as info:
            main(args + bad)
        assert info.value.code == 2 and message in capsys.readouterr().err


def test_layer_decay_and_class_weights(blobs, tiny_dinov2, tmp_path):
    from medprobe.finetune.blocks import apply_unfreeze
    from medprobe.finetune.runner import Classifier, _parameter_groups

    backbone = load_backbone(resolve_model(str(tiny_dinov2)))
    apply_unfreeze(backbone, "all")
    model = Classifier(backbone, 2, (32, 32))
    groups = _parameter_groups(model, FinetuneSettings(lr=1.0, head_lr=5.0, layer_decay=0.5))
    rates = {g["name"]: g["lr"] for g in groups}
    assert rates["head"] == 5.0 and rates["backbone-depth4"] == 1.0 and rates["backbone-depth1"] == 0.125
    assert rates["backbone-depth0"] == 0.0625  # embeddings: below the first block
    depth4 = next(g for g in groups if g["name"] == "backbone-depth4")["params"]
    assert any(p is model.backbone.layernorm.weight for p in depth4)  # the final norm sits with the top block
    grouped = sum(p.numel() for g in groups for p in g["params"])
    assert grouped == sum(p.numel() for p in model.parameters())


def test_layer_decay_reaches_the_optimizer_the_trainer_steps(blobs, tiny_dinov2, tmp_path):
    """A decay so steep that every block below the top one trains at a learning rate of ~1e-39: the embeddings
    stay where they were (a zero bias may become a subnormal) while the top block moved; without decay the
    embeddings move too."""
    original = load_backbone(resolve_model(str(tiny_dinov2))).module.state_dict()

    def largest_change(out_dir, prefix):
        tuned = best_weights(out_dir, "tiny-dinov2")
        return max(float((tuned[f"backbone.{k}"] - v).abs().max()) for k, v in original.items()
                   if k.startswith(prefix) and v.is_floating_point())

    record = run(blobs, tiny_dinov2, tmp_path / "decayed", epochs=2, layer_decay=1e-9, patience=5)
    assert record["settings"]["layer_decay"] == 1e-9
    assert largest_change(tmp_path / "decayed", "embeddings.") < 1e-30
    assert largest_change(tmp_path / "decayed", "encoder.layer.3.") > 1e-5  # the top block (of 4): full rate
    run(blobs, tiny_dinov2, tmp_path / "plain", epochs=2, patience=5)
    assert largest_change(tmp_path / "plain", "embeddings.") > 1e-5


def test_class_weights_weigh_the_loss_by_inverse_training_frequency(tmp_path, tiny_timm_models, monkeypatch):
    from medprobe.data.splits import dataset_splits
    from medprobe.finetune import runner

    rng = np.random.default_rng(0)
    rows = ["path,label"]
    for i in range(32):  # 3:1 imbalance
        label = int(i % 4 == 0)
        Image.fromarray(blob_image(rng, label)).save(tmp_path / f"{i:02d}.png")
        rows.append(f"{i:02d}.png,class{label}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    dataset = load_dataset(tmp_path / "labels.csv")
    real_loss, weights_used = torch.nn.CrossEntropyLoss, []

    def recording_loss(weight=None, **kwargs):
        weights_used.append(None if weight is None else weight.cpu().numpy())
        return real_loss(weight=weight, **kwargs)

    monkeypatch.setattr(runner.nn, "CrossEntropyLoss", recording_loss)
    weighted = run(dataset, tiny_timm_models["resnet"], tmp_path / "weighted", epochs=2, class_weights=True)
    plain = run(dataset, tiny_timm_models["resnet"], tmp_path / "plain", epochs=2)
    counts = np.bincount(dataset.targets()[dataset_splits(dataset, folds=3, seed=0).folds[0].train])
    assert weighted["settings"]["class_weights"] is True and counts[0] > 2 * counts[1]
    np.testing.assert_allclose(weights_used[0], counts.sum() / (2 * counts), rtol=1e-6)
    assert weights_used[1] is None
    assert weighted["history"] != plain["history"]  # the weighting changed the training itself


def test_results_do_not_depend_on_the_number_of_workers(blobs, tiny_timm_models, tmp_path):
    serial = run(blobs, tiny_timm_models["resnet"], tmp_path / "a", epochs=2)
    parallel = run(blobs, tiny_timm_models["resnet"], tmp_path / "b", epochs=2, workers=2)
    assert parallel["history"] == serial["history"] and parallel["metrics"] == serial["metrics"]


def test_an_external_cohort_is_fine_tuned_on_all_of_data_and_scored(blobs, tiny_timm_models, tmp_path):
    from sklearn.metrics import balanced_accuracy_score

    manifest = blob_patients(tmp_path / "site2", patients=12, per_patient=2, size=(48, 44))
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join([lines[0] + ",sex"] + [f"{line},{'FM'[i % 2]}" for i, line in
                                                        enumerate(lines[1:])]) + "\n")
    tested = load_dataset(manifest)
    with pytest.raises(MedprobeError, match="no column sex"):  # DATA needs the column too
        finetune(dataset=blobs, model=str(tiny_timm_models["resnet"]), out_dir=tmp_path / "out", tested=tested,
                 settings=FinetuneSettings(epochs=1, workers=0, fold=0, folds=3, subgroups=("sex",)))
    internal, external = finetune(
        dataset=blobs, model=str(tiny_timm_models["resnet"]), out_dir=tmp_path / "out", tested=tested,
        show_progress=False, settings=FinetuneSettings(epochs=1, lr=1e-3, head_lr=1e-2, batch_size=8, workers=0,
                                                       fold=0, folds=3, bootstrap=100, precision="fp32",
                                                       device="cpu", calibrate="temperature"))
    assert internal["protocol"] == "kfold3-fold0" and external["protocol"] == "external"
    assert external["external"]["internal_record"] == internal["record_path"].rsplit("/", 1)[1]
    size = external["sizes"][0]
    assert size["fold"] == -1 and size["train"] + size["val"] == 30 and size["test"] == 24
    with (tmp_path / "out" / blobs.name / external["predictions"]).open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["id"] for r in rows] == tested.ids and {r["fold"] for r in rows} == {"-1"}
    assert external["metrics"]["balanced_accuracy"]["value"] == pytest.approx(
        balanced_accuracy_score([r["label"] for r in rows], [r["prediction"] for r in rows]), abs=1e-12)
    assert external["calibrated"]["per_fold"][0]["fold"] == -1
    assert len(list((tmp_path / "out" / blobs.name / "checkpoints").glob("*__external-site2-labels-seed0"))) == 1


def blob_findings(root: Path, patients: int) -> Dataset:
    """Blob images as a multi-label set: left_square where the square is on the left, marker on every third
    patient; a sex column alternating F/M every two patients (so each sex has both values of each finding)."""
    manifest = blob_patients(root, patients=patients, per_patient=2, size=(48, 44))
    rows = []
    for i, line in enumerate(manifest.read_text().splitlines()[1:]):
        path, label, group = line.split(",")
        findings = (["left_square"] if label == "left" else []) + (["marker"] if (i // 2) % 3 == 0 else [])
        rows.append(f"{path},{'|'.join(findings)},{group},{'FM'[(i // 4) % 2]}")
    manifest.write_text("\n".join(["path,labels,group,sex", *rows]) + "\n")
    return load_dataset(manifest)


def test_multilabel_fine_tuning_trains_a_sigmoid_head_and_records_per_finding_metrics(tiny_timm_models, tmp_path):
    from sklearn.metrics import roc_auc_score

    dataset = blob_findings(tmp_path / "ml", 16)
    tested = blob_findings(tmp_path / "site2", 10)
    with pytest.raises(MedprobeError, match="--ordinal is for ordered classes"):
        finetune(dataset=dataset, model=str(tiny_timm_models["resnet"]), out_dir=tmp_path / "out",
                 settings=FinetuneSettings(ordinal=True))
    record, external = finetune(
        dataset=dataset, model=str(tiny_timm_models["resnet"]), out_dir=tmp_path / "out", show_progress=False,
        tested=tested, settings=FinetuneSettings(epochs=2, lr=1e-3, head_lr=1e-2, batch_size=8, workers=0, fold=0,
                                                 folds=3, bootstrap=100, precision="fp32", device="cpu",
                                                 subgroups=("sex",), subgroup_min=8, calibrate="temperature",
                                                 class_weights=True))
    assert record["task"] == "multilabel" and record["findings"] == ["left_square", "marker"]
    assert set(record["hyperparameters"][0]["thresholds"]) == {"left_square", "marker"}
    assert "val_macro_auroc" in record["history"][0]["epochs"][0]
    with (tmp_path / "out" / dataset.name / record["predictions"]).open() as handle:
        csv_rows = list(csv.DictReader(handle))
    assert len(csv_rows) == record["sizes"][0]["test"]
    truth = [float(r["true_left_square"]) for r in csv_rows]
    scores = [float(r["score_left_square"]) for r in csv_rows]
    assert record["per_finding"]["left_square"]["auroc"]["value"] == pytest.approx(roc_auc_score(truth, scores))
    marker = [float(r["score_marker"]) for r in csv_rows]
    assert all(0 <= s <= 1 for s in scores + marker)
    assert max(abs(a + b - 1) for a, b in zip(scores, marker, strict=True)) > 1e-3  # sigmoids, not a softmax
    assert record["calibration"]["scores_are_probabilities"] and set(record["per_finding"]["marker"]) >= {"ece", "nll"}
    assert [(e["fold"], e["finding"]) for e in record["calibrated"]["per_fold"]] == [(0, "left_square"), (0, "marker")]
    assert set(record["calibrated"]["metrics"]) == {"ece", "brier", "nll"}
    # the external cohort: one run on all of DATA, its checkpoint's thresholds, every image of site 2 scored
    assert external["protocol"] == "external" and external["task"] == "multilabel"
    assert external["external"]["internal_record"] == Path(record["record_path"]).name
    assert external["sizes"][0]["train"] + external["sizes"][0]["val"] == 32 and external["sizes"][0]["test"] == 20
    with (tmp_path / "out" / dataset.name / external["predictions"]).open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["id"] for r in rows] == tested.ids and {r["fold"] for r in rows} == {"-1"}
    thresholds = external["hyperparameters"][0]["thresholds"]
    assert {float(r["threshold_marker"]) for r in rows} == {thresholds["marker"]}
    truth = [[float(r[f"true_{f}"]) for f in ("left_square", "marker")] for r in rows]
    scores = [[float(r[f"score_{f}"]) for f in ("left_square", "marker")] for r in rows]
    assert external["metrics"]["macro_auroc"]["value"] == pytest.approx(roc_auc_score(truth, scores), abs=1e-12)
    groups = {g["value"]: g for g in external["subgroups"]["columns"]["sex"]["groups"]}
    female = [i for i, r in enumerate(rows) if r["subgroup_sex"] == "F"]
    assert groups["F"]["samples"] == len(female) == 12
    assert groups["F"]["metrics"]["macro_auroc"]["value"] == pytest.approx(
        roc_auc_score([truth[i] for i in female], [scores[i] for i in female]), abs=1e-12)


def test_multilabel_class_weights_are_each_findings_negatives_per_positive_in_the_bce():
    from medprobe.finetune.tasks import MaskedBCE, MultiLabel

    class Findings:
        findings = ["a", "b"]

        @staticmethod
        def finding_matrix():
            return np.array([[1, 0], [0, 0], [0, np.nan], [0, 1], [1, 0]], dtype=float)

    weights = MultiLabel(Findings()).class_weights(np.array([0, 1, 2, 3]))  # a: 1 of 4; b: 1 of 3 known
    assert weights.tolist() == [3.0, 2.0]
    logits, targets = torch.randn(6, 2), torch.tensor([[1.0, 0], [0, 1], [1, 1], [0, 0], [1, 0], [0, 1]])
    expected = torch.nn.BCEWithLogitsLoss(pos_weight=weights)(logits, targets)
    assert torch.allclose(MaskedBCE(weights)(logits, targets), expected)
    targets[2, 1] = float("nan")  # an unknown label adds nothing
    known = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.nan_to_num(targets), reduction="none",
                                                                 pos_weight=weights)
    mask = ~torch.isnan(targets)
    assert torch.allclose(MaskedBCE(weights)(logits, targets), (known * mask).sum() / mask.sum())


def test_the_trainer_steps_adamw_on_a_linear_warmup_then_cosine_schedule(blobs, tiny_timm_models, tmp_path,
                                                                         monkeypatch):
    stepped = []
    original = torch.optim.AdamW.step

    def recording(self, *args, **kwargs):
        stepped.append({group["name"]: group["lr"] for group in self.param_groups})
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording)
    record = run(blobs, tiny_timm_models["resnet"], tmp_path / "out", epochs=4, warmup_epochs=1, batch_size=4,
                 patience=10)
    steps, per_epoch = len(stepped), len(stepped) // 4
    assert steps == record["cost"]["optimizer_steps"] and per_epoch > 2
    for step, lrs in enumerate(stepped):  # the lr each step was taken with
        if step < per_epoch:
            factor = (step + 1) / per_epoch  # linear warm-up to the peak at the end of the first epoch
        else:
            factor = 0.5 * (1 + math.cos(math.pi * (step - per_epoch) / (steps - per_epoch)))
        assert lrs == pytest.approx({"head": 1e-2 * factor, "backbone": 1e-3 * factor}, rel=1e-9), step
    assert stepped[per_epoch - 1]["backbone"] == pytest.approx(1e-3) and stepped[-1]["backbone"] < 1e-4


def test_training_images_are_cropped_flipped_and_rotated_as_documented(blobs):
    from medprobe.data.reader import SampleImages
    from medprobe.models.preprocess import Preprocessing

    prep = Preprocessing(resize=32, crop=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3)
    images = SampleImages(blobs.samples, blobs.root)
    train = augment.TrainImages(images, [0], [0], prep, seed=0)
    crop, flip, rotate = train.augment.transforms
    assert tuple(crop.size) == (32, 32) and crop.scale == (0.7, 1.0)
    assert flip.p == 0.5 and list(rotate.degrees) == [-10.0, 10.0]
    # on a marker image (a bright left column band): some epochs flip it to the right, never anything else
    marker = np.zeros((64, 64, 3), np.uint8)
    marker[:, :30] = 255  # wide enough to survive any crop of scale >= 0.7
    train.images = [Image.fromarray(marker)]
    sides = set()
    for epoch in range(24):
        pixels = train[epoch][0]
        assert pixels.shape == (3, 32, 32)
        left, right = pixels[:, 8:24, :3].mean(), pixels[:, 8:24, -3:].mean()
        assert (left > 0.5) != (right > 0.5)  # the band is on one side, whatever the crop and rotation
        sides.add("left" if left > 0.5 else "right")
    assert sides == {"left", "right"}
    assert torch.equal(train[3][0], train[3][0])  # seeded by (seed, epoch, image)


def test_validation_and_test_images_are_the_extraction_s(blobs, tiny_timm_models, tmp_path):
    from medprobe.cache import read_features
    from medprobe.data.reader import SampleImages
    from medprobe.extract.runner import extract

    model = str(tiny_timm_models["resnet"])
    info = extract(dataset=blobs, model=model, cache_dir=tmp_path / "cache", device="cpu", precision="fp32",
                   workers=0, batch_size=4, show_progress=False)
    backbone = load_backbone(resolve_model(model))
    evaluation = augment.EvalImages(SampleImages(blobs.samples, blobs.root), list(range(6)),
                                    backbone.preprocessing)
    with torch.inference_mode():
        pooled = backbone.embed(torch.stack([evaluation[i][0] for i in range(6)]))["gap"].numpy()
    cached = read_features(info.path, blobs.ids[:6], "gap")  # float16 in the cache
    np.testing.assert_allclose(pooled, cached, rtol=2e-3, atol=2e-3)


def test_the_best_epoch_s_checkpoint_predicts_the_test_fold_and_patience_stops_the_run(blobs, tiny_timm_models,
                                                                                        tmp_path, monkeypatch):
    from medprobe.finetune import runner, tasks

    scripted = iter([0.5, 0.9, 0.6, 0.6, 0.95, 0.99])  # peaks at epoch 2; epochs 3-4 bring nothing
    monkeypatch.setattr(tasks.SingleLabel, "validation_score", lambda self, y, scores: next(scripted))
    saved, predicted = [], []

    def snapshot(model):
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    original_save, original_predict = runner.save_weights, runner.predict
    monkeypatch.setattr(runner, "save_weights", lambda model, path: (saved.append(snapshot(model)),
                                                                     original_save(model, path)))
    monkeypatch.setattr(runner, "predict", lambda model, *a: (predicted.append(snapshot(model)),
                                                              original_predict(model, *a))[1])
    record = run(blobs, tiny_timm_models["resnet"], tmp_path / "out", epochs=6, patience=2)
    assert [e["epoch"] for e in record["history"][0]["epochs"]] == [1, 2, 3, 4]  # 2 stale epochs: stopped
    assert len(saved) == 2  # best.safetensors written at epochs 1 and 2 only
    at_the_end = predicted[-2]  # the validation pass of epoch 4
    test_model = predicted[-1]
    assert all(torch.equal(test_model[k], saved[-1][k]) for k in test_model)
    assert not all(torch.equal(at_the_end[k], saved[-1][k]) for k in test_model)
    on_disk = best_weights(tmp_path / "out", "resnet")
    assert all(torch.equal(on_disk[k], saved[-1][k].cpu()) for k in saved[-1])


def test_the_record_states_the_cost_the_trainer_measured(blobs, tiny_timm_models, tmp_path):
    import resource

    started = time.perf_counter()
    record = run(blobs, tiny_timm_models["resnet"], tmp_path / "out", epochs=2)
    elapsed = time.perf_counter() - started
    cost = record["cost"]
    assert 0 < cost["wall_seconds"] <= elapsed
    # the images/s are over training time alone, a part of the wall time
    assert cost["train_images_per_second"] >= cost["train_images"] / cost["wall_seconds"] > 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # the record rounds to 0.1 MB, so it may sit up to 0.05 MB above the raw peak
    assert 100 < cost["peak_memory_mb"] <= round(peak, 1)  # torch alone is more than 100 MB
    assert cost["device"] == "cpu" and cost["precision"] == "fp32"

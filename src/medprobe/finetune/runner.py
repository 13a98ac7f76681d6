"""`medprobe finetune`: train a linear head on the backbone's pooled feature, with the backbone frozen
(`none`, the reference study's "frozen" protocol trained by gradient), fully unfrozen (`all`) or
unfrozen in its last N blocks, on exactly the probe's splits. Checkpoint selection and early stopping use
validation data only; the test fold is predicted once, by the best checkpoint."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from medprobe.data.reader import SampleImages
from medprobe.data.samples import Dataset
from medprobe.data.splits import Fold, dataset_splits, pooled_test, whole_data_fold
from medprobe.errors import Interrupted, MedprobeError
from medprobe.finetune.augment import EpochShuffle, EvalImages, TrainImages
from medprobe.finetune.blocks import apply_unfreeze, parse_unfreeze
from medprobe.finetune.checkpoint import load_training_state, load_weights, save_training_state, save_weights
from medprobe.finetune.settings import FinetuneSettings
from medprobe.finetune.tasks import Task, task_for
from medprobe.models.backbone import Backbone, load_backbone
from medprobe.models.registry import auto_pools, resolve_model
from medprobe.progress import STDERR, progress_bar
from medprobe.results.calibration import calibrated_block, calibrated_findings_block, fit_findings, get_calibrator
from medprobe.results.external import EXTERNAL, EXTERNAL_FOLD, mark_external, matched_test_set
from medprobe.results.metrics import PROBABILITIES, group_codes, test_report
from medprobe.results.multilabel import finding_thresholds, multilabel_records
from medprobe.results.record import fold_sizes, run_header, safe_name, save_multilabel_run, save_run
from medprobe.results.schema import MULTILABEL, Cost, record_name
from medprobe.results.subgroups import check_subgroup_columns, run_multilabel_subgroups, run_subgroups
from medprobe.runtime.device import autocast, device_name, peak_memory_mb, resolve_device, resolve_precision
from medprobe.runtime.workers import default_workers, deferred_interrupts, interruption_point, start_worker


class Classifier(nn.Module):
    """Backbone + linear head on its pooled feature (cls+mean for ViTs, gap for CNNs, as the probes'
    `auto` pool), so frozen and unfrozen numbers compare like for like. The head standardises its input with
    a parameter-free BatchNorm (as MAE's linear probing does): backbones' feature scales differ by orders of
    magnitude, and the probes standardise too, so one head learning rate serves every backbone."""

    def __init__(self, backbone: Backbone, n_classes: int, input_size: tuple[int, int]) -> None:
        super().__init__()
        self.backbone = backbone.module
        self._embed = backbone.embed
        self.block_layout = backbone.layout
        self.pools = auto_pools(backbone.pools)
        with torch.no_grad():
            dim = self.features(torch.zeros(1, 3, *input_size)).shape[1]
        self.head = nn.Sequential(nn.BatchNorm1d(dim, affine=False), nn.Linear(dim, n_classes))

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        pooled = self._embed(pixels)
        return torch.cat([pooled[p] for p in self.pools], dim=1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pixels).float())


def _parameter_groups(model: Classifier, settings: FinetuneSettings) -> list[dict]:
    groups = [{"params": list(model.head.parameters()), "lr": settings.head_lr, "name": "head"}]
    backbone_params = [p for p in model.backbone.parameters() if p.requires_grad]
    if not backbone_params:
        return groups
    if settings.layer_decay is None:
        return groups + [{"params": backbone_params, "lr": settings.lr, "name": "backbone"}]
    # layer-wise decay: block i of n (and the final norm, with block n) gets lr * decay^(n - i); parameters
    # below the first block (embeddings) decay most
    layout = model.block_layout()
    blocks = layout.blocks
    depth_of = {id(p): i + 1 for i, block in enumerate(blocks) for p in block}
    depth_of.update({id(p): len(blocks) for p in layout.top})
    by_depth: dict[int, list] = {}
    for p in backbone_params:
        by_depth.setdefault(depth_of.get(id(p), 0), []).append(p)
    n = len(blocks)
    return groups + [{"params": params, "lr": settings.lr * settings.layer_decay ** (n - depth),
                      "name": f"backbone-depth{depth}"} for depth, params in sorted(by_depth.items())]


def _schedule(total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


@torch.inference_mode()
def predict(model: Classifier, loader: DataLoader, device: torch.device, precision: str, n: int,
            task: Task) -> np.ndarray:
    model.eval()
    scores = np.zeros((n, model.head[-1].out_features))
    for pixels, index in loader:
        with autocast(device, precision):
            logits = model(pixels.to(device, non_blocking=True))
        scores[index.numpy()] = task.probabilities(logits).cpu().numpy()
        interruption_point()
    return scores


class FoldTrainer:
    def __init__(self, dataset: Dataset, model_name: str, settings: FinetuneSettings, out_dir: Path) -> None:
        self.dataset, self.settings = dataset, settings
        self.spec = resolve_model(model_name)
        self.device = resolve_device(settings.device)
        self.precision = resolve_precision(settings.precision, self.device)
        self.classes = dataset.classes
        self.task = task_for(dataset)
        self.y = self.task.targets()
        self.images = SampleImages(dataset.samples, dataset.root)
        self.workers = default_workers() if settings.workers is None else settings.workers
        self.mode = settings.unfreeze
        self.method = f"finetune-{self.mode}"
        self.name = f"{self.spec.slug}__{self.method}"  # checkpoint folders; records: results.schema.record_name
        self.out_dir = Path(out_dir)

    def checkpoint_dir(self, fold: Fold, cohort: Dataset | None = None) -> Path:
        part = f"fold{fold.index}" if cohort is None else f"{EXTERNAL}-{safe_name(cohort.name)}"
        folder = f"{self.name}__{part}-seed{self.settings.seed}"
        return self.out_dir / safe_name(self.dataset.name) / "checkpoints" / folder

    def _loader(self, data, sampler=None, drop_last: bool = False) -> DataLoader:
        return DataLoader(data, batch_size=self.settings.batch_size, sampler=sampler, num_workers=self.workers,
                          pin_memory=self.device.type == "cuda", persistent_workers=self.workers > 0,
                          drop_last=drop_last, worker_init_fn=start_worker)

    def images_per_epoch(self, fold: Fold) -> int:
        """Full batches only when there is at least one (see train)."""
        size = self.settings.batch_size
        return len(fold.train) // size * size if len(fold.train) >= size else len(fold.train)

    def train(self, fold: Fold, show_progress: bool, advance_all=None, cohort: Dataset | None = None) -> dict:
        """One fold. `advance_all`: one progress bar for the whole fine-tune (no per-epoch bars or lines).
        `cohort`: score this external cohort's every sample instead of the fold's test part."""
        s = self.settings
        torch.manual_seed(s.seed + fold.index)
        backbone = load_backbone(self.spec, image_size=s.image_size)
        prep = backbone.preprocessing
        trainable_backbone = apply_unfreeze(backbone, s.unfreeze)
        model = Classifier(backbone, self.task.outputs, prep.input_size).to(self.device)
        if backbone.is_cnn:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(_parameter_groups(model, s), weight_decay=s.weight_decay)
        # full batches only (as MAE and DeiT train): the head's BatchNorm needs more than one sample, and
        # the shuffle changes which few samples wait for the next epoch
        drop_last = len(fold.train) >= s.batch_size
        steps_per_epoch = len(fold.train) // s.batch_size if drop_last else 1
        images_per_epoch = self.images_per_epoch(fold)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, _schedule(s.epochs * steps_per_epoch, max(1, round(s.warmup_epochs * steps_per_epoch))))
        weights = self.task.class_weights(fold.train) if s.class_weights else None
        loss_fn = self.task.loss(weights.to(self.device) if weights is not None else None)
        folder = self.checkpoint_dir(fold, cohort)
        last, best = folder / "last.safetensors", folder / "best.safetensors"
        progress = {"epoch": 0, "best_score": -1.0, "best_epoch": -1, "stale_epochs": 0, "history": [],
                    "train_seconds": 0.0, "train_images": 0, "train_steps": 0}
        if s.resume and last.exists():
            progress = load_training_state(last, model=model, optimizer=optimizer, scheduler=scheduler)
        shuffle = EpochShuffle(len(fold.train), s.seed)
        train_loader = self._loader(
            TrainImages(self.images, list(fold.train), self.task.train_labels(fold.train), prep, s.seed), shuffle,
            drop_last=drop_last)
        val_loader = self._loader(EvalImages(self.images, list(fold.val), prep))
        frozen = parse_unfreeze(s.unfreeze)[0] == "none"
        for epoch in range(progress["epoch"], s.epochs):
            if progress["stale_epochs"] >= s.patience:
                break
            shuffle.epoch = epoch
            model.train()
            if frozen:
                model.backbone.eval()  # nothing of the backbone changes, batch-norm statistics included
            started, losses, seen = time.perf_counter(), [], 0
            trained_on = "all data" if fold.index == EXTERNAL_FOLD else f"fold {fold.index}"  # all: for --test
            description = f"{trained_on} epoch {epoch + 1}/{s.epochs}"
            with (contextlib.nullcontext(advance_all) if advance_all else
                  progress_bar(description, total=images_per_epoch, enabled=show_progress)) as advance:
                for pixels, labels in train_loader:
                    pixels = pixels.to(self.device, non_blocking=True)
                    if backbone.is_cnn:
                        pixels = pixels.contiguous(memory_format=torch.channels_last)
                    with autocast(self.device, self.precision):
                        logits = model(pixels)
                    loss = loss_fn(logits.float(), labels.to(self.device))
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    losses.append(float(loss.detach()))
                    seen += len(labels)
                    advance(len(labels))
                    interruption_point()
            progress["train_seconds"] += time.perf_counter() - started
            progress["train_images"] += seen
            progress["train_steps"] = progress.get("train_steps", 0) + len(losses)  # older checkpoints lack it
            val_scores = predict(model, val_loader, self.device, self.precision, len(fold.val), self.task)
            score = self.task.validation_score(self.y[fold.val], val_scores)
            progress["history"].append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)),
                                        self.task.selection: score})
            if show_progress and advance_all is None:
                shown = self.task.selection.replace("_", " ").replace("auroc", "AUROC")
                STDERR.print(f"{description}: train loss {np.mean(losses):.4f}, {shown} {score:.3f}"
                             f"{' (best)' if score > progress['best_score'] else ''}")
            if score > progress["best_score"]:
                progress.update(best_score=score, best_epoch=epoch + 1, stale_epochs=0)
                save_weights(model, best)
            else:
                progress["stale_epochs"] += 1
            progress["epoch"] = epoch + 1
            save_training_state(last, model=model, optimizer=optimizer, scheduler=scheduler, progress=progress)
        load_weights(model, best)
        if cohort is None:
            test_images, test_positions = self.images, list(fold.test)
        else:
            test_images, test_positions = SampleImages(cohort.samples, cohort.root), list(range(len(cohort.samples)))
        test_loader = self._loader(EvalImages(test_images, test_positions, prep))
        scores = predict(model, test_loader, self.device, self.precision, len(test_positions), self.task)
        calibration = thresholds = None
        if s.calibrate or self.dataset.multilabel:  # the best checkpoint's validation predictions: the data that
            val_scores = predict(model, val_loader, self.device, self.precision, len(fold.val), self.task)
            # chose it, never the test part, fit the calibration and the findings' thresholds
            calibrator = get_calibrator(s.calibrate) if s.calibrate else None
            if self.dataset.multilabel:
                thresholds = finding_thresholds(self.y[fold.val], val_scores)
                calibration = fit_findings(calibrator, self.y[fold.val], val_scores) if calibrator else None
            elif calibrator:
                calibration = calibrator.fit(val_scores, self.y[fold.val])
        head_params = sum(p.numel() for p in model.head.parameters())
        return {
            "scores": scores, "calibration": calibration, "thresholds": thresholds, "history": progress["history"],
            "best_epoch": progress["best_epoch"], "val_score": progress["best_score"],
            "trainable_parameters": trainable_backbone + head_params,
            "total_parameters": sum(p.numel() for p in model.parameters()),
            "train_seconds": progress["train_seconds"], "train_images": progress["train_images"],
            "train_steps": progress.get("train_steps", 0),
            "train_images_per_second": progress["train_images"] / max(progress["train_seconds"], 1e-9),
            "preprocessing": prep.to_dict(), "pools": model.pools, "family": backbone.family,
        }


def finetune(*, dataset: Dataset, model: str, settings: FinetuneSettings, out_dir: Path,
             show_progress: bool = True, verbose: bool = True, tested: Dataset | None = None) -> list[dict]:
    """Fine-tune `model` on every fold's training part and score its test part. `verbose`: a progress bar
    and a line per epoch; otherwise one progress bar for the whole fine-tune. `tested`: an external cohort
    (--test): also train once on all of DATA (validation carved from it for checkpoint choice) and score it.
    Returns the k-fold record, then the external one."""
    parse_unfreeze(settings.unfreeze)
    if settings.calibrate is not None:
        get_calibrator(settings.calibrate)  # an unknown name is an error listing the choices
    if settings.epochs < 1 or settings.batch_size < 1:
        raise MedprobeError("--epochs and --batch-size must be at least 1")
    check_subgroup_columns(dataset, settings.subgroups, settings.subgroup_min)
    if dataset.multilabel and settings.ordinal:
        raise MedprobeError("--ordinal is for ordered classes; a multi-label dataset's findings have no order; drop it")
    if tested is not None:
        tested = matched_test_set(dataset, tested)
        check_subgroup_columns(tested, settings.subgroups, settings.subgroup_min)
    plan = dataset_splits(dataset, folds=settings.folds, seed=settings.seed)
    folds = plan.folds
    if settings.fold is not None:
        if not 0 <= settings.fold < len(folds):
            raise MedprobeError(f"--fold {settings.fold}: choose 0..{len(folds) - 1} or all")
        folds = [folds[settings.fold]]
    trainer = FoldTrainer(dataset, model, settings, out_dir)
    runs = [(folds, None)]
    if tested is not None:
        runs.append(([whole_data_fold(dataset, settings.seed, EXTERNAL_FOLD)], tested))
    started = time.perf_counter()
    try:
        with deferred_interrupts():  # Ctrl-C lands between batches, never inside the loaders' queue code
            if show_progress and not verbose:
                total = sum(trainer.images_per_epoch(fold) for run, _ in runs for fold in run) * settings.epochs
                description = (f"finetune {trainer.spec.name} ({settings.unfreeze}, {len(folds)} folds x "
                               f"{settings.epochs} epochs{' + external' if tested is not None else ''})")
                with progress_bar(description, total=total) as advance:
                    results = [[trainer.train(fold, show_progress, advance, cohort) for fold in run]
                               for run, cohort in runs]
            else:
                results = [[trainer.train(fold, show_progress, cohort=cohort) for fold in run] for run, cohort in runs]
    except KeyboardInterrupt:
        raise Interrupted(f"{trainer.spec.name}: every finished epoch is checkpointed under "
                          f"{trainer.out_dir / safe_name(dataset.name) / 'checkpoints'}; run the same command with "
                          "--resume to continue") from None
    wall = time.perf_counter() - started
    protocol = plan.protocol if settings.fold is None else f"{plan.protocol}-fold{settings.fold}"
    internal = _save(trainer, plan, folds, results[0], dataset, protocol, wall, out_dir)
    if tested is None:
        return [internal]
    return [internal, _save(trainer, plan, runs[1][0], results[1], tested, f"{EXTERNAL}-{safe_name(tested.name)}",
                            wall, out_dir, internal=Path(internal["record_path"]).name)]


TRAINED_ON = ("all {samples} samples of DATA: trained on all but a validation part carved from them as in every "
              "fold, which chose the checkpoint")


def _save(trainer: FoldTrainer, plan, folds: list[Fold], results: list[dict], tested: Dataset, protocol: str,
          wall: float, out_dir: Path, internal: str | None = None) -> dict:
    """The run record of `folds` scored on `tested` (DATA itself, or with `internal` set, an external cohort)."""
    settings, dataset = trainer.settings, trainer.dataset
    external = internal is not None
    positions, fold_of = pooled_test(folds)
    if external:
        positions = np.arange(len(tested.samples))
        fold_of = np.full(len(positions), EXTERNAL_FOLD)
    if dataset.multilabel:
        return _save_multilabel(trainer, plan, folds, results, tested, positions, fold_of, protocol, wall, out_dir,
                                internal)
    scores = np.concatenate([r["scores"] for r in results])
    y = tested.targets()[positions]
    groups = [tested.samples[i].group for i in positions]
    sizes = fold_sizes(folds)
    record = {
        **run_header(dataset, plan, kind="finetune", method=f"finetune-{settings.unfreeze}", model=trainer.spec.name,
                     pool="+".join(results[0]["pools"]), protocol=EXTERNAL if external else protocol,
                     seed=settings.seed, bootstrap=settings.bootstrap, ordinal=settings.ordinal),
        "settings": asdict(settings),
        "backbone": _backbone_block(trainer, results),
    }
    if external:
        sizes = mark_external(record, tested, sizes, groups, internal=internal, internal_protocol=plan.protocol,
                              trained_on=TRAINED_ON.format(samples=len(trainer.y)))
    record.update({
        "sizes": sizes,
        "hyperparameters": [{"fold": f.index, "best_epoch": r["best_epoch"],
                             "val_balanced_accuracy": r["val_score"]} for f, r in zip(folds, results, strict=True)],
        "history": [{"fold": f.index, "epochs": r["history"]} for f, r in zip(folds, results, strict=True)],
        **test_report(y, scores, fold_of=fold_of, groups=groups, classes=dataset.classes, ordinal=settings.ordinal,
                      replicates=settings.bootstrap, seed=settings.seed,
                      scores_are=PROBABILITIES),  # softmax of a cross-entropy-trained head
        "cost": _cost(trainer, results, wall),
    })
    if settings.calibrate:
        record["calibrated"] = calibrated_block(
            settings.calibrate, [(f.index, r["calibration"], r["scores"]) for f, r in zip(folds, results, strict=True)],
            y, clusters=group_codes(groups), replicates=settings.bootstrap, seed=settings.seed,
            fitted_on="each fold's validation part, predicted by the best checkpoint (chosen on that same part); "
                      "applied to the fold's test predictions")
    if settings.subgroups:
        record["subgroups"] = run_subgroups(tested, positions, scores, columns=settings.subgroups,
                                            min_samples=settings.subgroup_min, ordinal=settings.ordinal,
                                            replicates=settings.bootstrap, seed=settings.seed,
                                            scores_are=PROBABILITIES)
    return save_run(out_dir, tested, record_name(trainer.spec.slug, trainer.method, protocol, settings.seed), record,
                    positions, fold_of,
                    scores, subgroups=settings.subgroups, folder=dataset.name)


def _backbone_block(trainer: FoldTrainer, results: list[dict]) -> dict:
    return {"name": trainer.spec.name, "backend": trainer.spec.backend, "source": trainer.spec.source,
            "family": results[0]["family"], "licence": trainer.spec.licence,
            "preprocessing": results[0]["preprocessing"]}


def _cost(trainer: FoldTrainer, results: list[dict], wall: float) -> Cost:
    return Cost(trainable_parameters=results[0]["trainable_parameters"],
                total_parameters=results[0]["total_parameters"], wall_seconds=round(wall, 3),
                train_images_per_second=round(float(np.mean([r["train_images_per_second"] for r in results])), 2),
                train_images=sum(r["train_images"] for r in results),
                optimizer_steps=sum(r["train_steps"] for r in results),
                peak_memory_mb=round(peak_memory_mb(trainer.device), 1), device=str(trainer.device),
                device_name=device_name(trainer.device), precision=trainer.precision)


def _save_multilabel(trainer: FoldTrainer, plan, folds: list[Fold], results: list[dict], tested: Dataset,
                     positions: np.ndarray, fold_of: np.ndarray, protocol: str, wall: float, out_dir: Path,
                     internal: str | None) -> dict:
    """A multi-label fine-tune's record: sigmoid outputs, each fold's best checkpoint chosen by validation
    macro AUROC, each finding's threshold by F1 on that checkpoint's validation predictions; `tested`'s images
    at `positions` scored (DATA's pooled test parts, or with `internal` set, an external cohort)."""
    settings, dataset = trainer.settings, trainer.dataset
    scores = np.concatenate([r["scores"] for r in results])
    thresholds = np.concatenate([np.tile(r["thresholds"], (len(r["scores"]), 1)) for r in results])
    Y = tested.finding_matrix()[positions]
    groups = [tested.samples[i].group for i in positions]
    record = {
        **run_header(dataset, plan, kind="finetune", method=f"finetune-{settings.unfreeze}", model=trainer.spec.name,
                     pool="+".join(results[0]["pools"]), protocol=protocol if internal is None else EXTERNAL,
                     seed=settings.seed, bootstrap=settings.bootstrap, ordinal=False, task=MULTILABEL),
        "findings": list(dataset.findings), "settings": asdict(settings),
        "head": "one sigmoid output per finding, binary cross-entropy over the known labels",
        "backbone": _backbone_block(trainer, results),
    }
    sizes = fold_sizes(folds)
    if internal is not None:
        sizes = mark_external(record, tested, sizes, groups, internal=internal, internal_protocol=plan.protocol,
                              trained_on=TRAINED_ON.format(samples=len(trainer.y)))
    record.update({
        "sizes": sizes,
        "hyperparameters": [{"fold": f.index, "best_epoch": r["best_epoch"], "val_macro_auroc": r["val_score"],
                             "thresholds": dict(zip(dataset.findings, r["thresholds"], strict=True))}
                            for f, r in zip(folds, results, strict=True)],
        "thresholds": {"rule": "per fold and finding: the F1-maximising threshold on the best checkpoint's "
                               "validation predictions", "positive": "score >= threshold"},
        "history": [{"fold": f.index, "epochs": r["history"]} for f, r in zip(folds, results, strict=True)],
        **multilabel_records(Y, scores, thresholds, list(dataset.findings), replicates=settings.bootstrap,
                            seed=settings.seed, clusters=group_codes(groups), probabilities=True),  # sigmoids
        "cost": _cost(trainer, results, wall),
    })
    if settings.calibrate:
        record["calibrated"] = calibrated_findings_block(
            settings.calibrate, [(f.index, r["calibration"]) for f, r in zip(folds, results, strict=True)], scores,
            fold_of, Y, list(dataset.findings), clusters=group_codes(groups), replicates=settings.bootstrap,
            seed=settings.seed, fitted_on="per fold and finding: the validation part's predictions by the best "
                                          "checkpoint (chosen on that same part); applied to the fold's test "
                                          "predictions")
    if settings.subgroups:
        record["subgroups"] = run_multilabel_subgroups(tested, positions, scores, thresholds,
                                                       columns=settings.subgroups, min_samples=settings.subgroup_min,
                                                       replicates=settings.bootstrap, seed=settings.seed,
                                                       probabilities=True)
    name = record_name(trainer.spec.slug, trainer.method, protocol, settings.seed)
    return save_multilabel_run(out_dir, tested, name, record, positions, fold_of, scores, thresholds,
                               subgroups=settings.subgroups, folder=dataset.name)

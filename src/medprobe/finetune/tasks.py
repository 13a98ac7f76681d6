"""What fine-tuning trains for: one label per image (softmax head, cross-entropy, checkpoints chosen by
validation balanced accuracy) or several findings per image (one sigmoid output per finding, binary
cross-entropy over the known labels only, checkpoints chosen by validation macro AUROC). A task is a small
class; `task_for(dataset)` picks it."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import nn

from medprobe.data.samples import Dataset
from medprobe.results.metrics import balanced_accuracy
from medprobe.results.multilabel import multilabel_metrics
from medprobe.results.schema import MULTILABEL


class Task:
    name: ClassVar[str]
    selection: ClassVar[str]  # the validation score that picks the checkpoint, as recorded

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    @property
    def outputs(self) -> int:
        raise NotImplementedError

    def targets(self) -> np.ndarray:
        raise NotImplementedError

    def train_labels(self, positions: np.ndarray) -> list:
        """Per training image what the loader hands the loss."""
        raise NotImplementedError

    def class_weights(self, train: np.ndarray) -> torch.Tensor:
        """--class-weights: the loss weights from the training part's labels."""
        raise NotImplementedError

    def loss(self, weights: torch.Tensor | None) -> nn.Module:
        raise NotImplementedError

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def validation_score(self, y: np.ndarray, scores: np.ndarray) -> float:
        raise NotImplementedError


class SingleLabel(Task):
    name = "single-label"
    selection = "val_balanced_accuracy"

    @property
    def outputs(self) -> int:
        return len(self.dataset.classes)

    def targets(self) -> np.ndarray:
        return self.dataset.targets()

    def train_labels(self, positions):
        return self.targets()[positions].tolist()

    def class_weights(self, train):
        """Inverse class frequency, n / (classes x count): a balanced set weighs every class 1."""
        counts = np.bincount(self.targets()[train], minlength=self.outputs).astype(float)
        return torch.tensor(counts.sum() / (len(counts) * np.maximum(counts, 1)), dtype=torch.float32)

    def loss(self, weights):
        return nn.CrossEntropyLoss(weight=weights)

    def probabilities(self, logits):
        return torch.softmax(logits.float(), dim=1)

    def validation_score(self, y, scores):
        return balanced_accuracy(y, scores)


class MaskedBCE(nn.Module):
    """Binary cross-entropy over the known labels only (a NaN target is unknown and adds nothing);
    `pos_weight` (one per finding) weighs the positive term, as torch's BCEWithLogitsLoss does."""

    def __init__(self, pos_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.pos_weight = pos_weight

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        known = ~torch.isnan(targets)
        losses = nn.functional.binary_cross_entropy_with_logits(logits, torch.nan_to_num(targets), reduction="none",
                                                                pos_weight=self.pos_weight)
        return (losses * known).sum() / known.sum().clamp(min=1)


class MultiLabel(Task):
    name = MULTILABEL
    selection = "val_macro_auroc"

    @property
    def outputs(self) -> int:
        return len(self.dataset.findings)

    def targets(self) -> np.ndarray:
        return self.dataset.finding_matrix()

    def train_labels(self, positions):
        return [row.astype(np.float32) for row in self.targets()[positions]]

    def class_weights(self, train):
        """Per finding negatives / positives among the training part's known labels (BCE's pos_weight), so a
        rare finding's positives weigh as much as its negatives."""
        Y = self.targets()[train]
        positives = np.nansum(Y == 1, axis=0).astype(float)
        negatives = np.nansum(Y == 0, axis=0).astype(float)
        return torch.tensor(negatives / np.maximum(positives, 1), dtype=torch.float32)

    def loss(self, weights):
        return MaskedBCE(weights)

    def probabilities(self, logits):
        return torch.sigmoid(logits.float())

    def validation_score(self, y, scores):
        value = multilabel_metrics(y, scores, np.full_like(scores, 0.5), np.ones((1, len(y))))["macro_auroc"][0]
        return float(value) if np.isfinite(value) else 0.0


def task_for(dataset: Dataset) -> Task:
    return (MultiLabel if dataset.multilabel else SingleLabel)(dataset)

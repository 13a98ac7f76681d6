"""The one split function, shared by probe and finetune: same dataset + seed + folds -> same test samples.

- A `split` column is used as given; when it has no `val` rows, validation is carved out of `train`.
- Otherwise stratified k-fold, grouped by `group` (patient) when present; validation is carved out of each
  fold's training part only. Groups never straddle train/val/test.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from medprobe.data.samples import Dataset
from medprobe.errors import MedprobeError

VAL_FRACTION = 0.2


@dataclass(frozen=True)
class Fold:
    index: int
    train: np.ndarray  # positions into the dataset's samples
    val: np.ndarray
    test: np.ndarray


@dataclass(frozen=True)
class SplitPlan:
    protocol: str  # "given-split" or "kfold<k>"
    folds: list[Fold]
    grouped: bool
    seed: int


def patient_ids(groups: Sequence[str | None] | None) -> np.ndarray | None:
    """Patient ids, or None when the dataset has no groups."""
    if groups is None or all(g is None for g in groups):
        return None
    # a sample without a group is its own patient
    return np.array([g if g is not None else f"\0sample{i}" for i, g in enumerate(groups)], dtype=object)


def _splitter(n_splits: int, grouped: bool, seed: int):
    cls = StratifiedGroupKFold if grouped else StratifiedKFold
    return cls(n_splits=n_splits, shuffle=True, random_state=seed)


def _split_once(positions: np.ndarray, y: np.ndarray, group_ids: np.ndarray | None, n_splits: int,
                seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    splitter = _splitter(n_splits, group_ids is not None, seed)
    with warnings.catch_warnings():  # "least populated class has only N members": we checked what matters
        warnings.simplefilter("ignore", UserWarning)
        parts = splitter.split(np.zeros(len(positions)), y[positions],
                               None if group_ids is None else group_ids[positions])
        return [(positions[a], positions[b]) for a, b in parts]


def carve_validation(train: np.ndarray, y: np.ndarray, group_ids: np.ndarray | None, seed: int,
                     fraction: float = VAL_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) from a training part, stratified and grouped like the outer split."""
    unit_counts = _units_per_class(y[train], None if group_ids is None else group_ids[train])
    if min(unit_counts.values()) < 2:
        raise MedprobeError(
            f"class {min(unit_counts, key=unit_counts.get)!r} has fewer than 2 "
            f"{'patients' if group_ids is not None else 'samples'} for training; a validation split needs 2"
        )
    # a class with fewer units than folds cannot be stratified: tiny datasets get a larger validation part
    n_splits = max(2, min(round(1 / fraction), min(unit_counts.values())))
    rest, val = _split_once(train, y, group_ids, n_splits, seed + 1)[0]
    return np.sort(rest), np.sort(val)


def _units_per_class(y: np.ndarray, group_ids: np.ndarray | None) -> Counter:
    if group_ids is None:
        return Counter(y.tolist())
    return Counter(label for label, _ in {(label, g) for label, g in zip(y.tolist(), group_ids, strict=True)})


def _refuse_shared_groups(group_ids: np.ndarray, parts: dict[str, np.ndarray]) -> None:
    """A given split must not put one patient on two sides: that is leakage, whatever the metrics say."""
    names = list(parts)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            shared = set(group_ids[parts[first]]) & set(group_ids[parts[second]])
            if shared:
                example = sorted(shared)[0]
                raise MedprobeError(
                    f"the split column puts {len(shared)} patient(s) (e.g. group {example!r}) in both {first} and "
                    f"{second}; give all of a patient's rows one split, or drop the split column for grouped k-fold"
                )


def make_splits(labels: Sequence[str], *, groups: Sequence[str | None] | None = None,
                splits: Sequence[str | None] | None = None, folds: int = 5, seed: int = 0) -> SplitPlan:
    y = np.asarray(labels, dtype=object)
    group_ids = patient_ids(groups)
    grouped = group_ids is not None
    positions = np.arange(len(y))
    if splits is not None and any(s is not None for s in splits):
        split = np.asarray(splits, dtype=object)
        test, train, val = (positions[split == name] for name in ("test", "train", "val"))
        if len(test) == 0:
            raise MedprobeError("the split column has no 'test' rows; add some or drop the column for k-fold")
        if grouped:
            _refuse_shared_groups(group_ids, {"train": train, "val": val, "test": test})
        if len(val) == 0:
            train, val = carve_validation(train, y, group_ids, seed)
        return SplitPlan("given-split", [Fold(0, train, val, test)], grouped, seed)
    if folds < 2:
        raise MedprobeError(f"--folds {folds} must be at least 2")
    counts = _units_per_class(y, group_ids)
    unit = "patients" if grouped else "samples"
    for label, count in sorted(counts.items(), key=lambda item: item[1]):
        if count < folds:
            raise MedprobeError(
                f"class {label!r} has {count} {unit}, fewer than --folds {folds}; use --folds {max(2, count)} "
                "or add data"
            )
    result = []
    for index, (train, test) in enumerate(_split_once(positions, y, group_ids, folds, seed)):
        train, val = carve_validation(train, y, group_ids, seed + index)
        result.append(Fold(index, train, val, np.sort(test)))
    return SplitPlan(f"kfold{folds}", result, grouped, seed)


def pooled_test(folds: list[Fold]) -> tuple[np.ndarray, np.ndarray]:
    """Every test sample of `folds` once, and the fold that tested it."""
    return (np.concatenate([f.test for f in folds]), np.concatenate([np.full(len(f.test), f.index) for f in folds]))


def _iterative_folds(unit_counts: np.ndarray, unit_sizes: np.ndarray, n_splits: int,
                     rng: np.random.Generator) -> np.ndarray:
    """Iterative stratification (Sechidis et al. 2011) of units (patients): `unit_counts` (units, findings)
    holds each unit's positive samples per finding, `unit_sizes` its samples. The rarest finding's units are
    placed first, each in the fold that still wants most of that finding (ties: most samples wanted, then
    at random); units without any finding fill the folds that want most samples. Returns each unit's fold."""
    desired = np.tile(unit_counts.sum(axis=0) / n_splits, (n_splits, 1))
    wanted = np.full(n_splits, unit_sizes.sum() / n_splits)
    fold_of = np.full(len(unit_counts), -1)

    def place(unit: int, column: np.ndarray) -> None:
        score = np.stack([column, wanted, rng.random(n_splits)])
        fold = int(np.lexsort(score[::-1])[-1])  # highest column, then wanted, then the draw
        fold_of[unit] = fold
        desired[fold] -= unit_counts[unit]
        wanted[fold] -= unit_sizes[unit]

    while (fold_of < 0).any():
        left = fold_of < 0
        positives = unit_counts[left].sum(axis=0)
        if not (positives > 0).any():
            for unit in rng.permutation(np.flatnonzero(left)):
                place(unit, wanted)
            break
        finding = int(np.argmin(np.where(positives > 0, positives, np.inf)))
        for unit in rng.permutation(np.flatnonzero(left & (unit_counts[:, finding] > 0))):
            place(unit, desired[:, finding])
    return fold_of


def _unit_codes(dataset: Dataset) -> tuple[np.ndarray, bool]:
    """Each sample's unit (patient, or the sample itself without groups) as a code 0..U-1, and whether grouped."""
    ids = patient_ids([s.group for s in dataset.samples])
    if ids is None:
        return np.arange(len(dataset.samples)), False
    return np.unique(ids, return_inverse=True)[1], True


def _multilabel_parts(positions: np.ndarray, Y: np.ndarray, units: np.ndarray, n_splits: int,
                      seed: int) -> list[np.ndarray]:
    """`positions` cut into n_splits parts, whole units each, stratified over the findings."""
    local = np.unique(units[positions], return_inverse=True)[1]
    counts = np.zeros((local.max() + 1, Y.shape[1]))
    np.add.at(counts, local, np.nan_to_num(Y[positions]))
    sizes = np.bincount(local).astype(float)
    fold_of_unit = _iterative_folds(counts, sizes, n_splits, np.random.default_rng(seed))
    return [np.sort(positions[fold_of_unit[local] == k]) for k in range(n_splits)]


def _check_findings(dataset: Dataset, Y: np.ndarray, units: np.ndarray, folds: int) -> None:
    unit = "patients" if len(np.unique(units)) < len(units) else "samples"
    for f, name in enumerate(dataset.findings):
        known = ~np.isnan(Y[:, f])
        positive = len(np.unique(units[known & (Y[:, f] == 1)]))
        negative = len(np.unique(units[known & (Y[:, f] == 0)]))
        if min(positive, negative) < folds:
            side = "with" if positive < negative else "without"
            raise MedprobeError(f"finding {name!r}: only {min(positive, negative)} {unit} {side} it, fewer than "
                                f"--folds {folds}; use --folds {max(2, min(positive, negative))}, add data or drop "
                                "the finding")


def _multilabel_carve(train: np.ndarray, Y: np.ndarray, units: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) from a training part: one of 1/VAL_FRACTION finding-stratified parts of whole patients."""
    parts = _multilabel_parts(train, Y, units, round(1 / VAL_FRACTION), seed)
    return np.sort(np.concatenate(parts[1:])), parts[0]


def whole_data_fold(dataset: Dataset, seed: int, index: int) -> Fold:
    """All of the dataset as one training fold (an external test's: the cohort is its test part), with its
    validation part carved as every k-fold fold's is: stratified by class or over the findings, patients whole."""
    everything = np.arange(len(dataset.samples))
    if dataset.multilabel:
        train, val = _multilabel_carve(everything, dataset.finding_matrix(), _unit_codes(dataset)[0], seed + 1)
    else:
        train, val = carve_validation(everything, dataset.targets(), patient_ids([s.group for s in dataset.samples]),
                                      seed)
    return Fold(index, train, val, np.empty(0, dtype=int))


def multilabel_splits(dataset: Dataset, *, folds: int = 5, seed: int = 0) -> SplitPlan:
    """Multi-label k-fold: iterative stratification over patients (each patient's positives per finding),
    so patients stay whole and every fold's finding rates stay close; validation carved from each fold's
    training part the same way. A `split` column is used as given, as for single labels."""
    Y = dataset.finding_matrix()
    units, grouped = _unit_codes(dataset)
    positions = np.arange(len(Y))
    splits = np.asarray([s.split for s in dataset.samples], dtype=object)

    def carve(train: np.ndarray, salt: int) -> tuple[np.ndarray, np.ndarray]:
        return _multilabel_carve(train, Y, units, seed + 1 + salt)

    if any(s is not None for s in splits):
        test, train, val = (positions[splits == name] for name in ("test", "train", "val"))
        if len(test) == 0:
            raise MedprobeError("the split column has no 'test' rows; add some or drop the column for k-fold")
        if grouped:
            _refuse_shared_groups(units, {"train": train, "val": val, "test": test})
        if len(val) == 0:
            train, val = carve(train, 0)
        return SplitPlan("given-split", [Fold(0, train, val, test)], grouped, seed)
    if folds < 2:
        raise MedprobeError(f"--folds {folds} must be at least 2")
    _check_findings(dataset, Y, units, folds)
    result = []
    for index, test in enumerate(_multilabel_parts(positions, Y, units, folds, seed)):
        train, val = carve(np.setdiff1d(positions, test), index)
        result.append(Fold(index, train, val, test))
    return SplitPlan(f"kfold{folds}", result, grouped, seed)


def dataset_splits(dataset: Dataset, *, folds: int = 5, seed: int = 0) -> SplitPlan:
    dataset.require_labels()
    if dataset.multilabel:
        return multilabel_splits(dataset, folds=folds, seed=seed)
    samples = dataset.samples
    return make_splits([s.label for s in samples], groups=[s.group for s in samples],
                       splits=[s.split for s in samples], folds=folds, seed=seed)

from __future__ import annotations

import numpy as np
import pytest

from medprobe.data.splits import make_splits
from medprobe.errors import MedprobeError


def labels_and_groups(patients: int = 30, per_patient: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    patient_labels = rng.choice(["a", "b", "c"], size=patients)
    labels = [patient_labels[p] for p in range(patients) for _ in range(per_patient)]
    groups = [f"p{p}" for p in range(patients) for _ in range(per_patient)]
    return labels, groups


def test_grouped_kfold_never_splits_a_patient_and_covers_everything_once():
    labels, groups = labels_and_groups()
    plan = make_splits(labels, groups=groups, folds=5, seed=3)
    assert plan.protocol == "kfold5" and plan.grouped
    tested = np.concatenate([f.test for f in plan.folds])
    assert sorted(tested.tolist()) == list(range(len(labels)))
    g = np.asarray(groups)
    for fold in plan.folds:
        parts = [set(g[fold.train]), set(g[fold.val]), set(g[fold.test])]
        assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
        assert len(fold.train) + len(fold.val) + len(fold.test) == len(labels)
        assert set(np.asarray(labels)[fold.val]) == {"a", "b", "c"}


def test_splits_are_deterministic_for_a_seed_and_change_with_it():
    labels, groups = labels_and_groups()
    first = make_splits(labels, groups=groups, folds=5, seed=1)
    again = make_splits(labels, groups=groups, folds=5, seed=1)
    other = make_splits(labels, groups=groups, folds=5, seed=2)
    for a, b in zip(first.folds, again.folds, strict=True):
        assert (a.test == b.test).all() and (a.val == b.val).all()
    assert any(not np.array_equal(a.test, b.test) for a, b in zip(first.folds, other.folds, strict=True))


def test_given_split_is_used_and_validation_is_carved_from_train_only():
    labels = ["a", "b"] * 20
    splits = ["train"] * 30 + ["test"] * 10
    plan = make_splits(labels, splits=splits, seed=0)
    fold = plan.folds[0]
    assert plan.protocol == "given-split"
    assert fold.test.tolist() == list(range(30, 40))
    assert set(fold.val) | set(fold.train) == set(range(30)) and not set(fold.val) & set(fold.train)


def test_given_validation_rows_are_kept():
    labels = ["a", "b"] * 10
    splits = ["train"] * 12 + ["val"] * 4 + ["test"] * 4
    fold = make_splits(labels, splits=splits).folds[0]
    assert fold.val.tolist() == [12, 13, 14, 15]


def test_too_few_patients_per_class_for_the_folds_is_a_clear_error():
    labels = ["a"] * 10 + ["b"] * 6
    groups = [f"p{i // 2}" for i in range(16)]  # class b: 3 patients
    with pytest.raises(MedprobeError, match="class 'b' has 3 patients, fewer than --folds 5; use --folds 3"):
        make_splits(labels, groups=groups, folds=5)


def test_given_split_that_shares_a_patient_is_refused():
    labels = ["a", "b"] * 6
    groups = [f"p{i // 2}" for i in range(12)]
    splits = ["train"] * 5 + ["test"] * 7  # patient p2 has rows 4 (train) and 5 (test)
    with pytest.raises(MedprobeError, match=r"1 patient\(s\) \(e.g. group 'p2'\) in both train and test"):
        make_splits(labels, groups=groups, splits=splits)

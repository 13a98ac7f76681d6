"""medprobe's probes as scikit-learn estimators: LogisticProbe, SVMProbe and KNNProbe.

Each `fit(X, y)` runs medprobe's own protocol (the registered probes of medprobe/probe/, not a copy): a
stratified validation part is carved from the training data (grouped by patient when `groups` is given),
the probe's hyperparameter grid is searched on it (best validation balanced accuracy, ties to the more
regularised candidate), and the chosen hyperparameters are refit on all of X. So a probe can go into a
Pipeline, cross_val_score or GridSearchCV, be cloned and pickled, and still give the numbers
`medprobe probe` gives. Labels may be of any type scikit-learn accepts (strings, integers, ...).

Where no validation part can be carved (a class with a single sample, or a single patient), the probe's
fixed few-shot hyperparameters are used, as `medprobe probe --shots` does; `best_score_` is then None.

Learned state: `classes_`, `n_features_in_`, `best_params_` (the chosen hyperparameters), `best_score_`
(their validation balanced accuracy) and `probe_` (medprobe's FittedProbe). Never imports torch.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from medprobe.data.splits import VAL_FRACTION, carve_validation, patient_ids
from medprobe.errors import InvalidData, MedprobeError
from medprobe.probe import classifiers
from medprobe.probe.protocol import as_float32

__all__ = ["KNNProbe", "LogisticProbe", "SVMProbe"]


class _MedprobeProbe(ClassifierMixin, BaseEstimator):
    """The shared estimator: subclasses name their registered probe (`probe_name`) and their parameters."""

    probe_name: ClassVar[str]

    def _search_options(self) -> dict:
        return {}

    def fit(self, X, y, groups=None):
        """Search the hyperparameters on a validation part of (X, y), then refit them on all of it.
        `groups` (e.g. patient ids, one per row) keeps each group on one side of the validation split."""
        X, y = validate_data(self, X, y)
        check_classification_targets(y)
        encoder = LabelEncoder().fit(y)
        self.classes_ = encoder.classes_
        if len(self.classes_) < 2:
            raise InvalidData(f"y has only one class ({self.classes_[0]!r}); a classifier needs at least two")
        codes = encoder.transform(y)
        n_classes = len(self.classes_)
        group_ids = None if groups is None else patient_ids(list(np.asarray(groups, dtype=object)))
        if group_ids is not None and len(group_ids) != len(y):
            raise InvalidData(f"groups has {len(group_ids)} entries for {len(y)} samples; give one per row")
        X = as_float32(X)
        try:
            train, val = carve_validation(np.arange(len(y)), np.asarray(y), group_ids, self.random_state,
                                          fraction=self.val_fraction)
        except MedprobeError:  # a class too small to validate on: fixed hyperparameters, as for --shots
            params, score = dict(classifiers.get_probe(self.probe_name).few_shot), None
        else:
            params, score = classifiers.search(self.probe_name, X[train], codes[train], X[val], codes[val],
                                               n_classes, self.random_state, **self._search_options())
        self.best_params_, self.best_score_ = params, score
        self.probe_ = classifiers.fit(self.probe_name, params, X, codes, n_classes, self.random_state)
        return self

    def _scores(self, X) -> np.ndarray:
        check_is_fitted(self, "probe_")
        X = validate_data(self, X, reset=False)
        return self.probe_.scores(as_float32(X), len(self.classes_))

    def predict(self, X) -> np.ndarray:
        """The class with the highest score, as medprobe's predictions CSV has it."""
        scores = self._scores(X)
        return self.classes_[scores.argmax(axis=1)]


class LogisticProbe(_MedprobeProbe):
    """medprobe's logreg: standardised features, L2 logistic regression (L-BFGS), C chosen on validation
    from DINOv2's 45-value log grid 1e-6..1e5 (warm-started path; `coarse_to_fine`: about 24 of them),
    refit on all the training data. `predict_proba` gives its probabilities."""

    probe_name = "logreg"

    def __init__(self, *, coarse_to_fine: bool = False, val_fraction: float = VAL_FRACTION, random_state: int = 0):
        self.coarse_to_fine = coarse_to_fine
        self.val_fraction = val_fraction
        self.random_state = random_state

    def _search_options(self) -> dict:
        return {"coarse_to_fine": self.coarse_to_fine}

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, columns in `classes_` order."""
        return self._scores(X)


class SVMProbe(_MedprobeProbe):
    """medprobe's svm: standardised features; linear (C in 1e-4..1) and RBF (C in 0.1..100, gamma="scale")
    SVMs searched together on validation (libsvm up to 4000 training samples; liblinear and a Nystroem RBF
    above), refit on all the training data. `decision_function` gives the SVM's decision values;
    `predict_proba` the per-class scores medprobe records (a softmax of them, used for AUROC: a ranking,
    not calibrated probabilities)."""

    probe_name = "svm"

    def __init__(self, *, val_fraction: float = VAL_FRACTION, random_state: int = 0):
        self.val_fraction = val_fraction
        self.random_state = random_state

    def decision_function(self, X) -> np.ndarray:
        """Decision values: (n_samples,) for two classes (positive: classes_[1]), else one column per class."""
        check_is_fitted(self, "probe_")
        X = validate_data(self, X, reset=False)
        model = self.probe_.model
        return model[-1].decision_function(as_float32(model[:-1].transform(as_float32(X))))

    def predict_proba(self, X) -> np.ndarray:
        """medprobe's per-class scores (softmax of the decision values), columns in `classes_` order."""
        return self._scores(X)


class KNNProbe(_MedprobeProbe):
    """medprobe's knn: L2-normalised features, cosine similarity, k from 1..200 (capped by the training
    size) and uniform or DINOv2-style softmax(similarity / 0.07) weighting chosen on validation; the index
    then holds all the training data. `predict_proba` gives the normalised neighbour votes."""

    probe_name = "knn"

    def __init__(self, *, val_fraction: float = VAL_FRACTION, random_state: int = 0):
        self.val_fraction = val_fraction
        self.random_state = random_state

    def predict_proba(self, X) -> np.ndarray:
        """Normalised (weighted) neighbour votes per class, columns in `classes_` order."""
        return self._scores(X)

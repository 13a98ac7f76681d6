"""Multi-label probes: one binary probe per finding on the same features and the same patient-grouped,
finding-stratified folds. Per fold and finding, the classifier's hyperparameters are chosen on that
finding's validation labels, a decision threshold is chosen there too (the one maximising F1 of the model
fitted on the training part alone), and the chosen hyperparameters are refit on train+val to score the test
part. Unknown labels (blank, or an ignored -1) are left out of that finding's fits and metrics."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed
from threadpoolctl import threadpool_limits

from medprobe.data.samples import Dataset
from medprobe.data.splits import Fold, dataset_splits, pooled_test, whole_data_fold
from medprobe.errors import MedprobeError
from medprobe.probe.classifiers import get_probe
from medprobe.probe.protocol import FoldData, Probe, best
from medprobe.probe.settings import ProbeSettings
from medprobe.results.calibration import Calibrator, calibrated_findings_block, get_calibrator, not_applied
from medprobe.results.external import EXTERNAL, EXTERNAL_FOLD, mark_external
from medprobe.results.metrics import PROBABILITIES, group_codes
from medprobe.results.multilabel import best_f1_threshold, multilabel_records
from medprobe.results.record import fold_sizes, record_paths, run_header, safe_name, save_multilabel_run
from medprobe.results.schema import MULTILABEL, record_name
from medprobe.results.subgroups import run_multilabel_subgroups

THRESHOLD_RULE = ("per fold and finding: the F1-maximising threshold on that finding's validation labels, "
                  "scored by the chosen hyperparameters fitted on the fold's training part alone")


def _fit_finding(probe: Probe, X: np.ndarray, y: np.ndarray, fold: Fold, finding: str, seed: int,
                 coarse_to_fine: bool, X_test: np.ndarray | None = None, calibrator: Calibrator | None = None) -> dict:
    """One finding on one fold: search, threshold (and with a calibrator, its fit) on the validation
    predictions of the train-only fit, refit on train+val, score the test part (or `X_test`, an external
    cohort's features)."""
    train, val = (part[~np.isnan(y[part])] for part in (fold.train, fold.val))
    ytr, yval = y[train].astype(int), y[val].astype(int)
    if len(np.unique(ytr)) < 2:
        raise MedprobeError(f"finding {finding!r}: fold {fold.index}'s training part has only "
                            f"{'positive' if ytr.any() else 'negative'} labels; use fewer --folds or add data")
    data = FoldData(X[train], ytr, X[val], yval, 2)
    with threadpool_limits(1):
        searched = [probe.search(part, data, seed, coarse_to_fine=coarse_to_fine)
                    for part in probe.parts(len(train), X.shape[1], 2)]
        params, val_score = best([candidate for found in searched for candidate in found.candidates])
        on_train = probe.fit(params, X[train], ytr, 2, seed)
        val_scores = on_train.scores(X[val], 2)
        threshold = best_f1_threshold(val_scores[:, 1], yval == 1)
        calibration = calibrator.fit(val_scores, yval) if calibrator is not None else None
        train_val = np.sort(np.concatenate([train, val]))  # dataset order: the plain fit on those samples
        final = probe.fit(params, X[train_val], y[train_val].astype(int), 2, seed)
        scores = final.scores(X[fold.test] if X_test is None else X_test, 2)[:, 1]
    return {"params": params, "val_balanced_accuracy": val_score, "threshold": threshold, "scores": scores,
            "calibration": calibration,
            "fits": sum(found.fits for found in searched) + 2,
            "capped": sum(found.capped for found in searched) + int(on_train.capped) + int(final.capped)}


class MultilabelProber:
    def __init__(self, dataset: Dataset, settings: ProbeSettings, out_dir: Path) -> None:
        self.dataset, self.settings, self.out_dir = dataset, settings, Path(out_dir)
        self.Y = dataset.finding_matrix()
        self.plan = dataset_splits(dataset, folds=settings.folds, seed=settings.seed)
        self.skipped: list[dict] = []
        self.backend = "local"

    def run(self, job, method: str, parallel: Parallel) -> dict:
        """The k-fold estimate: every fold's test part scored by probes fitted on its training part."""
        positions, fold_of = pooled_test(self.plan.folds)
        return self._run(job, method, parallel, self.plan.folds, self.dataset, positions, fold_of, self.plan.protocol)

    def run_external(self, job, method: str, parallel: Parallel, tested: Dataset) -> dict:
        """--test DATA2: per finding, hyperparameters and threshold chosen on a validation part of all of DATA
        (carved as in every fold), one refit on all of DATA, every image of DATA2 scored."""
        fold = whole_data_fold(self.dataset, self.settings.seed, EXTERNAL_FOLD)
        positions = np.arange(len(tested.samples))
        return self._run(job, method, parallel, [fold], tested, positions, np.full(len(positions), EXTERNAL_FOLD),
                         f"{EXTERNAL}-{safe_name(tested.name)}", X_test=job.X_test)

    def _run(self, job, method: str, parallel: Parallel, folds: list[Fold], tested: Dataset, positions: np.ndarray,
             fold_of: np.ndarray, protocol: str, X_test: np.ndarray | None = None) -> dict:
        s, findings = self.settings, self.dataset.findings
        started = time.perf_counter()
        probe = get_probe(method)
        probabilities = probe.scores_are == PROBABILITIES
        calibrator = get_calibrator(s.calibrate) if s.calibrate and probabilities else None
        tasks = [(fold, f) for fold in folds for f in range(len(findings))]
        results = parallel(delayed(_fit_finding)(probe, job.X, self.Y[:, f], fold, findings[f], s.seed,
                                                 s.coarse_to_fine, X_test, calibrator) for fold, f in tasks)
        scores = np.zeros((len(positions), len(findings)))
        thresholds = np.zeros_like(scores)
        tested_sizes = [len(fold.test) if X_test is None else len(X_test) for fold in folds]
        offset = dict(zip([fold.index for fold in folds], np.cumsum([0, *tested_sizes]), strict=False))
        for (fold, f), result in zip(tasks, results, strict=True):
            rows = slice(offset[fold.index], offset[fold.index] + len(result["scores"]))
            scores[rows, f] = result["scores"]
            thresholds[rows, f] = result["threshold"]
        Y = tested.finding_matrix()[positions]
        groups = [tested.samples[i].group for i in positions]
        record = {
            **run_header(self.dataset, self.plan, kind="probe", method=method, model=job.name, pool=job.pool,
                         protocol=self.plan.protocol if X_test is None else EXTERNAL, seed=s.seed,
                         bootstrap=s.bootstrap, ordinal=False, task=MULTILABEL),
            "findings": list(findings),
            "finding_counts": {name: {"positives": int(np.nansum(self.Y[:, f] == 1)),
                                      "known": int((~np.isnan(self.Y[:, f])).sum())}
                               for f, name in enumerate(findings)},
            "features": job.sources, "feature_dim": job.dim, "skipped_samples": self.skipped,
        }
        sizes = fold_sizes(folds)
        if X_test is not None:
            internal = record_name(job.name, method, self.plan.protocol, s.seed, pool=job.pool)
            sizes = mark_external(record, tested, sizes, groups, refit=len(self.Y),
                                  internal=record_paths(self.out_dir, self.dataset.name, internal)[0].name,
                                  internal_protocol=self.plan.protocol,
                                  trained_on=f"all {len(self.Y)} images of DATA: per finding, hyperparameters and "
                                             "threshold chosen on a validation part carved from them as in every "
                                             "fold, then one refit on all of them")
        record.update({
            "sizes": sizes,
            "hyperparameters": [{"fold": fold.index, "finding": findings[f], **r["params"],
                                 "val_balanced_accuracy": r["val_balanced_accuracy"], "threshold": r["threshold"]}
                                for (fold, f), r in zip(tasks, results, strict=True)],
            "thresholds": {"rule": THRESHOLD_RULE, "positive": "score >= threshold"},
            "search": {**probe.settings(), "coarse_to_fine": s.coarse_to_fine, "selection": "per fold and finding"},
            "convergence": {"search_fits": sum(r["fits"] for r in results),
                            "fits_at_cap": sum(r["capped"] for r in results)},
            **multilabel_records(Y, scores, thresholds, list(findings), replicates=s.bootstrap, seed=s.seed,
                                clusters=group_codes(groups), probabilities=probabilities,
                                why_not=f"the scores are {probe.scores_are}, not probabilities; ECE, Brier and NLL "
                                        "are not computed"),
        })
        if s.calibrate:
            record["calibrated"] = not_applied(s.calibrate, f"the scores are {probe.scores_are}, not probabilities")
            if calibrator is not None:
                fitted = [(fold.index, [r["calibration"] for (other, _), r in zip(tasks, results, strict=True)
                                        if other is fold]) for fold in folds]
                record["calibrated"] = calibrated_findings_block(
                    s.calibrate, fitted, scores, fold_of, Y, list(findings), clusters=group_codes(groups),
                    replicates=s.bootstrap, seed=s.seed, fitted_on="per fold and finding: the validation part's "
                    "predictions by the chosen hyperparameters fitted on the training part alone; applied to the "
                    "fold's test predictions")
        if s.subgroups:
            record["subgroups"] = run_multilabel_subgroups(tested, positions, scores, thresholds, columns=s.subgroups,
                                                           min_samples=s.subgroup_min, replicates=s.bootstrap,
                                                           seed=s.seed, probabilities=probabilities)
        record["timings"] = {"total_seconds": round(time.perf_counter() - started, 3), "backend": self.backend}
        name = record_name(job.name, method, protocol, s.seed, pool=job.pool)
        return save_multilabel_run(self.out_dir, tested, name, record, positions, fold_of, scores, thresholds,
                                   subgroups=s.subgroups, folder=self.dataset.name)


def refuse_unsupported(settings: ProbeSettings) -> None:
    """What multi-label probes do not take, as one error each."""
    for given, option, why in (
            (settings.shots, "--shots", "not available for multi-label datasets yet"),
            (settings.save_model, "--save-model", "not available for multi-label datasets yet"),
            (settings.out_of_core, "--out-of-core", "not available for multi-label datasets yet"),
            (settings.ordinal, "--ordinal", "for ordered classes; a multi-label dataset's findings have no order")):
        if given:
            raise MedprobeError(f"{option} is {why}; drop it")

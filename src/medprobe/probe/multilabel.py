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
from medprobe.data.splits import Fold, dataset_splits, pooled_test
from medprobe.errors import MedprobeError
from medprobe.probe.classifiers import get_probe
from medprobe.probe.protocol import FoldData, Probe, best
from medprobe.probe.settings import ProbeSettings
from medprobe.results.metrics import group_codes
from medprobe.results.multilabel import best_f1_threshold, multilabel_records
from medprobe.results.record import fold_sizes, run_header, save_multilabel_run
from medprobe.results.schema import MULTILABEL, record_name

THRESHOLD_RULE = ("per fold and finding: the F1-maximising threshold on that finding's validation labels, "
                  "scored by the chosen hyperparameters fitted on the fold's training part alone")


def _fit_finding(probe: Probe, X: np.ndarray, y: np.ndarray, fold: Fold, finding: str, seed: int,
                 coarse_to_fine: bool) -> dict:
    """One finding on one fold: search, threshold on validation, refit on train+val, score the test part."""
    train, val = (part[~np.isnan(y[part])] for part in (fold.train, fold.val))
    ytr, yval = y[train].astype(int), y[val].astype(int)
    if len(np.unique(ytr)) < 2:
        raise MedprobeError(f"finding {finding!r}: fold {fold.index}'s training part has only "
                            f"{'positive' if ytr.any() else 'negative'} labels; use fewer --folds or add data")
    data = FoldData(X[train], ytr, X[val], yval, 2)
    with threadpool_limits(1):
        searched = [probe.search(part, data, seed, coarse_to_fine=coarse_to_fine) for part in probe.parts(len(train))]
        params, val_score = best([candidate for found in searched for candidate in found.candidates])
        on_train = probe.fit(params, X[train], ytr, 2, seed)
        threshold = best_f1_threshold(on_train.scores(X[val], 2)[:, 1], yval == 1)
        train_val = np.concatenate([train, val])
        final = probe.fit(params, X[train_val], y[train_val].astype(int), 2, seed)
        scores = final.scores(X[fold.test], 2)[:, 1]
    return {"params": params, "val_balanced_accuracy": val_score, "threshold": threshold, "scores": scores,
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
        s, findings = self.settings, self.dataset.findings
        started = time.perf_counter()
        probe = get_probe(method)
        tasks = [(fold, f) for fold in self.plan.folds for f in range(len(findings))]
        results = parallel(delayed(_fit_finding)(probe, job.X, self.Y[:, f], fold, findings[f], s.seed,
                                                 s.coarse_to_fine) for fold, f in tasks)
        positions, fold_of = pooled_test(self.plan.folds)
        scores = np.zeros((len(positions), len(findings)))
        thresholds = np.zeros_like(scores)
        offset = {fold.index: start for fold, start in
                  zip(self.plan.folds, np.cumsum([0] + [len(f.test) for f in self.plan.folds]), strict=False)}
        for (fold, f), result in zip(tasks, results, strict=True):
            rows = slice(offset[fold.index], offset[fold.index] + len(fold.test))
            scores[rows, f] = result["scores"]
            thresholds[rows, f] = result["threshold"]
        Y = self.Y[positions]
        groups = [self.dataset.samples[i].group for i in positions]
        record = {
            **run_header(self.dataset, self.plan, kind="probe", method=method, model=job.name, pool=job.pool,
                         protocol=self.plan.protocol, seed=s.seed, bootstrap=s.bootstrap, ordinal=False,
                         task=MULTILABEL),
            "findings": list(findings),
            "finding_counts": {name: {"positives": int(np.nansum(self.Y[:, f] == 1)),
                                      "known": int((~np.isnan(self.Y[:, f])).sum())}
                               for f, name in enumerate(findings)},
            "features": job.sources, "feature_dim": job.dim, "skipped_samples": self.skipped,
            "sizes": fold_sizes(self.plan.folds),
            "hyperparameters": [{"fold": fold.index, "finding": findings[f], **r["params"],
                                 "val_balanced_accuracy": r["val_balanced_accuracy"], "threshold": r["threshold"]}
                                for (fold, f), r in zip(tasks, results, strict=True)],
            "thresholds": {"rule": THRESHOLD_RULE, "positive": "score >= threshold"},
            "search": {**probe.settings(), "coarse_to_fine": s.coarse_to_fine, "selection": "per fold and finding"},
            "convergence": {"search_fits": sum(r["fits"] for r in results),
                            "fits_at_cap": sum(r["capped"] for r in results)},
            **multilabel_records(Y, scores, thresholds, list(findings), replicates=s.bootstrap, seed=s.seed,
                                clusters=group_codes(groups)),
            "calibration": {"scores_are_probabilities": False,
                            "why": "not computed for multi-label runs; per-finding AUROC, AP and F1 are"},
            "timings": {"total_seconds": round(time.perf_counter() - started, 3), "backend": self.backend},
        }
        name = record_name(job.name, method, self.plan.protocol, s.seed, pool=job.pool)
        return save_multilabel_run(self.out_dir, self.dataset, name, record, positions, fold_of, scores, thresholds)


def refuse_unsupported(settings: ProbeSettings, tested: Dataset | None) -> None:
    """What multi-label probes do not take yet, as one error each."""
    for given, option in ((settings.shots, "--shots"), (tested is not None, "--test"), (settings.save_model,
                                                                                          "--save-model"),
                          (settings.subgroups, "--subgroups"), (settings.calibrate, "--calibrate"),
                          (settings.out_of_core, "--out-of-core"), (settings.ordinal, "--ordinal")):
        if given:
            raise MedprobeError(f"{option} is not available for multi-label datasets yet; drop it (the probes "
                                "report per-finding AUROC, AP and F1)")

"""`medprobe probe`: for each backbone (or fused set of caches) x classifier, choose hyperparameters on
validation data, refit on train+val, predict the held-out test samples, and write a run record with
bootstrap CIs. Torch is never imported on this path."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed
from threadpoolctl import threadpool_limits

from medprobe.data.samples import Dataset
from medprobe.data.splits import Fold, SplitPlan, dataset_splits, pooled_test, whole_data_fold
from medprobe.errors import MedprobeError
from medprobe.probe import streaming
from medprobe.probe.backends import compute_backend
from medprobe.probe.classifiers import CLASSIFIERS, get_probe
from medprobe.probe.features import CacheRef, FeatureStream, extracted_models, feature_stream, find_cache, skipped_in
from medprobe.probe.multilabel import MultilabelProber, refuse_unsupported
from medprobe.probe.protocol import FoldData, Probe, SearchOutcome, best, fit_scaler
from medprobe.probe.settings import ProbeSettings
from medprobe.progress import STDERR, progress_bar
from medprobe.results.calibration import Calibrator, calibrated_block, get_calibrator, not_applied
from medprobe.results.external import EXTERNAL, EXTERNAL_FOLD, mark_external, matched_test_set
from medprobe.results.metrics import (
    PROBABILITIES,
    calibration_block,
    evaluate_mean,
    group_codes,
    patient_block,
    summarize_metrics,
    test_report,
)
from medprobe.results.record import fold_sizes, record_paths, run_header, safe_name, save_run
from medprobe.results.schema import record_name
from medprobe.results.subgroups import check_subgroup_columns, run_subgroups

# feature matrices up to this many values (e.g. 1,000 x 1,000) are probed in this process: starting worker
# processes would cost more than the whole search
SERIAL_LIMIT = 1_000_000


@dataclass
class Job:
    """One feature matrix to probe: a backbone, or several fused."""

    name: str
    refs: list[list[CacheRef]]  # per dataset (main first), the caches concatenated
    X: np.ndarray = field(default=None, repr=False)
    sources: list[dict] = field(default_factory=list)
    stream: FeatureStream | None = field(default=None, repr=False)  # set instead of X when out of core
    out_of_core: str | None = None  # why: "flag" or "memory"
    scalers: dict = field(default_factory=dict, repr=False)  # fold index -> its training part's StandardScaler
    test_refs: list[CacheRef] = field(default_factory=list)  # --test: the external cohort's caches, fused alike
    X_test: np.ndarray | None = field(default=None, repr=False)

    @property
    def dim(self) -> int:
        return int(self.X.shape[1]) if self.X is not None else self.stream.dim

    @property
    def pool(self) -> str:
        """The pools actually used, e.g. cls+mean; mixed when fused backbones differ."""
        kinds = {"+".join(source["pools"]) for source in self.sources}
        return kinds.pop() if len(kinds) == 1 else "mixed"


def _search_part(probe: Probe, part: tuple, X: np.ndarray, y: np.ndarray, fold: Fold, scaler, n_classes: int,
                 seed: int, coarse_to_fine: bool) -> SearchOutcome:
    data = FoldData(X[fold.train], y[fold.train], X[fold.val], y[fold.val], n_classes, scaler)
    with threadpool_limits(1):  # one BLAS thread per task: tasks run side by side, one per core
        return probe.search(part, data, seed, coarse_to_fine=coarse_to_fine)


def _fit_fold(probe: Probe, params: dict, X: np.ndarray, y: np.ndarray, fold: Fold, n_classes: int, seed: int,
              keep_model: bool, calibrator: Calibrator | None = None, X_test: np.ndarray | None = None) -> dict:
    """The chosen hyperparameters refitted on train+val, scoring the test part (or `X_test`, an external
    cohort's features); with a calibrator, also fitted on the training part alone, so its validation
    predictions (never seen in training) fit the calibration."""
    train_val = np.sort(np.concatenate([fold.train, fold.val]))  # dataset order: the plain fit on those samples
    with threadpool_limits(1):
        fitted = probe.fit(params, X[train_val], y[train_val], n_classes, seed)
        scores = fitted.scores(X[fold.test] if X_test is None else X_test, n_classes)
        calibration = None
        if calibrator is not None:
            on_train = probe.fit(params, X[fold.train], y[fold.train], n_classes, seed)
            calibration = calibrator.fit(on_train.scores(X[fold.val], n_classes), y[fold.val])
    # the fitted probe goes back to the parent process only when it is saved (a kNN index holds its data)
    return {"scores": scores, "capped": fitted.capped, "model": fitted if keep_model else None,
            "calibration": calibration}


def _few_shot_indices(pool: np.ndarray, y: np.ndarray, codes: np.ndarray | None, shots: int,
                      rng: np.random.Generator) -> np.ndarray:
    """`shots` samples per class, or `shots` patients per class (all their samples) when grouped."""
    chosen = []
    for label in np.unique(y[pool]):
        members = pool[y[pool] == label]
        if codes is None:
            chosen.append(rng.choice(members, size=min(shots, len(members)), replace=False))
        else:
            patients = np.unique(codes[members])
            picked = rng.choice(patients, size=min(shots, len(patients)), replace=False)
            chosen.append(members[np.isin(codes[members], picked)])
    return np.sort(np.concatenate(chosen))


def _warn_capped(job: str, method: str, convergence: dict) -> None:
    at_cap = convergence["search_fits_at_cap"] + convergence["final_fits_at_cap"]
    if at_cap:
        total = convergence["search_fits"] + convergence["final_fits"]
        STDERR.print(f"[yellow]warning:[/] {job} {method}: {at_cap} of {total} solver fits stopped at their "
                     "iteration cap before their tolerance (the record's convergence and search say which limits)")


class Prober:
    def __init__(self, dataset: Dataset, settings: ProbeSettings, out_dir: Path) -> None:
        self.dataset = dataset
        self.settings = settings
        self.out_dir = Path(out_dir)
        self.classes = dataset.classes
        self.y = dataset.targets()
        self.groups = [s.group for s in dataset.samples]
        self.codes = group_codes(self.groups)
        self.plan: SplitPlan = dataset_splits(dataset, folds=settings.folds, seed=settings.seed)
        self.skipped: list[dict] = []  # unreadable samples left out (extract --skip-bad)
        self.backend = "local"  # set by probe() to what --backend connected to

    def _base_record(self, job: Job, method: str, protocol: str) -> dict:
        s = self.settings
        return {**run_header(self.dataset, self.plan, kind="probe", method=method, model=job.name, pool=job.pool,
                             protocol=protocol, seed=s.seed, bootstrap=s.bootstrap, ordinal=s.ordinal),
                "features": job.sources, "feature_dim": job.dim, "skipped_samples": self.skipped}

    def _name(self, job: Job, method: str, protocol: str) -> str:
        return record_name(job.name, method, protocol, self.settings.seed, pool=job.pool)

    def _write(self, job: Job, method: str, protocol: str, record: dict, positions: np.ndarray,
               fold_of: np.ndarray, scores: np.ndarray, scores_are: str | None, tested: Dataset | None = None) -> dict:
        """Save the run; with --subgroups, its metrics per subgroup of the `tested` dataset (default: DATA),
        unless `scores_are` is None (label-budget runs: their metrics are means over draws, not one model's)."""
        s = self.settings
        tested = tested or self.dataset
        if s.subgroups and scores_are is not None:
            record["subgroups"] = run_subgroups(tested, positions, scores, columns=s.subgroups,
                                                min_samples=s.subgroup_min, ordinal=s.ordinal,
                                                replicates=s.bootstrap, seed=s.seed, scores_are=scores_are)
        return save_run(self.out_dir, tested, self._name(job, method, protocol), record, positions, fold_of,
                        scores, subgroups=s.subgroups, folder=self.dataset.name)

    def _scaler(self, job: Job, fold: Fold):
        """The fold's standardisation (its training part only), fitted once per job and fold and shared by
        every standardised probe and search part."""
        if fold.index not in job.scalers:
            job.scalers[fold.index] = fit_scaler(job.X[fold.train])
        return job.scalers[fold.index]

    def _fold_results(self, job: Job, method: str, folds: list[Fold] | None = None,
                      X_test: np.ndarray | None = None) -> tuple[list[dict], dict]:
        """Every fold's search parts side by side, then every fold's final fit (joblib: local processes, or the
        Dask or Ray cluster of --backend); also the solver fits run and how many stopped at their cap.
        `folds` default to the plan's; `X_test`: score these features (an external cohort) instead of each
        fold's test part."""
        s = self.settings
        folds = self.plan.folds if folds is None else folds
        n_classes = len(self.classes)
        small = job.X is not None and job.X.size <= SERIAL_LIMIT and self.backend == "local"
        parallel = Parallel(n_jobs=1 if small else s.n_jobs)
        if job.stream is not None:
            return parallel(delayed(streaming.stream_fold)(job.stream, self.y, fold, n_classes, s.seed, s.save_model)
                            for fold in folds), {}
        probe = get_probe(method)
        fold_parts = [(fold, probe.parts(len(fold.train), job.X.shape[1], n_classes)) for fold in folds]
        # part-major: every fold's first part, then every fold's second, ...; a probe lists its costliest part
        # first, so the cheaper ones fill both cores at the end instead of one long part running alone
        tasks = [(fold, parts[i]) for i in range(max(len(parts) for _, parts in fold_parts))
                 for fold, parts in fold_parts if i < len(parts)]
        searched = parallel(delayed(_search_part)(probe, part, job.X, self.y, fold,
                                                  self._scaler(job, fold) if probe.standardised else None,
                                                  n_classes, s.seed, s.coarse_to_fine) for fold, part in tasks)
        chosen = [best([candidate for (task_fold, _), found in zip(tasks, searched, strict=True)
                        if task_fold is fold for candidate in found.candidates]) for fold in folds]
        calibrator = get_calibrator(s.calibrate) if s.calibrate and probe.scores_are == PROBABILITIES else None
        fitted = parallel(delayed(_fit_fold)(probe, params, job.X, self.y, fold, n_classes, s.seed, s.save_model,
                                             calibrator, X_test)
                          for fold, (params, _) in zip(folds, chosen, strict=True))
        convergence = {"search_fits": sum(found.fits for found in searched),
                       "search_fits_at_cap": sum(found.capped for found in searched),
                       "final_fits": len(fitted), "final_fits_at_cap": sum(result.pop("capped") for result in fitted)}
        return [{"params": params, "val_balanced_accuracy": score, **result}
                for (params, score), result in zip(chosen, fitted, strict=True)], convergence

    def run_full(self, job: Job, method: str) -> dict:
        """k-fold (or the given split): the internal estimate, from every fold's test part."""
        positions, fold_of = pooled_test(self.plan.folds)
        return self._run(job, method, self.plan.folds, self.dataset, positions, fold_of, self.plan.protocol)

    def run_external(self, job: Job, method: str, tested: Dataset) -> dict:
        """--test DATA2: hyperparameters chosen on a validation part of all of DATA (carved as in every fold),
        one refit on all of DATA, scored on every sample of DATA2."""
        fold = whole_data_fold(self.dataset, self.settings.seed, EXTERNAL_FOLD)
        positions = np.arange(len(tested.samples))
        return self._run(job, method, [fold], tested, positions, np.full(len(positions), EXTERNAL_FOLD),
                         f"{EXTERNAL}-{safe_name(tested.name)}", X_test=job.X_test)

    def _run(self, job: Job, method: str, folds: list[Fold], tested: Dataset, positions: np.ndarray,
             fold_of: np.ndarray, protocol: str, X_test: np.ndarray | None = None) -> dict:
        s = self.settings
        started = time.perf_counter()
        results, convergence = self._fold_results(job, method, folds, X_test)
        if job.stream is None:
            _warn_capped(f"{job.name}/{job.pool}", method, convergence)  # the run: backbone, pool, method
        search = get_probe(method).settings() if job.stream is None else None
        scores_are = get_probe(method).scores_are if job.stream is None else streaming.SCORES_ARE
        method = streaming.METHOD if job.stream is not None else method
        fit_seconds = time.perf_counter() - started
        scores = np.concatenate([r["scores"] for r in results])
        y = tested.targets()[positions]
        groups = [tested.samples[i].group for i in positions]
        external = X_test is not None
        record = self._base_record(job, method, EXTERNAL if external else protocol)
        sizes = fold_sizes(folds)
        if external:
            internal = record_paths(self.out_dir, self.dataset.name, self._name(job, method, self.plan.protocol))[0]
            sizes = mark_external(record, tested, sizes, groups, internal=internal.name,
                                  internal_protocol=self.plan.protocol, refit=len(self.y),
                                  trained_on=f"all {len(self.y)} samples of DATA: hyperparameters chosen on a "
                                             "validation part carved from them as in every fold, then one refit on "
                                             "all of them")
        record.update({
            "sizes": sizes,
            "hyperparameters": [{"fold": f.index, **r["params"], "val_balanced_accuracy": r["val_balanced_accuracy"]}
                                for f, r in zip(folds, results, strict=True)],
            **({"search": {**search, "coarse_to_fine": s.coarse_to_fine}, "convergence": convergence}
               if search else {}),
            **test_report(y, scores, fold_of=fold_of, groups=groups, classes=self.classes, ordinal=s.ordinal,
                          replicates=s.bootstrap, seed=s.seed, scores_are=scores_are),
        })
        if s.save_model:
            import joblib

            json_path = record_paths(self.out_dir, self.dataset.name, self._name(job, method, protocol))[0]
            model_path = json_path.with_name(json_path.stem + ".joblib")
            model_path.parent.mkdir(parents=True, exist_ok=True)
            joblib.dump({"classes": self.classes, "features": job.sources,
                         "fold_models": [r["model"] for r in results]}, model_path)
            record["model_file"] = model_path.name
        if s.calibrate:
            record["calibrated"] = self._calibrated(results, folds, y, groups, scores_are,
                                                    streamed=job.stream is not None)
        if job.stream is not None:
            record["out_of_core"] = streaming.settings_record(job.out_of_core, job.stream)
        record["timings"] = {"fit_seconds": round(fit_seconds, 3),
                             "total_seconds": round(time.perf_counter() - started, 3), "backend": self.backend}
        return self._write(job, method, protocol, record, positions, fold_of, scores, scores_are, tested)

    def _calibrated(self, results: list[dict], folds: list[Fold], y: np.ndarray, groups: list[str | None],
                    scores_are: str, *, streamed: bool) -> dict:
        """--calibrate: each fold's test scores through its calibrator, with the calibration metrics of the
        result (predictions are unchanged); or why it was not applied."""
        s = self.settings
        if scores_are != PROBABILITIES:
            return not_applied(s.calibrate, f"the scores are {scores_are}, not probabilities")
        if streamed:
            return not_applied(s.calibrate, "not available out of core (logreg-sgd)")
        fitted = [(f.index, r["calibration"], r["scores"]) for f, r in zip(folds, results, strict=True)]
        return calibrated_block(s.calibrate, fitted, y, clusters=group_codes(groups), replicates=s.bootstrap,
                                seed=s.seed, fitted_on="each fold's validation part, predicted by the chosen "
                                "hyperparameters fitted on that fold's training part alone; applied to the fold's "
                                "test predictions")

    def run_few_shot(self, job: Job, method: str, shots: int) -> dict:
        s = self.settings
        started = time.perf_counter()
        probe = get_probe(method)
        params = probe.few_shot
        positions, fold_of = pooled_test(self.plan.folds)
        repeated, train_sizes = [], []
        for repeat in range(s.repeats):
            fold_scores = []
            for fold in self.plan.folds:
                rng = np.random.default_rng([s.seed, repeat, fold.index, shots])
                train = _few_shot_indices(np.concatenate([fold.train, fold.val]), self.y, self.codes, shots, rng)
                train_sizes.append(len(train))
                fitted = probe.fit(params, job.X[train], self.y[train], len(self.classes), s.seed)
                fold_scores.append(fitted.scores(job.X[fold.test], len(self.classes)))
            repeated.append(np.concatenate(fold_scores))
        y = self.y[positions]
        groups = [self.groups[i] for i in positions]
        clusters = group_codes(groups)
        calibration = probe.scores_are == PROBABILITIES
        mean, std, distributions = evaluate_mean(y, repeated, ordinal=s.ordinal, replicates=s.bootstrap,
                                                 seed=s.seed, clusters=clusters, calibration=calibration)
        metrics, per_class = summarize_metrics(mean, distributions, self.classes)
        metrics = {name: replace(entry, repeat_std=std[name] if np.isfinite(std[name]) else None)
                   for name, entry in metrics.items()}
        protocol = f"shots{shots}x{s.repeats}-{self.plan.protocol}"
        record = self._base_record(job, method, protocol)
        record.update({
            "shots": shots, "repeats": s.repeats, "hyperparameters": [params], "search": probe.settings(),
            "train_sizes": {"min": int(min(train_sizes)), "max": int(max(train_sizes))},
            "metrics": metrics, "per_class_recall": per_class, "calibration": calibration_block(probe.scores_are),
            **({"calibrated": not_applied(s.calibrate, "no validation data at a label budget")}
               if s.calibrate else {}),
            "note": "fixed hyperparameters (no validation data at this label budget); value = mean over "
                    "repeats, ci = bootstrap of that mean over the shared test samples",
            "timings": {"total_seconds": round(time.perf_counter() - started, 3)},
        })
        record["patient_metrics"] = patient_block(y, repeated, groups, self.classes, ordinal=s.ordinal,
                                                  replicates=s.bootstrap, seed=s.seed, calibration=calibration)
        mean_scores = np.mean(repeated, axis=0)
        return self._write(job, method, protocol, record, positions, fold_of, mean_scores, None)


def _without_skipped(dataset: Dataset, refs: list[CacheRef]) -> tuple[Dataset, dict[str, str]]:
    """The dataset minus the unreadable images its caches skipped at extraction (every job alike, so all
    backbones see the same samples), with a warning; and those images' reasons."""
    skipped = {i: why for ref in refs for i, why in skipped_in(ref.attrs, dataset).items()}
    if not skipped:
        return dataset, skipped
    STDERR.print(f"[yellow]warning:[/] {len(skipped)} unreadable image(s) of {dataset.name} skipped at extraction "
                 f"are left out (listed in the run records), e.g. {next(iter(skipped))}")
    return dataset.without(set(skipped)), skipped


def build_jobs(dataset: Dataset, models: list[str] | None, cache_dir: Path, with_datasets: list[Dataset],
               fuse: bool, tested: Dataset | None = None) -> list[Job]:
    refs = ([find_cache(dataset, m, cache_dir) for m in models] if models else extracted_models(dataset, cache_dir))
    queries = models or [ref.model for ref in refs]  # what resolves to each backbone (a folder stays a path)
    extras = [[find_cache(other, query, cache_dir) for query in queries] for other in with_datasets]
    test_refs = [find_cache(tested, query, cache_dir) for query in queries] if tested is not None else []
    suffix = "".join(f"+{other.name}" for other in with_datasets)
    if fuse:
        if len(refs) < 2 and not with_datasets:
            raise MedprobeError("--fuse needs at least two --model caches (or --with another dataset)")
        return [Job("+".join(ref.model for ref in refs) + suffix, [refs, *extras], test_refs=test_refs)]
    return [Job(ref.model + suffix, [[ref], *([per_dataset[i]] for per_dataset in extras)],
                test_refs=test_refs[i:i + 1]) for i, ref in enumerate(refs)]


def _load_features(job: Job, datasets: list[Dataset], settings: ProbeSettings, tested: Dataset | None) -> None:
    """The features in memory (job.X), or out of core (job.stream) when asked to or when they would not fit;
    and the external cohort's (job.X_test)."""
    stream, job.sources = feature_stream(datasets, job.refs, settings.pool, datasets[0].ids)
    if job.test_refs:
        job.X_test = feature_stream([tested], [job.test_refs], settings.pool, tested.ids)[0].matrix()
    available = streaming.available_memory()
    if not settings.out_of_core and stream.nbytes <= settings.memory_fraction * available:
        job.X = stream.matrix()
        return
    why = ("--out-of-core" if settings.out_of_core else
           f"its features need {stream.nbytes / 2**30:.1f} GB as a matrix, over --memory-fraction "
           f"{settings.memory_fraction:g} of the {available / 2**30:.1f} GB of available memory")
    others = [name for name in settings.classifiers if name != "logreg"]
    if others:
        raise MedprobeError(f"{job.name}: {why}, so its features are streamed from the cache, which only logreg "
                            f"supports (not {', '.join(others)}); use --clf logreg, or a larger --memory-fraction")
    if settings.shots or tested is not None:
        option = "--shots" if settings.shots else "--test"
        raise MedprobeError(f"{job.name}: {why}, so its features are streamed from the cache, which {option} does "
                            f"not support; drop {option}, or use a larger --memory-fraction")
    job.stream, job.out_of_core = stream, "flag" if settings.out_of_core else "memory"


def probe(*, dataset: Dataset, models: list[str] | None, cache_dir: Path, out_dir: Path,
          settings: ProbeSettings, with_datasets: list[Dataset] = (), tested: Dataset | None = None,
          show_progress: bool = True) -> list[dict]:
    """`tested`: an external test cohort (--test): every full run also writes a record scored on it."""
    if not settings.classifiers:
        raise MedprobeError(f"--clf names no classifier; use {', '.join(CLASSIFIERS)} or all")
    for name in settings.classifiers:
        get_probe(name)  # an unknown name is an error listing the choices
    if settings.bootstrap < 0:
        raise MedprobeError("--bootstrap must be 0 or more")
    if settings.calibrate is not None:
        get_calibrator(settings.calibrate)  # an unknown name is an error listing the choices
    check_subgroup_columns(dataset, settings.subgroups, settings.subgroup_min)
    if not 0 < settings.memory_fraction <= 1:
        raise MedprobeError(f"--memory-fraction {settings.memory_fraction:g} must be in (0, 1], e.g. 0.25")
    if dataset.multilabel:
        refuse_unsupported(settings)
    if tested is not None:
        if with_datasets:
            raise MedprobeError("--test with --with: the external cohort would need every --with modality too; "
                                "probe the fused datasets without --test")
        tested = matched_test_set(dataset, tested)
        check_subgroup_columns(tested, settings.subgroups, settings.subgroup_min)
    jobs = build_jobs(dataset, models, cache_dir, list(with_datasets), settings.fuse, tested)
    dataset, skipped = _without_skipped(dataset, [ref for job in jobs for ref in job.refs[0]])
    if tested is not None:
        tested, _ = _without_skipped(tested, [ref for job in jobs for ref in job.test_refs])
    if dataset.multilabel:
        return _probe_multilabel(dataset, jobs, with_datasets, settings, out_dir, skipped, show_progress, tested)
    prober = Prober(dataset, settings, out_dir)
    prober.skipped = [{"id": i, "reason": why} for i, why in sorted(skipped.items())]
    budgets = [shot for shot in settings.shots if shot != "all"]
    full = not settings.shots or "all" in settings.shots
    steps = len(jobs) * len(settings.classifiers) * (len(budgets) + full * (1 + (tested is not None)))
    records = []
    with compute_backend(settings.backend, settings.scheduler) as prober.backend, \
            progress_bar("probe", total=steps, enabled=show_progress, unit="run") as advance:
        for job in jobs:
            _load_features(job, [dataset, *with_datasets], settings, tested)
            for method in settings.classifiers:
                if full:
                    records.append(prober.run_full(job, method))
                    advance(1)
                if full and tested is not None:
                    records.append(prober.run_external(job, method, tested))
                    advance(1)
                for shots in budgets:
                    records.append(prober.run_few_shot(job, method, int(shots)))
                    advance(1)
            job.X = job.stream = job.X_test = None  # one job's features in memory at a time
            job.scalers = {}
    return records


def _probe_multilabel(dataset: Dataset, jobs: list[Job], with_datasets, settings: ProbeSettings, out_dir: Path,
                      skipped: dict[str, str], show_progress: bool, tested: Dataset | None) -> list[dict]:
    """A multi-label dataset: per backbone and classifier, one binary probe per finding (probe.multilabel);
    with `tested`, also the external record."""
    prober = MultilabelProber(dataset, settings, out_dir)
    prober.skipped = [{"id": i, "reason": why} for i, why in sorted(skipped.items())]
    records = []
    with compute_backend(settings.backend, settings.scheduler) as prober.backend, \
            progress_bar("probe", total=len(jobs) * len(settings.classifiers) * (1 + (tested is not None)),
                         enabled=show_progress, unit="run") as advance:
        for job in jobs:
            _load_features(job, [dataset, *with_datasets], settings, tested)
            small = job.X.size <= SERIAL_LIMIT and prober.backend == "local"
            parallel = Parallel(n_jobs=1 if small else settings.n_jobs)
            for method in settings.classifiers:
                records.append(prober.run(job, method, parallel))
                advance(1)
                if tested is not None:
                    records.append(prober.run_external(job, method, parallel, tested))
                    advance(1)
            job.X = job.X_test = None
    return records

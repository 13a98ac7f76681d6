"""The probe protocol: probes registered by name, deterministic searches, shared kernels, recorded limits."""

from __future__ import annotations

import numpy as np
import pytest
from probe_helpers import synthetic_study
from sklearn.svm import SVC, LinearSVC

from medprobe.errors import MedprobeError
from medprobe.probe import classifiers, logreg, svm
from medprobe.probe.classifiers import get_probe
from medprobe.probe.protocol import PROBES, FittedProbe, FoldData, Probe, SearchOutcome, decision_scores, register
from medprobe.probe.runner import ProbeSettings, probe
from medprobe.results.metrics import balanced_accuracy


def blobs(n: int, n_classes: int, dim: int, spread: float, seed: int):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    X = rng.normal(0, 1, (n_classes, dim))[y] + spread * rng.normal(0, 1, (n, dim))
    return X.astype(np.float32), y


def fold_data(n=120, n_classes=3, dim=20, spread=2.0, seed=0) -> FoldData:
    X, y = blobs(n, n_classes, dim, spread, seed)
    cut = int(0.7 * n)
    return FoldData(X[:cut], y[:cut], X[cut:], y[cut:], n_classes)


def test_unknown_probe_is_an_error_listing_the_registered_ones():
    with pytest.raises(MedprobeError, match=r"--clf 'forest' is not one of logreg, svm, knn, all"):
        get_probe("forest")
    assert classifiers.CLASSIFIERS == ("logreg", "svm", "knn")
    for name in classifiers.CLASSIFIERS:
        probe = get_probe(name)
        assert probe.name == name and probe.few_shot and probe.settings()


class NearestCentroid(Probe):
    """A probe added by one class: class means of L2-normalised features, scored by a softmax of similarity."""

    name = "centroid"
    few_shot = {"temperature": 0.1}
    standardised = False

    class Index:
        def __init__(self, X, y, n_classes, temperature):
            X = X / np.linalg.norm(X, axis=1, keepdims=True)
            self.centres = np.stack([X[y == c].mean(0) if (y == c).any() else np.zeros(X.shape[1])
                                     for c in range(n_classes)])
            self.temperature = temperature

        def scores(self, X, n_classes):
            logits = (X / np.linalg.norm(X, axis=1, keepdims=True)) @ self.centres.T / self.temperature
            exp = np.exp(logits - logits.max(1, keepdims=True))
            return exp / exp.sum(1, keepdims=True)

    def settings(self):
        return {"temperature_grid": [0.05, 0.1, 1.0]}

    def search(self, part, data, seed, *, coarse_to_fine=False):
        return SearchOutcome([({"temperature": t}, balanced_accuracy(
            data.yval, self.Index(data.Xtr, data.ytr, data.n_classes, t).scores(data.Xval, data.n_classes)))
            for t in (0.05, 0.1, 1.0)])

    def fit(self, params, X, y, n_classes, seed):
        return FittedProbe(self.name, params, self.Index(X, y, n_classes, params["temperature"]))


def test_a_probe_is_one_registered_class_and_runs_through_the_whole_probe_path(tmp_path):
    X, y = blobs(60, 3, 8, 0.3, seed=1)
    dataset = synthetic_study(tmp_path / "d", tmp_path / "cache", [f"c{v}" for v in y], X)
    register(NearestCentroid)
    try:
        record = probe(dataset=dataset, models=None, cache_dir=tmp_path / "cache", out_dir=tmp_path / "out",
                       settings=ProbeSettings(classifiers=("centroid",), bootstrap=100, n_jobs=1),
                       show_progress=False)[0]
    finally:
        del PROBES["centroid"]
    assert record["method"] == "centroid" and record["search"]["temperature_grid"] == [0.05, 0.1, 1.0]
    assert record["metrics"]["accuracy"]["value"] > 0.9
    assert {h["temperature"] for h in record["hyperparameters"]} <= {0.05, 0.1, 1.0}


def test_logreg_path_scores_do_not_depend_on_the_order_c_is_tried(seed=0):
    data = fold_data(dim=4, spread=3.0, seed=seed)
    Ztr, Zval = data.standardised()
    rng = np.random.default_rng(seed)
    scores = []
    for order in (range(len(logreg.LOGREG_GRID)), rng.permutation(len(logreg.LOGREG_GRID)),
                  range(len(logreg.LOGREG_GRID))[::-1]):
        path = logreg.CPath(Ztr, data.ytr, Zval, data.yval, data.n_classes)
        for i in order:
            path.score(int(i))
        scores.append([path.scores[i] for i in range(len(logreg.LOGREG_GRID))])
    assert scores[0] == scores[1] == scores[2]


def test_coarse_to_fine_never_beats_the_full_grid():
    """The coarse-to-fine candidates are a subset of the full grid's, with the very same scores: it can miss the
    full grid's optimum (benchmarks/logreg_search.py measures how often, on 30 seeds), never exceed it."""
    misses = 0
    for seed in range(8):
        data = fold_data(n=100, dim=4, spread=4.0, seed=seed)
        probe = get_probe("logreg")
        full = dict((p["C"], s) for p, s in probe.search(("all",), data, 0).candidates)
        coarse = probe.search(("all",), data, 0, coarse_to_fine=True)
        assert len(coarse.candidates) <= 12 + 2 * 6 and len(full) == 45
        assert all(full[p["C"]] == score for p, score in coarse.candidates)
        misses += max(s for _, s in coarse.candidates) < max(full.values())
    assert misses < 8


def test_kernels_from_one_gram_matrix_select_as_plain_svcs_do():
    data = fold_data(n=150, n_classes=3, dim=12, spread=1.5, seed=4)
    probe = get_probe("svm")
    assert probe.parts(*data.Xtr.shape, 3) == [("kernel", "linear"), ("kernel", "rbf")]
    parts = [probe.search(part, data, 0) for part in probe.parts(*data.Xtr.shape, 3)]
    outcome = parts[0]
    outcome.candidates += parts[1].candidates
    outcome.fits += parts[1].fits
    outcome.capped += parts[1].capped
    Ztr, Zval = data.standardised()
    plain = [balanced_accuracy(data.yval, decision_scores(SVC(kernel=kernel, C=c, gamma="scale").fit(Ztr, data.ytr),
                                                          Zval, 3))
             for kernel, grid in (("linear", svm.SVM_LINEAR_GRID), ("rbf", svm.SVM_RBF_GRID)) for c in grid]
    assert [s for _, s in outcome.candidates] == pytest.approx(plain, abs=1e-12)  # skipped C's included
    skipped = sum("same_as_C" in p for p, _ in outcome.candidates)
    assert outcome.fits == len(plain) - skipped and outcome.capped == 0
    assert {p["solver"] for p, _ in outcome.candidates} == {"libsvm"}


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_kernel_matrices_built_block_by_block_equal_scikit_learn_s_kernels(kernel, monkeypatch):
    """Blocks of 7 rows over 50 training and 23 other rows (neither a multiple of 7): the float64 matrices libsvm
    reads equal scikit-learn's float64 kernels to float32 rounding, and the train matrix is exactly symmetric."""
    from sklearn.metrics.pairwise import linear_kernel, rbf_kernel

    monkeypatch.setattr(svm, "KERNEL_BLOCK", 7)
    X, _ = blobs(73, 3, 30, 1.0, seed=5)
    Ztr, Zother = X[:50], X[50:]
    train, other = svm.kernels(Ztr, kernel, Zother)
    wide = Ztr.astype(np.float64)
    if kernel == "linear":
        expected = [linear_kernel(wide), linear_kernel(Zother.astype(np.float64), wide)]
    else:
        gamma = 1 / (Ztr.shape[1] * Ztr.var())
        expected = [rbf_kernel(wide, gamma=gamma), rbf_kernel(Zother.astype(np.float64), wide, gamma=gamma)]
    for matrix, reference in zip((train, other), expected, strict=True):
        assert matrix.dtype == np.float64 and matrix.flags.c_contiguous and matrix.shape == reference.shape
        assert np.abs(matrix - reference).max() <= 1e-5 * np.abs(reference).max()
    assert (train == train.T).all()
    assert kernel == "linear" or (np.diag(train) == 1).all()  # no distance of a row to itself
    assert np.array_equal(svm.kernel_against(Zother, Ztr, kernel), other)
    with pytest.raises(MedprobeError, match="svm kernel 'poly' is not one of linear, rbf"):
        svm.kernels(Ztr, "poly")


def test_a_c_beyond_the_hard_margin_solution_is_not_fitted_again_and_equals_a_plain_svc():
    data = fold_data(n=60, n_classes=3, dim=200, spread=2.0, seed=8)  # more features than samples: separable
    outcome = get_probe("svm").search(("kernel", "linear"), data, 0)
    linear = [p for p, _ in outcome.candidates if p["kernel"] == "linear"]
    reused = [p for p in linear if "same_as_C" in p]
    assert reused and all(p["same_as_C"] < p["C"] for p in reused)
    Ztr, Zval = data.standardised()
    base = SVC(kernel="linear", C=reused[0]["same_as_C"]).fit(Ztr, data.ytr)
    assert not svm.at_bound(base, reused[0]["same_as_C"])
    for p in reused:  # the plain fit at the larger C finds the same solution
        larger = SVC(kernel="linear", C=p["C"]).fit(Ztr, data.ytr)
        assert np.abs(larger.decision_function(Zval) - base.decision_function(Zval)).max() < 1e-2


def test_above_the_kernel_limit_the_svm_search_is_the_squared_hinge_and_nystroem(monkeypatch):
    monkeypatch.setattr(svm, "KERNEL_LIMIT", 50)
    data = fold_data(n=120, n_classes=3, dim=12, spread=1.5, seed=5)
    probe = get_probe("svm")
    assert probe.parts(*data.Xtr.shape, 3) == [("linear",), ("nystroem",)]
    rbf = probe.search(("nystroem",), data, 0).candidates
    assert all(p["approximate"] and p["solver"] == "squared-hinge-newton" for p, _ in rbf)
    fitted = probe.fit(rbf[0][0], data.Xtr, data.ytr, 3, 0)
    assert [name for name, _ in fitted.model.steps] == ["standardscaler", "nystroem", "linearsvc"]
    with pytest.raises(MedprobeError, match="svm solver 'liblinear' is not one of libsvm, squared-hinge-newton"):
        probe.fit({"kernel": "linear", "C": 1.0, "solver": "liblinear"}, data.Xtr, data.ytr, 3, 0)
    linear = probe.search(("linear",), data, 0).candidates
    Ztr, Zval = data.standardised()
    plain = [balanced_accuracy(data.yval, decision_scores(
        LinearSVC(C=p["C"], dual=False, tol=1e-10, max_iter=100_000).fit(Ztr, data.ytr), Zval, 3)) for p, _ in linear]
    assert [score for _, score in linear] == pytest.approx(plain, abs=1e-12)  # liblinear's choices, C by C


def objective(model, X: np.ndarray, y: np.ndarray, C: float) -> float:
    """LinearSVC's primal: per one-vs-rest problem 1/2 |(w, b)|^2 + C sum max(0, 1 - y (w.x + b))^2."""
    signs = np.where(y[:, None] == model.classes_[None, :], 1.0, -1.0)
    signs = signs[:, 1:] if len(model.classes_) == 2 else signs
    weights = np.vstack([model.coef_.T, model.intercept_[None, :]])
    slack = np.maximum(0, 1 - signs * (np.hstack([X, np.ones((len(X), 1))]) @ weights))
    return 0.5 * float((weights ** 2).sum()) + C * float((slack ** 2).sum())


@pytest.mark.parametrize("n_classes", [2, 4])
@pytest.mark.parametrize("C", [1e-3, 0.1, 1.0])
def test_the_squared_hinge_solver_reaches_liblinears_optimum(n_classes, C):
    from medprobe.probe.squared_hinge import fit_squared_hinge

    X, y = blobs(600, n_classes, 30, 1.0, seed=n_classes)
    reference = LinearSVC(C=C, dual=False, tol=1e-10, max_iter=100_000).fit(X, y)
    mine = fit_squared_hinge(X, y, C, tol=svm.LINEAR_LIMITS.tol, max_iter=svm.LINEAR_LIMITS.max_iter)
    assert isinstance(mine, LinearSVC) and mine.coef_.shape == reference.coef_.shape
    assert objective(mine, X, y, C) == pytest.approx(objective(reference, X, y, C), rel=1e-5)
    assert (mine.predict(X) == reference.predict(X)).mean() >= 0.995
    warm = fit_squared_hinge(X, y, C, tol=svm.LINEAR_LIMITS.tol, max_iter=svm.LINEAR_LIMITS.max_iter,
                             start=fit_squared_hinge(X, y, C / 10, tol=1e-6, max_iter=1000))
    assert objective(warm, X, y, C) == pytest.approx(objective(reference, X, y, C), rel=1e-5)
    with pytest.raises(ValueError, match="at least 2 classes"):  # as LinearSVC refuses it
        fit_squared_hinge(X, np.zeros_like(y), C, tol=1e-6, max_iter=10)


def test_exact_kernels_up_to_8000_training_samples_then_the_squared_hinge_and_nystroem():
    assert svm.KERNEL_LIMIT == 8000
    assert get_probe("svm").parts(8000, 2700, 2) == [("kernel", "linear"), ("kernel", "rbf")]
    assert get_probe("svm").parts(8001, 2700, 2) == [("linear",), ("nystroem",)]
    assert get_probe("svm").parts(8001, 384, 10) == [("linear",), ("nystroem",)]


def test_a_binary_linear_svm_with_three_samples_per_feature_takes_the_primal_below_the_kernel_limit():
    probe = get_probe("svm")
    assert probe.parts(1152, 384, 2) == [("linear",), ("kernel", "rbf")]
    assert probe.parts(1151, 384, 2) == [("kernel", "linear"), ("kernel", "rbf")]  # the dual below 3 per feature
    assert probe.parts(1152, 384, 10) == [("kernel", "linear"), ("kernel", "rbf")]  # one-vs-one keeps the dual
    data = fold_data(n=200, n_classes=2, dim=10, spread=1.5, seed=3)
    linear = probe.search(*probe.parts(*data.Xtr.shape, 2)[:1], data, 0).candidates
    assert [p["solver"] for p, _ in linear] == ["squared-hinge-newton"] * len(svm.SVM_LINEAR_GRID)
    Ztr, Zval = data.standardised()
    plain = [balanced_accuracy(data.yval, decision_scores(
        LinearSVC(C=p["C"], dual=False, tol=1e-10, max_iter=100_000).fit(Ztr, data.ytr), Zval, 2)) for p, _ in linear]
    assert [score for _, score in linear] == pytest.approx(plain, abs=1e-12)
    few_shot = probe.fit(probe.few_shot, data.Xtr, data.ytr, 2, 0)  # no solver in the params: the same choice
    assert [name for name, _ in few_shot.model.steps] == ["standardscaler", "linearsvc"]
    assert probe.fit(probe.few_shot, data.Xtr[:20], data.ytr[:20], 2, 0).model.steps[-1][0] == "svc"


def test_iteration_caps_are_counted_recorded_and_warned_about(tmp_path, monkeypatch, capsys):
    X, y = blobs(80, 2, 30, 3.0, seed=2)
    dataset = synthetic_study(tmp_path / "d", tmp_path / "cache", [f"c{v}" for v in y], X)
    monkeypatch.setattr(logreg, "LIMITS", logreg.SolverLimits(tol=1e-12, max_iter=2))
    record = probe(dataset=dataset, models=None, cache_dir=tmp_path / "cache", out_dir=tmp_path / "out",
                   settings=ProbeSettings(classifiers=("logreg",), bootstrap=50, n_jobs=1), show_progress=False)[0]
    assert record["search"]["max_iter"] == 2 and record["search"]["tol"] == 1e-12
    assert record["search"]["C_grid"] == list(logreg.LOGREG_GRID)
    convergence = record["convergence"]
    assert convergence["search_fits"] == 5 * 45 and convergence["final_fits"] == 5
    assert 0 < convergence["search_fits_at_cap"] <= 5 * 45
    warning = " ".join(capsys.readouterr().err.split())
    at_cap = convergence["search_fits_at_cap"] + convergence["final_fits_at_cap"]
    # the line names the run (its backbone, pool and method) and counts what the record counts
    assert (f"warning: dinov2-small/cls+mean logreg: {at_cap} of {5 * 45 + 5} solver fits stopped at their "
            "iteration cap") in warning


@pytest.mark.parametrize("kernel", ["rbf", "linear"])
def test_saved_probes_are_plain_scikit_learn_pipelines_with_the_search_s_choice(kernel):
    """The final SVM is scikit-learn parts only (scaler, kernel against the training rows, precomputed SVC) and
    decides as a plain SVC(kernel, gamma="scale") trained on the same standardised rows."""
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    data = fold_data(n=90, seed=3)
    fitted = get_probe("svm").fit({"kernel": kernel, "C": 10.0, "solver": "libsvm"}, data.Xtr, data.ytr, 3, 0)
    assert [type(step) for step in fitted.model] == [StandardScaler, FunctionTransformer, SVC]
    assert fitted.model[-1].kernel == "precomputed"
    scores = fitted.scores(data.Xval, 3)
    assert scores.shape == (len(data.Xval), 3) and np.allclose(scores.sum(1), 1)
    Ztr, Zval = data.standardised()
    plain = SVC(kernel=kernel, C=10.0, gamma="scale", tol=svm.KERNEL_LIMITS.tol).fit(Ztr, data.ytr)
    assert np.abs(fitted.model.decision_function(data.Xval) - plain.decision_function(Zval)).max() < 1e-3
    assert (fitted.model.predict(data.Xval) == plain.predict(Zval)).all()


@pytest.mark.parametrize(("scores", "chosen"), [
    ([0.5, 1.0, 1.0, 1.0, 0.9], 2),  # the centre of the plateau
    ([1.0, 0.5, 1.0, 1.0, 1.0], 3),  # the longest run of tied neighbours, not the first tie
    ([0.5, 1.0, 1.0], 1),  # of two centres the earlier, more regularised one
    ([1.0, 0.5, 1.0], 0),  # equally long runs: the earlier
    ([0.3, 0.7, 0.6], 1),  # no tie: the best
])
def test_ties_go_to_the_centre_of_the_tied_plateau(scores, chosen):
    from medprobe.probe.protocol import best

    candidates = [({"C": 10.0 ** i}, s) for i, s in enumerate(scores)]
    assert best(candidates) is candidates[chosen]



def test_the_readme_grids_limits_and_thresholds_are_the_code_s():
    from medprobe.probe import knn, runner

    assert np.allclose(logreg.LOGREG_GRID, np.logspace(-6, 5, 45))
    assert np.allclose(svm.SVM_LINEAR_GRID, [1e-4, 1e-3, 1e-2, 1e-1, 1]) and np.allclose(svm.SVM_RBF_GRID,
                                                                                           [0.1, 1, 10, 100])
    assert knn.K_GRID == (1, 3, 5, 10, 20, 50, 100, 200) and knn.KNN_TEMPERATURE == 0.07
    assert runner.SERIAL_LIMIT == 1_000_000
    records = {name: get_probe(name).settings() for name in ("logreg", "svm")}
    assert (records["logreg"]["tol"], records["logreg"]["max_iter"]) == (1e-4, 1000)
    assert (records["svm"]["squared_hinge"]["tol"], records["svm"]["squared_hinge"]["max_iter"]) == (1e-6, 1000)
    assert (records["svm"]["libsvm"]["tol"], records["svm"]["libsvm"]["max_iter"]) == (1e-3, 100_000)


def test_knn_caps_k_at_the_training_size_and_its_scores_sum_to_one():
    data = fold_data(n=30, n_classes=3, seed=6)  # fewer training samples than the largest k's
    found = get_probe("knn").search(("all",), data, 0).candidates
    assert max(p["k"] for p, _ in found) <= len(data.Xtr) and {p["weighting"] for p, _ in found} == {
        "uniform", "softmax"}
    for weighting in ("uniform", "softmax"):
        fitted = get_probe("knn").fit({"k": 5, "weighting": weighting}, data.Xtr, data.ytr, 3, 0)
        assert np.allclose(fitted.scores(data.Xval, 3).sum(1), 1)


def test_knn_similarity_blocks_stay_under_their_cap_and_find_the_same_neighbours(monkeypatch):
    """BENCHMARKS.md: kNN's query x train similarities are held SIMILARITY_BLOCK floats (128 MB) at a time."""
    import tracemalloc

    from medprobe.probe import knn

    assert knn.SIMILARITY_BLOCK * 4 == 128 * 2**20
    rng = np.random.default_rng(0)
    train, queries = rng.normal(size=(5000, 8)), rng.normal(size=(2000, 8))
    index = knn.KnnIndex(train, rng.integers(0, 3, 5000), 3)
    whole = index.neighbours(queries, 20)  # the default cap holds all 2,000 x 5,000 similarities (40 MB) at once
    monkeypatch.setattr(knn, "SIMILARITY_BLOCK", 2**16)  # 256 KB
    tracemalloc.start()
    blocked = index.neighbours(queries, 20)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_allclose(blocked[0], whole[0], atol=1e-6)  # another product shape: float32 rounding
    assert (blocked[1] == whole[1]).mean() > 0.999  # the same neighbours but for near-ties swapped by rounding
    assert peak < 4 * 2**20  # a few blocks and their top-k, not the 40 MB of the whole matrix


def test_nystroem_keeps_1024_components_or_all_samples():
    assert svm.nystroem(5000, 768, 0).n_components == 1024 and svm.nystroem(300, 768, 0).n_components == 300


def test_each_folds_standardisation_is_fitted_once_for_every_standardised_probe_and_part(tmp_path, monkeypatch):
    from medprobe.probe import protocol, runner

    X, y = blobs(90, 3, 12, 2.0, seed=6)
    dataset = synthetic_study(tmp_path / "d", tmp_path / "cache", [f"c{v}" for v in y], X)
    fitted, in_parts = [], []
    plain_fit_scaler = runner.fit_scaler
    monkeypatch.setattr(runner, "fit_scaler", lambda X: fitted.append(len(X)) or plain_fit_scaler(X))
    monkeypatch.setattr(protocol, "fit_scaler", lambda X: in_parts.append(len(X)) or plain_fit_scaler(X))
    records = probe(dataset=dataset, models=None, cache_dir=tmp_path / "cache", out_dir=tmp_path / "out",
                    settings=ProbeSettings(classifiers=("logreg", "svm"), bootstrap=20, n_jobs=1),
                    show_progress=False)
    folds = len(records[0]["hyperparameters"])
    assert folds == 5 and len(fitted) == folds  # once per fold, for logreg and the SVM's two parts alike
    assert in_parts == []  # no search part standardised on its own


def test_search_parts_are_dispatched_part_major_and_each_fold_keeps_its_candidates_in_part_order(tmp_path,
                                                                                                  monkeypatch):
    """Every fold's first (costliest) SVM part before any fold's second, so cheap parts fill both cores at the
    end; each fold's chosen hyperparameters are still the best of its own candidates in grid order."""
    from medprobe.probe import runner
    from medprobe.probe.protocol import best

    X, y = blobs(90, 3, 12, 2.0, seed=6)
    dataset = synthetic_study(tmp_path / "d", tmp_path / "cache", [f"c{v}" for v in y], X)
    dispatched, found = [], {}
    plain_search = runner._search_part

    def spy(probe_, part, X_, y_, fold, *rest):
        outcome = plain_search(probe_, part, X_, y_, fold, *rest)
        dispatched.append((fold.index, part))
        found.setdefault(fold.index, []).extend(outcome.candidates)
        return outcome

    monkeypatch.setattr(runner, "_search_part", spy)
    record = probe(dataset=dataset, models=None, cache_dir=tmp_path / "cache", out_dir=tmp_path / "out",
                   settings=ProbeSettings(classifiers=("svm",), bootstrap=20, n_jobs=1), show_progress=False)[0]
    folds = [h["fold"] for h in record["hyperparameters"]]
    assert dispatched == [(f, ("kernel", "linear")) for f in folds] + [(f, ("kernel", "rbf")) for f in folds]
    for chosen in record["hyperparameters"]:
        params, score = best(found[chosen["fold"]])
        assert chosen == {"fold": chosen["fold"], **params, "val_balanced_accuracy": score}
        assert [p["kernel"] for p, _ in found[chosen["fold"]]] == ["linear"] * 5 + ["rbf"] * 4

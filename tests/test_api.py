"""The Python API (medprobe/api.py), the scikit-learn estimators (medprobe/probes.py) and the notebook example."""

from __future__ import annotations

import csv
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import blob_image, blob_patients
from probe_helpers import synthetic_study
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks
from test_probe import clustered
from torch_blocker import BLOCK_TORCH

import medprobe
from medprobe import api
from medprobe.cli import main
from medprobe.errors import MedprobeError
from medprobe.probes import KNNProbe, LogisticProbe, SVMProbe

ROOT = Path(__file__).resolve().parents[1]
VOLATILE = {"created_at", "record_path", "timings", "wall_seconds", "train_images_per_second", "peak_memory_mb"}


def stable(record: dict) -> dict:
    """A saved record without what differs between two runs of the same settings (time, paths)."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in VOLATILE}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(record)


def saved_runs(folder: Path) -> dict[str, tuple[dict, str]]:
    """Every record under `folder` by file name: (its JSON minus volatile fields, its predictions CSV)."""
    runs = {}
    for path in sorted(folder.rglob("*.json")):
        record = json.loads(path.read_text())
        runs[path.name] = (stable(record), (path.parent / record["predictions"]).read_text())
    return runs


def cli(*args: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    assert info.value.code == 0


@pytest.fixture
def study(tmp_path):
    """40 samples of 2 classes with 10 features, 20 patients, cached as dinov2-small (cls + mean)."""
    labels, features = clustered(20, 2, 10, 1.2, seed=3)
    groups = [f"p{i // 2:02d}" for i in range(len(labels))]
    dataset = synthetic_study(tmp_path / "d", tmp_path / "cache", labels, features, groups=groups)
    return dataset, features, tmp_path / "cache"


def test_import_is_cheap_and_the_stage_packages_are_the_api_functions():
    script = """
import sys
import medprobe
heavy = [m for m in ("numpy", "sklearn", "torch", "pandas", "h5py") if m in sys.modules]
assert not heavy, heavy
assert callable(medprobe.probe) and callable(medprobe.extract) and callable(medprobe.report)
from medprobe.probe.runner import Prober  # the package is still the package
import medprobe.api
assert medprobe.probe.api_function() is medprobe.api.probe
assert medprobe.features is medprobe.api.features and medprobe.MedprobeError.__module__ == "medprobe.errors"
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_api_defaults_are_the_settings_and_the_cli_defaults():
    import typer.main

    from medprobe.cli import app
    from medprobe.extract.settings import ExtractSettings
    from medprobe.finetune.settings import FinetuneSettings
    from medprobe.probe.settings import ProbeSettings

    commands = typer.main.get_command(app).commands
    renamed = {"clf": "classifiers"}
    for function, settings, command in ((api.probe, ProbeSettings(), "probe"),
                                        (api.finetune, FinetuneSettings(), "finetune"),
                                        (api.extract, ExtractSettings(), "extract")):
        parameters = inspect.signature(function).parameters
        assert all(p.kind is p.KEYWORD_ONLY for name, p in parameters.items() if name != "data")
        cli_defaults = {p.name: p.default for p in commands[command].params}
        compared = 0
        for name, parameter in parameters.items():
            field = renamed.get(name, name)
            if not hasattr(settings, field):
                continue
            assert parameter.default == getattr(settings, field), (command, name)
            # CLI text: --fold all; no --shots or --subgroups (comma-separated text)
            if name in cli_defaults and name not in ("fold", "shots", "subgroups"):
                cli_default = cli_defaults[name]
                assert (tuple(cli_default) if isinstance(cli_default, list) else cli_default) == parameter.default
                compared += 1
        assert compared >= 8, command


def test_probe_api_and_cli_write_identical_records(study, tmp_path):
    dataset, _, cache = study
    cli("probe", str(dataset.source), "--cache-dir", str(cache), "--clf", "logreg,knn", "--bootstrap", "300",
        "--shots", "2,all", "--repeats", "2", "--out", str(tmp_path / "cli"))
    records = medprobe.probe(dataset.source, clf=["logreg", "knn"], bootstrap=300, shots=[2, "all"], repeats=2,
                             cache_dir=cache, out=tmp_path / "api", progress=False)
    from_cli, from_api = saved_runs(tmp_path / "cli"), saved_runs(tmp_path / "api")
    assert len(from_cli) == 4 and from_cli == from_api
    assert {r.path.name for r in records} == set(from_api)
    first = records[0]
    assert first.path.is_file() and first.model == "dinov2-small" and first.value("accuracy")[0] is not None


def test_finetune_api_and_cli_write_identical_records(tmp_path, tiny_timm_models):
    data = blob_patients(tmp_path / "blobs", patients=9, per_patient=2, size=(40, 40))
    model = str(tiny_timm_models["resnet"])
    options = {"epochs": 1, "fold": 0, "folds": 3, "workers": 0, "bootstrap": 100, "precision": "fp32",
               "device": "cpu", "batch_size": 8}
    cli("finetune", str(data), "--model", model, *(f"--{k.replace('_', '-')}={v}" for k, v in options.items()),
        "--out", str(tmp_path / "cli"))
    record = medprobe.finetune(data, model=model, **options, out=tmp_path / "api", progress=False)
    from_cli, from_api = saved_runs(tmp_path / "cli"), saved_runs(tmp_path / "api")
    assert len(from_cli) == 1 and from_cli == from_api
    assert record.kind == "finetune" and record.data["settings"]["epochs"] == 1


def test_features_and_splits_are_what_the_probe_read_without_torch(study, tmp_path):
    dataset, features, cache = study
    np.save(tmp_path / "expected.npy", features)
    script = BLOCK_TORCH + f"""
import numpy as np
import medprobe
fs = medprobe.features({str(dataset.source)!r}, model="dinov2-small", cache_dir={str(cache)!r})
assert fs.pools == ("cls", "mean") and fs.X.dtype == np.float32 and fs.classes == ("class0", "class1")
np.testing.assert_allclose(fs.X, np.load({str(tmp_path / "expected.npy")!r}), rtol=1e-3, atol=1e-3)
assert fs.groups[:3] == ["p00", "p00", "p01"] and fs.labels[0] == "class0" and fs.split == [None] * 40
assert fs.provenance["model_name"] == "dinov2-small" and fs.cache.is_file()
plan = medprobe.splits(fs)
assert plan.protocol == "kfold5" and plan.grouped
records = medprobe.probe(fs.dataset, clf="logreg", bootstrap=100, cache_dir={str(cache)!r},
                         out={str(tmp_path / "out")!r}, progress=False)
table = medprobe.load_results({str(tmp_path / "out")!r}, bootstrap=50)
assert len(table) == 1 and table["run_record"][0].path == records[0].path
with open({str(tmp_path / "tests.txt")!r}, "w") as handle:
    for fold in plan.folds:
        handle.write(" ".join(fs.ids[i] for i in fold.test) + "\\n")
import sys
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    with next((tmp_path / "out").rglob("*.predictions.csv")).open() as handle:
        rows = list(csv.DictReader(handle))
    tested = [line.split() for line in (tmp_path / "tests.txt").read_text().splitlines()]
    assert len(tested) == 5
    for fold, ids in enumerate(tested):  # splits() gives exactly the probe's test samples, fold by fold
        assert ids == [row["id"] for row in rows if row["fold"] == str(fold)]
    assert sorted(i for ids in tested for i in ids) == sorted(dataset.ids)


def test_errors_are_medprobe_errors_with_the_cli_message(study, tmp_path, capsys):
    dataset, _, cache = study
    for options, flags in (({"clf": "forest"}, ["--clf", "forest"]), ({"shots": "4,many"}, ["--shots", "4,many"]),
                           ({"models": ["resnet50"]}, ["--model", "resnet50"]), ({"folds": 30}, ["--folds", "30"])):
        with pytest.raises(MedprobeError) as raised:
            medprobe.probe(dataset.source, cache_dir=cache, out=tmp_path / "o", progress=False, **options)
        with pytest.raises(SystemExit) as exit_info:
            main(["probe", str(dataset.source), "--cache-dir", str(cache), "--out", str(tmp_path / "o"), *flags])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.strip() == f"error: {raised.value}"
    with pytest.raises(MedprobeError, match="no feature cache of resnet50 .*medprobe extract"):
        medprobe.features(dataset.source, model="resnet50", cache_dir=cache)


def test_extract_returns_per_backbone_its_cache_file_and_what_it_extracted_reused_and_changed(
        image_folder, tiny_timm_models, tmp_path):
    from PIL import Image

    from medprobe.extract.settings import CacheInfo

    models = [str(tiny_timm_models["resnet"]), str(tiny_timm_models["vit"])]
    options = dict(models=models, cache_dir=tmp_path / "cache", device="cpu", precision="fp32", workers=0,
                   progress=False)
    first = medprobe.extract(image_folder, **options)
    assert [type(info) for info in first] == [CacheInfo, CacheInfo] and [i.model for i in first] == ["resnet", "vit"]
    assert len({info.path for info in first}) == 2 and all(info.path.is_file() for info in first)
    assert [(i.extracted, i.reused, i.changed) for i in first] == [(12, 0, 0)] * 2
    rng = np.random.default_rng(7)
    Image.fromarray(blob_image(rng, 1, (50, 50))).save(image_folder / "benign" / "img1.png")  # was another image
    Image.fromarray(blob_image(rng, 0, (44, 44))).save(image_folder / "benign" / "img6.png")  # a new one
    second = medprobe.extract(image_folder, **options)
    assert [(i.extracted, i.reused, i.changed) for i in second] == [(2, 11, 1)] * 2
    assert [i.path for i in second] == [i.path for i in first]
    third = medprobe.extract(image_folder, **options)
    assert [(i.extracted, i.reused, i.changed, i.up_to_date) for i in third] == [(0, 13, 0, True)] * 2


def test_progress_bars_can_be_turned_off(study, tmp_path, capfd):
    dataset, _, cache = study
    medprobe.probe(dataset.source, clf="knn", bootstrap=0, cache_dir=cache, out=tmp_path / "a", progress=False)
    assert capfd.readouterr().err == ""
    medprobe.probe(dataset.source, clf="knn", bootstrap=0, cache_dir=cache, out=tmp_path / "b")
    assert "probe" in capfd.readouterr().err


def test_load_results_has_the_rows_and_columns_of_summary_csv(study, tmp_path):
    import pandas

    dataset, _, cache = study
    medprobe.probe(dataset.source, clf="all", bootstrap=200, cache_dir=cache, out=tmp_path / "res", progress=False)
    report = medprobe.report(tmp_path / "res", out=tmp_path / "report", bootstrap=100)
    table = medprobe.load_results(tmp_path / "res", bootstrap=100)
    summary = pandas.read_csv(report.summary_csv)
    assert list(table.columns) == [*summary.columns, "run_record"] and len(table) == 3
    pandas.testing.assert_frame_equal(table.drop(columns="run_record"), summary)
    assert table["p_vs_best_accuracy"].notna().sum() >= 2  # the paired tests, as in the report
    for _, row in table.iterrows():
        assert str(row["run_record"].path) == row["record"] and row["run_record"].method == row["method"]


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("estimator, method", [(LogisticProbe(), "logreg"), (SVMProbe(), "svm"),
                                               (KNNProbe(), "knn")])
def test_estimators_fit_as_the_probe_runner_does(study, tmp_path, estimator, method, seed):
    """README: given random_state=seed + i and fold i's train + validation samples, each estimator chooses the
    hyperparameters and predicts the test scores `medprobe probe --seed seed` records for that fold."""
    dataset, _, cache = study
    record = medprobe.probe(dataset.source, clf=method, bootstrap=0, cache_dir=cache, out=tmp_path / "o",
                            progress=False, seed=seed)[0]
    fs = medprobe.features(dataset.source, model="dinov2-small", cache_dir=cache)
    labels = np.array(fs.labels)
    predictions = record.read_predictions()
    for fold, chosen in zip(medprobe.splits(fs, seed=seed).folds, record.data["hyperparameters"], strict=True):
        outer = np.sort(np.concatenate([fold.train, fold.val]))  # what the fold carved its validation from
        probe = clone(estimator).set_params(random_state=seed + fold.index).fit(fs.X[outer], labels[outer],
                                                                         groups=np.array(fs.groups)[outer])
        assert probe.best_params_ == {k: v for k, v in chosen.items() if k not in ("fold", "val_balanced_accuracy")}
        assert probe.best_score_ == pytest.approx(chosen["val_balanced_accuracy"])
        in_fold = np.isin(predictions.ids, [fs.ids[i] for i in fold.test])
        # the same model up to its solver's tolerance (libSVM stops at 1e-3; the sample order differs)
        np.testing.assert_allclose(probe.predict_proba(fs.X[fold.test]), predictions.scores[in_fold], atol=1e-3)
        assert list(probe.classes_) == ["class0", "class1"]


def test_estimators_take_any_label_type_and_fall_back_without_validation_data():
    X, y = np.random.default_rng(0).normal(size=(30, 4)), np.repeat([10, 20, 30], 10)
    X[:, 0] += y / 10
    probe = LogisticProbe().fit(X, y)
    assert set(probe.predict(X)) <= {10, 20, 30} and probe.predict_proba(X).shape == (30, 3)
    assert SVMProbe().fit(X, y == 20).decision_function(X).shape == (30,)
    tiny = KNNProbe().fit(X[[0, 1, 10, 11, 20]], ["a", "a", "b", "b", "c"])  # "c": one sample, no validation
    assert tiny.best_score_ is None and tiny.best_params_ == {"k": 20, "weighting": "softmax"}
    with pytest.raises(MedprobeError, match="only one class"):
        LogisticProbe().fit(X, np.zeros(30))


# LogisticProbe is checked with coarse_to_fine: the same estimator on about half of its C grid, which keeps
# scikit-learn's ~55 checks (each fitting many times) to seconds; every check applies, none is expected to fail
@parametrize_with_checks([LogisticProbe(coarse_to_fine=True), SVMProbe(), KNNProbe()])
def test_estimators_pass_scikit_learn_checks(estimator, check):
    check(estimator)


def test_notebook_example_runs(tmp_path):
    env = {**os.environ, "MEDPROBE_EXAMPLE_DIR": str(tmp_path / "work"), "MPLBACKEND": "Agg",
           "HF_HUB_OFFLINE": "1", "MEDPROBE_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "notebook.py")], capture_output=True, text=True,
                            cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "efficientnet-lite0: 32 extracted" in result.stdout
    assert "logreg: balanced accuracy" in result.stdout and "random forest: balanced accuracy" in result.stdout
    figure = tmp_path / "work" / "balanced_accuracy.png"
    assert figure.stat().st_size > 5000
    assert len(list((tmp_path / "work" / "results").rglob("*.json"))) == 2


@pytest.mark.parametrize("estimator, grid", [(LogisticProbe(), {"probe__coarse_to_fine": [True, False]}),
                                             (SVMProbe(), {"scale__with_mean": [True, False]}),
                                             (KNNProbe(), {"scale__with_std": [True, False]})])
def test_estimators_work_in_a_pipeline_under_grid_search_and_pickle(estimator, grid):
    """README: the estimators work with clone, pickling, Pipeline and GridSearchCV."""
    import pickle

    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    labels, X = clustered(20, 3, 6, 0.6, seed=1)
    pipeline = Pipeline([("scale", StandardScaler()), ("probe", estimator)])
    search = GridSearchCV(pipeline, grid, cv=3, scoring="balanced_accuracy").fit(X, labels)
    assert set(search.cv_results_["params"][0]) == set(grid) and search.best_score_ > 0.8
    restored = pickle.loads(pickle.dumps(search.best_estimator_))
    np.testing.assert_array_equal(restored.predict_proba(X), search.best_estimator_.predict_proba(X))
    assert (restored.predict(X) == np.array(labels)).mean() > 0.8

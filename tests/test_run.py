"""`medprobe demo` end to end, and `medprobe run`: plan, resume after kills, same results."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from test_interruptions import STOPS, many_images, stop_once_it_saved
from volume_helpers import glioma_cohort, write_spec

from medprobe.cache import read_contents
from medprobe.cli import main
from medprobe.errors import MedprobeError
from medprobe.run.experiment import load_experiment
from medprobe.run.runner import Runner

QUIET = Console(file=open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the tests


def test_demo_runs_offline_with_every_method_in_the_report(tmp_path, monkeypatch):
    from medprobe import demo

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # the demo's own choice: Lite0/1/2 (real weights); the hub models are skipped offline, not waited for
    own = demo.prepare_demo(tmp_path / "own", QUIET, xray_patients=2, glioma_patients=3)
    assert load_experiment(own).backbones == ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"]
    from medprobe.run.runner import plan_steps

    kinds = [step.kind for step in plan_steps(load_experiment(own))]  # the README's "36 steps"
    assert (len(kinds), kinds.count("extract"), kinds.count("probe"), kinds.count("finetune")) == (36, 18, 15, 3)
    # the run itself with Lite0 alone keeps the suite short; the three load as they do in test_fidelity
    experiment = demo.prepare_demo(tmp_path / "demo", QUIET, xray_patients=10, glioma_patients=15, epochs=1,
                                   backbones=["efficientnet-lite0"])
    summary = Runner(load_experiment(experiment), QUIET).run(show_progress=False)
    # extract x6 (+ site 2, + the findings' manifest over the X-rays' cache), probe x5, finetune x1
    assert summary.count("ran") == len(summary.steps) == 6 + 5 + 1
    with summary.report_html.with_name("summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    methods = {(row["dataset"], row["method"]) for row in rows}
    for dataset in ("chest-xray", "glioma-t1", "glioma-t1c", "glioma-flair"):
        assert {(dataset, m) for m in ("logreg", "svm", "knn")} <= methods
    assert ("chest-xray", "finetune-all") in methods
    external = {row["method"] for row in rows if row["external_cohort"] == "chest-xray-site2"}
    assert external == {"logreg", "svm", "knn", "finetune-all"}  # the second site, probed and fine-tuned
    page = summary.report_html.read_text()
    assert "chest-xray: internal vs external test" in page and "chest-xray: balanced_accuracy by sex" in page
    assert "reliability of the" in page and "balanced_accuracy by subgroup" in page
    assert "chest-xray: calibration" in page and "chest-xray-findings: AUROC per finding (multi-label)" in page
    findings = {row["method"]: row for row in rows if row["dataset"] == "chest-xray-findings"}
    assert set(findings) == {"logreg", "svm", "knn"} and all(row["macro_auroc"] for row in findings.values())
    logreg = json.loads(next((tmp_path / "demo").rglob("chest-xray/efficientnet-lite0__gap__logreg__kfold3-seed0.json"))
                        .read_text())
    sexes = {group["value"] for group in logreg["subgroups"]["columns"]["sex"]["groups"]}
    assert logreg["calibrated"]["applied"] and sexes == {"F", "M"}
    glioma = [row for row in rows if row["dataset"] == "glioma-t1c" and row["method"] == "logreg"][0]
    assert glioma["patient_balanced_accuracy"], "slices aggregate to patients"
    assert "<img" in summary.report_html.read_text()
    caches = list((tmp_path / "demo").rglob("*.h5"))
    assert len(caches) == 3  # X-rays, site 2, the MRI folder's: the findings reuse the X-rays' cache
    assert {read_contents(path).attrs["precision"] for path in caches} == {"fp32"}  # same on every CPU
    finetuned = [json.loads(p.read_text()) for p in (tmp_path / "demo").rglob("*finetune-*.json")]
    assert finetuned and {record["cost"]["precision"] for record in finetuned} == {"fp32"}
    assert {record["backbone"]["licence"] for record in finetuned} == {"apache-2.0"}  # the registry's, recorded
    assert {row["licence"] for row in rows} == {"apache-2.0"}  # probes (cache provenance) and the fine-tune
    again = Runner(load_experiment(experiment), QUIET).run(show_progress=False)
    assert again.count("done") == len(again.steps)  # a rerun skips everything


def small_study(root: Path, model: Path, vit: Path) -> Path:
    many_images(root / "images", 36)
    cohort = glioma_cohort(root / "mri", patients=9)
    write_spec(cohort / "t1.toml", manifest="t1.csv", slices="middle:3", name="mri-t1")
    (root / "experiment.toml").write_text(f"""
out = "results"
cache_dir = "cache"
backbones = ["{model}", "{vit}"]
folds = 3
bootstrap = 100

[[datasets]]
data = "images"

[[datasets]]
data = "mri/t1.toml"
finetune = false

[extract]
precision = "fp32"
device = "cpu"
batch_size = 4
workers = 0

[probe]
classifiers = ["logreg", "knn"]

[finetune]
modes = ["none"]
epochs = 3
batch_size = 8
workers = 0
precision = "fp32"
device = "cpu"
""")
    return root / "experiment.toml"


def predictions(out: Path) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): p.read_text() for p in sorted((out / "records").rglob("*.predictions.csv"))}


def test_run_resumes_after_kills_and_ends_with_the_same_results(tmp_path, tiny_timm_models, capsys):
    model, vit = tiny_timm_models["resnet"], tiny_timm_models["vit"]
    reference = small_study(tmp_path / "a", model, vit)
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(reference)])
    assert exit_info.value.code in (0, None)
    expected = predictions(tmp_path / "a" / "results")
    assert len(expected) == 2 * 2 * 2 + 2  # 2 datasets x 2 backbones x (logreg, knn); finetune-none on images

    experiment = small_study(tmp_path / "b", model, vit)
    rng = np.random.default_rng(3)
    stops = []
    for attempt in range(14):  # until STOPS.run stops landed after this run saved a step's work
        if len(stops) == STOPS.run:
            break
        how = signal.SIGINT if attempt % 2 else signal.SIGKILL
        # saved work: a journal batch, or a finished step's record or run state (once the extractions are
        # done, in one fast pass for both backbones, the later steps are where stops land)
        stop = stop_once_it_saved(["run", experiment], tmp_path / "b", ("cache/**/batch-*.npz", "results/**/*.json"),
                                  how, rng.uniform(0.0, 3.0))
        stops += [how.name] if stop.landed else []
        if stop.returncode == 0:  # finished before the stop: the study starts again from nothing
            shutil.rmtree(tmp_path / "b" / "results")
            shutil.rmtree(tmp_path / "b" / "cache")
    assert len(stops) == STOPS.run and {"SIGKILL", "SIGINT"} <= set(stops), stops
    with pytest.raises(SystemExit):
        main(["run", str(experiment), "--dry-run"])
    plan = capsys.readouterr().out
    assert "already done" in plan
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(experiment)])
    assert exit_info.value.code in (0, None)
    assert predictions(tmp_path / "b" / "results") == expected
    with pytest.raises(SystemExit):
        main(["run", str(experiment)])
    assert f"{len(Runner(load_experiment(experiment), QUIET).run(dry_run=True).steps)} steps: " \
           f"{len(Runner(load_experiment(experiment), QUIET).run(dry_run=True).steps)} already done" \
        in capsys.readouterr().out


def test_bad_experiment_files_are_one_line(tmp_path):
    (tmp_path / "data").mkdir()
    cases = {
        'backbones = ["resnet50"]\n': "no datasets",
        '[[datasets]]\ndata = "data"\n': "no backbones",
        'backbones = ["resnet50"]\nepochs = 3\n[[datasets]]\ndata = "data"\n': "unknown key(s) epochs",
        'backbones = ["resnet50"]\n[[datasets]]\ndata = "missing"\n': "missing does not exist",
        'backbones = ["resnet50"]\n[[datasets]]\ndata = "data"\n[finetune]\nunfreeze = "all"\n':
            "unknown key(s) unfreeze",
        'backbones = "resnet50"\n[[datasets]]\ndata = "data"\n': "backbones must be a list",
        'backbones = ["resnet50"]\n[[datasets]]\ndata = "data"\n[probe]\ncalibrate = "platt"\n':
            "--calibrate 'platt' is not one of temperature",
    }
    for text, message in cases.items():
        (tmp_path / "e.toml").write_text(text)
        with pytest.raises(MedprobeError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_experiment(tmp_path / "e.toml")


def test_calibrate_in_the_run_file_reaches_the_probes_and_reruns_only_their_steps(tmp_path):
    from medprobe.run.runner import plan_steps

    (tmp_path / "data").mkdir()
    base = 'backbones = ["resnet50"]\n[[datasets]]\ndata = "data"\n[finetune]\nepochs = 1\n[probe]\n'
    keys = {}
    for name, extra in (("plain", ""), ("calibrated", 'calibrate = "temperature"\n')):
        (tmp_path / f"{name}.toml").write_text(base + extra)
        experiment = load_experiment(tmp_path / f"{name}.toml")
        keys[name] = {step.kind: step.key(experiment) for step in plan_steps(experiment)}
    assert load_experiment(tmp_path / "calibrated.toml").calibrate == "temperature"
    assert keys["plain"]["probe"] != keys["calibrated"]["probe"]  # the probe step runs again
    assert keys["plain"]["finetune"] == keys["calibrated"]["finetune"]  # nothing else does


def test_the_reference_study_example_plans_the_whole_grid(tmp_path):
    """examples/reference-study.toml parses and plans 6 datasets x 6 backbones, frozen and unfrozen."""
    from medprobe.run.runner import plan_steps

    example = Path(__file__).parents[1] / "examples" / "reference-study.toml"
    copy = tmp_path / "reference-study.toml"
    copy.write_text(example.read_text())
    for line in example.read_text().splitlines():
        if line.startswith("data = "):
            (tmp_path / line.split('"')[1]).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / line.split('"')[1]).touch()
    experiment = load_experiment(copy)
    assert len(experiment.datasets) == 6 and len(experiment.backbones) == 6
    kinds = [step.kind for step in plan_steps(experiment)]
    assert (kinds.count("extract"), kinds.count("probe"), kinds.count("finetune")) == (36, 36, 72)


def test_a_failing_step_is_reported_while_the_independent_steps_go_on_and_the_run_exits_2(
        tmp_path, tiny_timm_models, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))  # dinov2-small: not here, not downloadable
    many_images(tmp_path / "images", 24)
    model = tiny_timm_models["resnet"]
    (tmp_path / "experiment.toml").write_text(f"""
out = "results"
cache_dir = "cache"
backbones = ["{model}", "dinov2-small"]
folds = 3
bootstrap = 50

[[datasets]]
data = "images"
finetune = false

[extract]
precision = "fp32"
device = "cpu"
batch_size = 4
workers = 0

[probe]
classifiers = ["logreg"]
""")
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(tmp_path / "experiment.toml")])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: 2 step(s) failed or were blocked, first: ")
    assert "dinov2-small" in errors[0] and "Traceback" not in captured.err + captured.out
    assert "4 steps: 0 already done, 2 ran, 2 failed or blocked" in captured.out  # extract and probe, each
    # the other backbone's extraction and probe ran, and the report was built from them
    assert len(list((tmp_path / "results").rglob(f"{model.name}*logreg*.json"))) == 1
    assert not list((tmp_path / "results").rglob("dinov2-small*.json"))
    assert (tmp_path / "results" / "report" / "report.html").is_file()

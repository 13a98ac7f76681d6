"""`medprobe demo` end to end, and `medprobe run`: plan, resume after kills, same results."""

from __future__ import annotations

import csv
import json
import os
import re
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

EPOCH_LINE = re.compile(r"(fold \d+|all data) epoch \d+/\d+: train loss \d")  # --verbose's line per fine-tune epoch
QUIET = Console(file=open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the tests


def test_demo_runs_offline_with_every_method_in_the_report(tmp_path, monkeypatch, capsys):
    from medprobe import demo

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # the demo's own choice: Lite0/1/2 (real weights); the hub models are skipped offline, not waited for
    own = demo.prepare_demo(tmp_path / "own", QUIET, xray_patients=2, glioma_patients=3)
    assert load_experiment(own).backbones == ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"]
    from medprobe.run.runner import plan_steps

    kinds = [step.kind for step in plan_steps(load_experiment(own))]  # the README's "36 steps"
    assert (len(kinds), kinds.count("extract"), kinds.count("probe"), kinds.count("finetune")) == (36, 18, 15, 3)
    # the run itself, through the CLI as a user types it, with Lite0 alone to keep the suite short (the three
    # load as they do in test_fidelity); the hub models are skipped offline, one line each
    monkeypatch.setattr(demo, "DEMO_MODELS", ("efficientnet-lite0",))
    full_size = demo.prepare_demo
    monkeypatch.setattr(demo, "prepare_demo", lambda out, console: full_size(out, console, xray_patients=10,
                                                                               glioma_patients=9, epochs=1))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--out", str(tmp_path / "demo"), "--verbose"])
    assert exit_info.value.code in (0, None)
    out, err = capsys.readouterr()
    skipped = [line for line in out.splitlines() if "skipped" in line]
    assert [line.split(":")[0] for line in skipped] == list(demo.HUB_MODELS), out
    assert all("the demo goes on without it" in line for line in skipped)
    assert "Leaderboard: balanced_accuracy per image" in out
    for dataset in ("chest-xray", "glioma-t1", "glioma-t1c", "glioma-flair"):  # a table per dataset
        assert f"\n{dataset}: balanced_accuracy, per image" in out, dataset
    # extract x6 (+ site 2, + the findings' manifest over the X-rays' cache), probe x5, finetune x1
    assert "12 steps: 0 already done, 12 ran, 0 failed or blocked" in out
    report_html = Path(out.split("report: ")[1].split()[0])
    assert report_html == tmp_path / "demo" / "results" / "report" / "report.html" and report_html.exists()
    experiment = tmp_path / "demo" / "experiment.toml"
    with report_html.with_name("summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    methods = {(row["dataset"], row["method"]) for row in rows}
    for dataset in ("chest-xray", "glioma-t1", "glioma-t1c", "glioma-flair"):
        assert {(dataset, m) for m in ("logreg", "svm", "knn")} <= methods
    assert ("chest-xray", "finetune-all") in methods
    external = {row["method"] for row in rows if row["external_cohort"] == "chest-xray-site2"}
    assert external == {"logreg", "svm", "knn", "finetune-all"}  # the second site, probed and fine-tuned
    page = report_html.read_text()
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
    assert "<img" in page
    caches = list((tmp_path / "demo").rglob("*.h5"))
    assert len(caches) == 3  # X-rays, site 2, the MRI folder's: the findings reuse the X-rays' cache
    assert {read_contents(path).attrs["precision"] for path in caches} == {"fp32"}  # same on every CPU
    finetuned = [json.loads(p.read_text()) for p in (tmp_path / "demo").rglob("*finetune-*.json")]
    assert finetuned and {record["cost"]["precision"] for record in finetuned} == {"fp32"}
    assert {record["backbone"]["licence"] for record in finetuned} == {"apache-2.0"}  # the registry's, recorded
    assert {row["licence"] for row in rows} == {"apache-2.0"}  # probes (cache provenance) and the fine-tune
    # --verbose: a line per epoch of every training the fine-tune records hold (folds, the external test's)
    trained = [(entry["fold"], epoch["epoch"]) for record in finetuned for entry in record["history"]
               for epoch in entry["epochs"]]
    assert len([line for line in err.splitlines() if EPOCH_LINE.match(line)]) == len(trained) > 0
    monkeypatch.setattr(Runner, "_report", lambda self, summary: None)  # what is asked here is the steps'
    again = Runner(load_experiment(experiment), QUIET).run(show_progress=False)
    assert again.count("done") == len(again.steps)  # a rerun skips everything


def test_the_demo_writes_the_cohorts_the_readme_describes(tmp_path):
    """README: 20 patients x 2 images of 12-bit data in 16-bit PNGs with a sex column, a second site of 12, the
    multi-label findings; 15 NIfTI patients, grades 2/3/4, T1/T1C/FLAIR with lesion masks, some stored in
    another orientation; the four slices with the largest lesion area; patient-grouped 3-fold CV."""
    import nibabel as nib
    from PIL import Image

    from medprobe import demo

    experiment = load_experiment(demo.prepare_demo(tmp_path, QUIET, backbones=["efficientnet-lite0"]))
    for folder, patients in (("xray", 20), ("xray-site2", 12)):
        with (tmp_path / folder / "manifest.csv").open() as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == 2 * patients and len({row["group"] for row in rows}) == patients
        assert {row["sex"] for row in rows} == {"F", "M"}
        pixels = [np.asarray(Image.open(tmp_path / folder / row["path"])) for row in rows[:6]]
        assert {p.dtype for p in pixels} == {np.dtype(np.uint16)} and 255 < max(p.max() for p in pixels) <= 4095
    with (tmp_path / "xray" / "findings.csv").open() as handle:
        findings = {label for row in csv.DictReader(handle) for label in row["labels"].split("|") if label}
    assert findings == {"opacity", "device"}
    for modality in demo.MODALITIES:
        with (tmp_path / "glioma" / f"{modality}.csv").open() as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == 15 and {row["label"] for row in rows} == {"grade2", "grade3", "grade4"}
        assert all((tmp_path / "glioma" / row["mask"]).exists() for row in rows)
        orientations = {nib.aff2axcodes(nib.load(tmp_path / "glioma" / row["path"]).affine) for row in rows}
        assert orientations == {("R", "A", "S"), ("L", "P", "S")}
        assert 'slices = "mask-top:4"' in (tmp_path / "glioma" / f"{modality}.toml").read_text()
    assert experiment.folds == 3 and experiment.backbones == ["efficientnet-lite0"]


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


def finetune_study(root: Path, model: Path, epochs: int) -> Path:
    """One backbone on 36 images: a kNN probe, then a frozen fine-tune of 3 folds x `epochs` (no early stop)."""
    many_images(root / "images", 36)
    (root / "experiment.toml").write_text(f"""
out = "results"
cache_dir = "cache"
backbones = ["{model}"]
folds = 3
bootstrap = 50
[[datasets]]
data = "images"
[extract]
precision = "fp32"
device = "cpu"
workers = 0
[probe]
classifiers = ["knn"]
[finetune]
modes = ["none"]
epochs = {epochs}
patience = {epochs}
batch_size = 8
workers = 0
precision = "fp32"
device = "cpu"
""")
    return root / "experiment.toml"


def checkpointed_epochs(out: Path) -> int:
    """The finished epochs that the fine-tune's last.safetensors files hold, over all folds."""
    from safetensors import safe_open

    done = 0
    for path in out.rglob("last.safetensors"):
        with safe_open(str(path), framework="pt") as handle:
            done += json.loads(handle.metadata()["progress"])["epoch"]
    return done


def test_run_resumes_an_interrupted_fine_tune_from_its_checkpoints(tmp_path, tiny_timm_models, capsys):
    """README: after a stop, `medprobe run` continues an interrupted fine-tune from its last checkpoint and
    ends with the uninterrupted run's predictions; without --verbose a fine-tune is one bar, with it a line
    per epoch (only the epochs left after the checkpoints)."""
    epochs, folds = 6, 3
    model = tiny_timm_models["resnet"]
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(finetune_study(tmp_path / "a", model, epochs))])
    assert exit_info.value.code in (0, None)
    err = capsys.readouterr().err
    assert not [line for line in err.splitlines() if EPOCH_LINE.match(line)] and "finetune " in err, err
    expected = predictions(tmp_path / "a" / "results")
    [record] = (tmp_path / "a" / "results").rglob("*finetune-none*seed0.json")
    epoch_seconds = json.loads(record.read_text())["cost"]["wall_seconds"] / (folds * epochs)

    experiment = finetune_study(tmp_path / "b", model, epochs)
    out = tmp_path / "b" / "results"
    rng = np.random.default_rng(4)
    stops = []
    for attempt in range(30):  # until STOPS.finetune stops landed while the run's fine-tune was training
        if len(stops) == STOPS.finetune:
            break
        how = signal.SIGINT if attempt % 2 else signal.SIGKILL
        stop = stop_once_it_saved(["run", experiment], tmp_path / "b", "results/**/last.safetensors", how,
                                  rng.uniform(0.0, 1.5 * epoch_seconds))
        assert not [line for line in stop.err.splitlines() if EPOCH_LINE.match(line)], stop.err
        training = not list(out.rglob("*finetune-none*.json"))  # the stop came before the fine-tune's records
        stops += [how.name] if stop.landed and training else []
        if stop.returncode == 0:  # it finished before the stop: the fine-tune starts again from nothing
            shutil.rmtree(out)
            stops = []
    assert len(stops) == STOPS.finetune and {"SIGKILL", "SIGINT"} <= set(stops), stops
    done = checkpointed_epochs(out)
    assert 0 < done < folds * epochs
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(experiment), "--verbose"])
    assert exit_info.value.code in (0, None)
    trained = [line for line in capsys.readouterr().err.splitlines() if EPOCH_LINE.match(line)]
    assert len(trained) == folds * epochs - done  # resumed: no checkpointed epoch was trained again
    assert predictions(out) == expected


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


def test_changing_a_setting_reruns_only_the_steps_it_shapes(tmp_path, tiny_timm_models):
    """README: change a setting and only the affected steps run again; the extractions stay done."""
    experiment = small_study(tmp_path, tiny_timm_models["resnet"], tiny_timm_models["vit"])
    experiment.write_text(experiment.read_text().replace(f'"{tiny_timm_models["vit"]}"', "")
                          .replace(", ]", "]").replace("epochs = 3", "epochs = 1"))

    def statuses() -> dict[str, list[str]]:
        summary = Runner(load_experiment(experiment), QUIET).run(show_progress=False)
        found: dict[str, list[str]] = {}
        for step in summary.steps:
            found.setdefault(step.kind, []).append(step.status)
        return found

    assert statuses() == {"extract": ["ran", "ran"], "probe": ["ran", "ran"], "finetune": ["ran"]}
    assert statuses() == {"extract": ["done", "done"], "probe": ["done", "done"], "finetune": ["done"]}
    experiment.write_text(experiment.read_text().replace('classifiers = ["logreg", "knn"]', 'classifiers = ["knn"]'))
    assert statuses() == {"extract": ["done", "done"], "probe": ["ran", "ran"], "finetune": ["done"]}
    experiment.write_text(experiment.read_text().replace("epochs = 1", "epochs = 2"))
    assert statuses() == {"extract": ["done", "done"], "probe": ["done", "done"], "finetune": ["ran"]}


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

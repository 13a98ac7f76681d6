"""`medprobe report` on records written by the real probe and finetune runs (tiny backbones, tiny data)."""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import blob_patients, save_tiny_timm
from PIL import Image
from probe_helpers import write_cache
from torch_blocker import BLOCK_TORCH

from medprobe.cli import main
from medprobe.data import load_dataset
from medprobe.errors import MedprobeError
from medprobe.probe.runner import ProbeSettings, probe
from medprobe.report import build_report
from medprobe.report.browser import chromium_binary
from medprobe.report.records import RunRecord
from medprobe.report.stats import PairedBootstrap, held_out, two_sided_p
from medprobe.results.metrics import interval

PATIENTS, SLICES = 16, 2
REPLICATES = 300


def write_blobs(root: Path):
    """32 images, 16 patients x 2 slices; the class is where the bright square sits."""
    return load_dataset(blob_patients(root, patients=PATIENTS, per_patient=SLICES, size=(40, 40)))


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """One dataset, three backbones probed with logreg/svm/knn (+ a label-efficiency run), and the tiny CNN
    also fine-tuned frozen and unfrozen on the same splits."""
    from medprobe.extract.runner import extract
    from medprobe.finetune.runner import FinetuneSettings, finetune

    base = tmp_path_factory.mktemp("study")
    dataset = write_blobs(base / "blobs")
    cache, out = base / "cache", base / "results"
    tiny_cnn = save_tiny_timm(base / "tiny-cnn", "test_resnet", input_size=32)
    extract(dataset=dataset, model=str(tiny_cnn), cache_dir=cache, device="cpu", precision="fp32", batch_size=16,
            workers=0, show_progress=False)
    rng = np.random.default_rng(3)
    y = np.array([(i // SLICES) % 2 for i in range(PATIENTS * SLICES)])
    strong = y[:, None] * 2.5 + rng.normal(size=(len(y), 6))  # a clearly better backbone
    write_cache(dataset, cache, "dinov2-small", {"cls": strong[:, :3], "mean": strong[:, 3:]},
                        num_parameters=22_056_576, images_per_second=412.5, device_name="synthetic-device",
                        licence="apache-2.0")
    write_cache(dataset, cache, "vgg16", {"gap": rng.normal(size=(len(y), 5))},  # no signal at all
                        num_parameters=134_260_544, licence="bsd-3-clause")
    settings = {"folds": 4, "bootstrap": REPLICATES, "n_jobs": 1, "seed": 0}
    probe(dataset=dataset, models=None, cache_dir=cache, out_dir=out, show_progress=False,
          settings=ProbeSettings(classifiers=("logreg", "svm", "knn"), **settings))
    probe(dataset=dataset, models=["dinov2-small"], cache_dir=cache, out_dir=out, show_progress=False,
          settings=ProbeSettings(classifiers=("logreg",), shots=(1, 3), repeats=2, **settings))
    for mode in ("none", "all"):
        finetune(dataset=dataset, model=str(tiny_cnn), out_dir=out, show_progress=False,
                 settings=FinetuneSettings(unfreeze=mode, epochs=1, lr=1e-3, head_lr=1e-2, batch_size=8, workers=0,
                                           bootstrap=REPLICATES, precision="fp32", device="cpu", folds=4))
    return out


@pytest.fixture(scope="module")
def report(study, tmp_path_factory):
    return build_report(results_dirs=[study], out_dir=tmp_path_factory.mktemp("report"), metric="accuracy",
                        latex=True, replicates=REPLICATES)


def records_by_cell(results: Path) -> dict[tuple[str, str], dict]:
    """(model, method) -> record JSON of the full-protocol runs, read straight from the files."""
    found = {}
    for path in results.rglob("*.json"):
        data = json.loads(path.read_text())
        if "shots" not in data:
            found[(data["model"], data["method"])] = data
    return found


def markdown_table(markdown: str, title: str) -> list[dict[str, str]]:
    lines = markdown.split(f"### {title}\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[2:]]


def ci_text(entry: dict) -> str:
    return f"{entry['value']:.3f} [{entry['ci'][0]:.3f}, {entry['ci'][1]:.3f}]"


@pytest.mark.parametrize("level", ["sample", "patient"])
def test_table_numbers_equal_the_records_and_bold_marks_the_best(study, report, level):
    records = records_by_cell(study)
    title = f"blobs-labels: accuracy, {'per patient' if level == 'patient' else 'per image'}"
    rows = markdown_table(report.markdown.read_text(), title)
    methods = ["logreg", "svm", "knn", "finetune-none", "finetune-all"]
    assert list(rows[0])[4:] == methods  # probes first, then fine-tuning from frozen to unfrozen
    assert [r["backbone"] for r in rows] == ["dinov2-small", "tiny-cnn", "vgg16"]
    checked = 0
    for method in methods:
        column = {model: data for (model, m), data in records.items() if m == method}
        entries = {model: (data["metrics"] if level == "sample" else data["patient_metrics"]["metrics"])["accuracy"]
                   for model, data in column.items()}
        best = max(entry["value"] for entry in entries.values())
        for row in rows:
            if row["backbone"] not in entries:
                assert row[method] == ""
                continue
            entry = entries[row["backbone"]]
            cell = row[method]
            assert cell.removeprefix("**").startswith(ci_text(entry)), (method, row["backbone"], cell)
            assert cell.startswith("**") == (entry["value"] == best), (method, row["backbone"], cell)
            checked += 1
    assert checked == 3 * 3 + 2  # three probed backbones, one fine-tuned twice
    strong = next(r for r in rows if r["backbone"] == "dinov2-small")
    assert strong["params"] == "22.1M" and strong["dim"] == "3" and strong["extract img/s (device)"] == \
        "412.5 (synthetic-device)"
    tiny = next(r for r in rows if r["backbone"] == "tiny-cnn")
    assert re.fullmatch(r"[\d.]+ \(.+\)", tiny["extract img/s (device)"])  # measured by the real extraction


def test_paired_bootstrap_shares_resamples_and_reproduces_the_records_cis(study, report):
    records = {key: RunRecord(Path(data["record_path"]), data) for key, data in records_by_cell(study).items()}
    best = records[("dinov2-small", "logreg")]
    tests = held_out(best.read_predictions(), "sample")
    assert tests.unit == "patient"
    # the same code, seed and resamples as the probe: the record's own CI comes back exactly
    point, distribution = PairedBootstrap("accuracy", REPLICATES, 0).distribution("best", tests)
    assert point == pytest.approx(best.value("accuracy")[0]) and interval(distribution) == best.value("accuracy")[1]
    bootstrap = PairedBootstrap("accuracy", REPLICATES, 7)
    same = bootstrap.compare("a", tests, "b", held_out(best.read_predictions(), "sample"))
    assert same.comparable and same.difference == 0 and same.p_value == 1.0
    noise = records[("vgg16", "logreg")]
    versus = bootstrap.compare("a", tests, "n", held_out(noise.read_predictions(), "sample"))
    assert versus.difference == pytest.approx(noise.value("accuracy")[0] - best.value("accuracy")[0])
    assert versus.p_value < 0.05 and versus.ci[1] < 0 and (versus.replicates, versus.seed) == (REPLICATES, 7)
    # +1 correction: even when every resample favours one side, p is 2 / (R + 1), never 0
    assert versus.p_value >= 2 / (REPLICATES + 1)
    assert two_sided_p(np.full(REPLICATES, -0.2)) == pytest.approx(2 / (REPLICATES + 1))
    assert two_sided_p(np.array([-0.1, 0.1, 0.0, 0.2])) == 1.0
    patients = bootstrap.compare("a", held_out(best.read_predictions(), "patient"), "n",
                                 held_out(noise.read_predictions(), "patient"))
    assert patients.comparable and patients.difference == pytest.approx(
        noise.value("accuracy", "patient")[0] - best.value("accuracy", "patient")[0])
    shifted = held_out(noise.read_predictions(), "sample")
    shifted.ids = np.array([f"other/{i}" for i in shifted.ids], dtype=object)
    assert bootstrap.compare("a", tests, "s", shifted).reason == "not comparable: different test samples"
    # the report's table says the same: the noise backbone differs from the column's best
    table = report.tables[0]
    cell = next(row for row in table.rows if row.label == "vgg16").cells["logreg"]
    assert cell.comparison.p_value < 0.05 and cell.comparison.unit == "patient"
    assert next(row for row in table.rows if row.label == "dinov2-small").cells["logreg"].comparison is None


class ImageCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images, self.references, self.tags = [], [], set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        values = dict(attrs)
        if tag == "img":
            self.images.append(values.get("src", ""))
        self.references += [v for k, v in attrs if k in ("href", "src") and tag != "img"]


def test_html_is_self_contained_with_every_figure_embedded(report):
    collector = ImageCollector()
    collector.feed(report.html.read_text())
    assert not collector.references and not {"script", "link", "iframe"} & collector.tags
    assert len(collector.images) == len(report.content.figures) == 9
    for source in collector.images:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")
    names = sorted(f.path.name for f in report.content.figures)
    assert names == ["blobs-labels__bars.png", "blobs-labels__confusion.png", "blobs-labels__embedding-pca.png",
                     "blobs-labels__frozen-vs-unfrozen.png", "blobs-labels__label-efficiency.png",
                     "blobs-labels__reliability.png", "blobs-labels__roc.png", "score-vs-extraction-cost.png",
                     "score-vs-parameters.png"]
    assert all(f.path.is_file() and f.path.read_bytes() == f.png for f in report.content.figures)
    markdown = report.markdown.read_text()
    assert all(f"](figures/{name})" in markdown for name in names)


def test_summary_csv_has_one_tidy_row_per_record(study, report):
    with report.summary_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    files = sorted(study.rglob("*.json"))
    assert len(rows) == len(files) == 3 * 3 + 2 + 2  # probes, fine-tunes, two label budgets
    for column in ("dataset", "model", "method", "protocol", "shots", "parameters", "accuracy", "accuracy_ci_low",
                   "accuracy_ci_high", "auroc", "patient_accuracy", "p_vs_best_accuracy"):
        assert column in rows[0], column
    for row in rows:
        data = json.loads(Path(row["record"]).read_text())
        for name, entry in data["metrics"].items():  # to the bootstrap's precision: 300 resamples, 3 decimals
            assert row[name] == f"{entry['value']:.3f}" and row[f"{name}_ci_low"] == f"{entry['ci'][0]:.3f}"
        assert float(row["patient_accuracy"]) == round(data["patient_metrics"]["metrics"]["accuracy"]["value"], 3)
        if data["method"].startswith("finetune"):
            assert int(float(row["trainable_parameters"])) == data["cost"]["trainable_parameters"]
    shots = sorted(int(r["shots"]) for r in rows if r["shots"])
    assert shots == [1, 3]
    with report.comparisons_csv.open() as handle:
        comparisons = list(csv.DictReader(handle))
    assert {c["seed"] for c in comparisons} == {"0"} and {c["replicates"] for c in comparisons} == {str(REPLICATES)}


def test_summary_csv_rounds_estimates_to_the_bootstrap_counts_to_integers_and_speeds_to_a_tenth(report):
    from medprobe.report.render import bootstrap_digits

    # 3 decimals for 1000 resamples (and fewer), 4 for 2000 to 10000
    assert [bootstrap_digits(n) for n in (300, 1000, 2000, 5000, 10000)] == [3, 3, 4, 4, 4]
    with report.summary_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        assert re.fullmatch(r"\d+", row["parameters"]), row["parameters"]
        assert re.fullmatch(r"(\d+)?", row["trainable_parameters"]), row["trainable_parameters"]
        for speed in ("extract_images_per_second", "train_images_per_second"):
            assert re.fullmatch(r"(\d+\.\d)?", row[speed]), (speed, row[speed])
    assert any(row["train_images_per_second"] for row in rows) and any(row["extract_images_per_second"]
                                                                          for row in rows)


def test_reliability_diagram_and_calibration_columns_come_from_runs_with_probabilities(study, report):
    [figure] = [f for f in report.content.figures if f.path.name.endswith("__reliability.png")]
    records = records_by_cell(study)
    drawn = next(data for (model, method), data in records.items() if f"({model}, {method})" in figure.title)
    assert drawn["calibration"]["scores_are_probabilities"] and drawn["method"] in ("logreg", "finetune-all",
                                                                                    "finetune-none")
    with (report.html.parent / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        probabilistic = row["method"] not in ("svm", "knn")
        assert (row["ece"] != "") == probabilistic and (row["nll_ci_low"] != "") == probabilistic, row["method"]
        if probabilistic:
            data = records[(row["model"], row["method"])] if not row["shots"] else None
            if data is not None:
                assert float(row["ece"]) == pytest.approx(data["metrics"]["ece"]["value"], abs=1e-3)


def test_latex_table_marks_the_best(report):
    latex = report.latex.read_text()
    # the leaderboard first, then one table per dataset and level
    assert report.leaderboard is not None
    assert latex.count(r"\begin{tabular}") == 1 + len(report.tables) and r"\toprule" in latex
    leaderboard, _, _ = latex.partition(r"\end{table}")
    assert r"\label{tab:medprobe-leaderboard}" in leaderboard and "Leaderboard" in leaderboard
    for row in report.leaderboard.rows:
        for cell in row.cells.values():  # each cell names the method validation chose
            assert rf"{cell.value:.3f}" in leaderboard and cell.record.method in leaderboard
    table = report.tables[0]
    best_row, best = max(((row, row.cells["logreg"]) for row in table.rows), key=lambda item: item[1].value)
    assert rf"\textbf{{{best.value:.3f}}}" in latex
    assert "finetune-all" in latex and r"dinov2-small" in latex
    # the dagger marks cells that differ from their column's best (vgg16's logreg: p < 0.05), not the best
    _, _, per_dataset = latex.partition(r"\end{table}")
    rows = {line.split(" & ")[0]: line.split(" & ") for line in per_dataset.split(r"\end{table}")[0].splitlines()
            if " & " in line}
    logreg = 3 + table.methods.index("logreg")
    noise = next(row for row in table.rows if row.label == "vgg16").cells["logreg"]
    assert noise.comparison.p_value < 0.05
    assert rows["vgg16"][logreg].startswith(rf"{noise.value:.3f}$^\dagger$")
    assert rows[best_row.label][logreg].startswith(rf"\textbf{{{best.value:.3f}}} {{")  # no dagger


def test_broken_and_partial_records_are_listed_not_fatal(study, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(study, results)
    folder = results / "blobs-labels"
    (folder / "truncated.json").write_text('{"schema": "medprobe.run/1", "method": ')
    (folder / "notes.json").write_text('{"hello": 1}')
    (folder / "half.json.partial").write_text("{")
    vgg_svm = folder / "vgg16__gap__svm__kfold4-seed0.json"
    data = json.loads(vgg_svm.read_text())
    data["metrics"]["auroc"]["value"] = None  # e.g. a class absent from the test set
    vgg_svm.write_text(json.dumps(data))
    knn = folder / "vgg16__gap__knn__kfold4-seed0.json"
    data = json.loads(knn.read_text())
    del data["metrics"]
    knn.write_text(json.dumps(data))
    (folder / "tiny-cnn__gap__logreg__kfold4-seed0.predictions.csv").unlink()
    [unfrozen] = [path for path in folder.glob("*finetune-all*.json")]
    unfrozen.unlink()  # no unfrozen fine-tune left: the frozen-vs-unfrozen figure cannot be drawn
    result = build_report(results_dirs=[results], out_dir=tmp_path / "report", metric="auroc", replicates=50)
    markdown = result.markdown.read_text()
    not_drawn = markdown.split("## Figures not drawn", 1)[1].split("\n## ", 1)[0]
    assert "blobs-labels: no frozen-vs-unfrozen figure (no unfrozen fine-tuning record; run `medprobe finetune " \
           "--unfreeze all`)" in not_drawn
    assert "Figures not drawn" in result.html.read_text()
    skipped = markdown.split("## Skipped or incomplete records", 1)[1]
    expected = {"truncated.json": "not valid JSON", "notes.json": "not a medprobe run record",
                "half.json.partial": "interrupted write", knn.name: "no metrics",
                vgg_svm.name: "no auroc value", "tiny-cnn__gap__logreg__kfold4-seed0.json": "predictions file"}
    for name, reason in expected.items():
        line = next((line for line in skipped.splitlines() if name in line), "")
        assert reason in line, (name, line)
    rows = markdown_table(markdown, "blobs-labels: auroc, per image")
    vgg = next(r for r in rows if r["backbone"] == "vgg16")
    assert vgg["svm"].startswith("—") and vgg["knn"] == ""
    assert "Skipped or incomplete records" in result.html.read_text()


def test_report_cli_runs_without_torch(study, tmp_path):
    out = tmp_path / "report"
    script = BLOCK_TORCH + f"""
from medprobe.cli import main
try:
    main(["report", {str(study)!r}, "--out", {str(out)!r}, "--metric", "balanced_accuracy", "--latex",
          "--bootstrap", "100"])
except SystemExit as exit:
    assert not exit.code, exit.code
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert str(out / "report.html") in result.stdout
    assert "blobs-labels: balanced_accuracy, per image" in result.stdout and "finetune-all" in result.stdout
    assert (out / "report.tex").is_file() and (out / "summary.csv").is_file()


def test_report_errors_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for args, message in (([str(tmp_path / "empty")], "no run records"),
                          ([str(tmp_path / "missing")], "does not exist"),
                          ([str(tmp_path / "empty"), "--metric", "speed"], "--metric 'speed' is not one of")):
        with pytest.raises(SystemExit) as info:
            main(["report", *args, "--out", str(tmp_path / "out")])
        assert info.value.code == 2 and message in capsys.readouterr().err
    (tmp_path / "empty" / "x.json").write_text("[]")
    with pytest.raises(MedprobeError, match="none of the 1 JSON file"):
        build_report(results_dirs=[tmp_path / "empty"], out_dir=tmp_path / "out")


@pytest.mark.skipif(chromium_binary() is None, reason="no chromium binary (apt-get install chromium)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    """The HTML renders in a real browser with no network, through docs/screenshot.py (what makes
    docs/report.png), pointed at this report as if a demo folder held it."""
    demo = tmp_path / "demo"
    (demo / "results").mkdir(parents=True)
    (demo / "results" / "report").symlink_to(report.html.parent)
    shot = tmp_path / "report.png"
    done = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "docs" / "screenshot.py"), "--demo",
                           str(demo), "--out", str(shot)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == str(shot), done.stderr
    with Image.open(shot) as image:
        assert image.size == (1200, 1700)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 200  # text, tables and plots, not a blank page


def test_leaderboard_comes_first_and_picks_each_backbones_method_on_validation(study, report):
    board = report.leaderboard
    assert board.methods == ["blobs-labels"] and [row.label for row in board.rows] == ["dinov2-small", "tiny-cnn",
                                                                                          "vgg16"]
    records = records_by_cell(study)
    for row in board.rows:
        cell = row.cells["blobs-labels"]
        candidates = {m: d for (model, m), d in records.items() if model == row.model}
        validation = {m: np.mean([h["val_balanced_accuracy"] for h in d["hyperparameters"]])
                      for m, d in candidates.items()}
        assert validation[cell.record.method] == max(validation.values())  # chosen on validation, not on test
        assert cell.value == candidates[cell.record.method]["metrics"]["accuracy"]["value"]
    by_label = {row.label: row.cells["blobs-labels"] for row in board.rows}
    assert by_label["dinov2-small"].best and by_label["dinov2-small"].comparison is None
    assert by_label["vgg16"].comparison.comparable and by_label["vgg16"].comparison.p_value < 0.05
    assert next(r for r in board.rows if r.label == "tiny-cnn").backbone.peak_memory_mb > 0  # from the real extraction
    html = report.html.read_text()
    landmarks = ('id="leaderboard"', "accuracy against extraction cost", "<h2>blobs-labels</h2>")
    order = [html.index(text) for text in landmarks]
    assert order == sorted(order)
    section = report.markdown.read_text().split("## Leaderboard\n\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[2:]]
    assert list(rows[0]) == ["backbone", "params", "licence", "extract img/s (device)", "extract peak memory",
                             "blobs-labels"]
    # each registry backbone's licence, from its cache's provenance; a local checkpoint has none to name
    assert {r["backbone"]: r["licence"] for r in rows} == {"dinov2-small": "apache-2.0", "tiny-cnn": "—",
                                                            "vgg16": "bsd-3-clause"}
    assert rows[0]["blobs-labels"].startswith("**")
    assert by_label["dinov2-small"].record.method in rows[0]["blobs-labels"]
    with report.comparisons_csv.open() as handle:
        assert any(c["level"] == "leaderboard" and c["model"] == "vgg16" for c in csv.DictReader(handle))


def separation(found) -> float:
    """Distance between the two class centres over the mean within-class spread."""
    centres = [found.points[found.y == k].mean(axis=0) for k in (0, 1)]
    spread = np.mean([found.points[found.y == k].std(axis=0).mean() for k in (0, 1)])
    return float(np.linalg.norm(centres[0] - centres[1]) / spread)


@pytest.mark.parametrize("name", ["pca", "tsne", "umap"])
def test_embedding_map_separates_the_classes_of_the_informative_backbone(study, name):
    from medprobe.report.embedding import embedding_map, projection

    if name == "umap":
        pytest.importorskip("umap", reason="umap-learn is an optional extra, not in the dev environment")

    records = {key: RunRecord(Path(data["record_path"]), data) for key, data in records_by_cell(study).items()}
    maps = {model: embedding_map(model, records[(model, "logreg")], records[(model, "logreg")].read_predictions(),
                                 projection(name), seed=0) for model in ("dinov2-small", "vgg16")}
    assert all(len(m.points) == PATIENTS * SLICES and m.points.shape[1] == 2 for m in maps.values())
    assert separation(maps["dinov2-small"]) > 2 * separation(maps["vgg16"])
    assert maps["vgg16"].wrong.sum() > maps["dinov2-small"].wrong.sum()


def test_each_embedding_map_shows_the_backbone_s_best_on_validation_probe(study, tmp_path, monkeypatch):
    """README: a backbone's map shows the test samples of its probe with the best mean validation balanced
    accuracy over the folds (per pool), whichever classifier that is; computed here from the record files."""
    from medprobe.report import figures

    best: dict[tuple[str, str], tuple[float, str]] = {}
    for path in study.rglob("*.json"):
        data = json.loads(path.read_text())
        if data["kind"] != "probe" or "shots" in data:
            continue
        score = float(np.mean([fold["val_balanced_accuracy"] for fold in data["hyperparameters"]]))
        key = (data["model"], data["pool"])
        best[key] = max(best.get(key, (-1.0, "")), (score, path.stem))
    drawn = {}
    real_map = figures.embedding_map

    def recorded_map(label, record, predictions, chosen, seed):
        drawn[(record.data["model"], record.data["pool"])] = record.path.stem
        assert list(predictions.ids) == list(record.read_predictions().ids)  # the chosen record's own test predictions
        return real_map(label, record, predictions, chosen, seed)

    monkeypatch.setattr(figures, "embedding_map", recorded_map)
    build_report(results_dirs=[study], out_dir=tmp_path / "report", replicates=REPLICATES)
    assert drawn == {key: stem for key, (_, stem) in best.items()}
    assert {stem.rsplit("__", 2)[-2] for stem in drawn.values()} != {"logreg"}  # not simply the first method


def test_embedding_maps_sample_above_the_limit_by_seed_and_note_a_cache_that_is_gone(study, tmp_path, monkeypatch):
    from medprobe.report import embedding

    assert embedding.MAX_POINTS == 3000
    record = {key: RunRecord(Path(data["record_path"]), data) for key, data in records_by_cell(study).items()}[
        ("dinov2-small", "logreg")]
    predictions = record.read_predictions()
    assert len(predictions.ids) > 20
    monkeypatch.setattr(embedding, "MAX_POINTS", 20)
    drawn = [embedding.embedding_map("d", record, predictions, embedding.projection("pca"), seed=seed)
             for seed in (0, 0, 1)]
    assert [len(m.points) for m in drawn] == [20, 20, 20]
    assert np.array_equal(drawn[0].points, drawn[1].points) and not np.array_equal(drawn[0].points, drawn[2].points)
    monkeypatch.undo()
    gone = dict(record.data, features=[dict(record.data["features"][0], cache=str(tmp_path / "gone.h5"))])
    with pytest.raises(MedprobeError, match="gone.h5 of .* is not here"):
        embedding.embedding_map("d", RunRecord(record.path, gone), predictions, embedding.projection("pca"), seed=0)
    # through the report: every cache moved away (another machine) -> noted under "Figures not drawn"
    copy = tmp_path / "results"
    shutil.copytree(study, copy)
    for path in copy.rglob("*.json"):
        data = json.loads(path.read_text())
        for source in data.get("features") or []:
            source["cache"] = str(tmp_path / "elsewhere" / Path(source["cache"]).name)
        path.write_text(json.dumps(data))
    built = build_report(results_dirs=[copy], out_dir=tmp_path / "report", replicates=REPLICATES)
    page = built.html.read_text()
    assert "Figures not drawn" in page and re.search(r"no embedding map for [^<]*is not here", page)
    assert not list((tmp_path / "report").rglob("*embedding-pca.png"))


def test_embedding_projection_errors_name_the_choices(study, tmp_path):
    with pytest.raises(MedprobeError, match="--embedding 'mds' is not one of pca, tsne, umap"):
        build_report(results_dirs=[study], out_dir=tmp_path / "report", embedding="mds")


def test_cpu_name_is_the_model_name_from_cpuinfo(tmp_path):
    from medprobe.runtime.device import cpu_name

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC   7B13 64-Core Processor\n")
    assert cpu_name(info).startswith("AMD EPYC 7B13 64-Core Processor (")
    assert cpu_name(tmp_path / "missing")  # falls back to what platform knows


def test_several_pools_get_a_row_each_and_the_newest_of_several_records_is_shown(study, tmp_path):
    """README: a backbone probed with several pools gets a row per pool; where a backbone and method have
    several records (two seeds), the newest is shown and the other is listed."""
    results = tmp_path / "results"
    shutil.copytree(study, results)
    dataset = load_dataset(study.parent / "blobs" / "labels.csv")
    settings = {"folds": 4, "bootstrap": REPLICATES, "n_jobs": 1}
    [mean_pool] = probe(dataset=dataset, models=["dinov2-small"], cache_dir=study.parent / "cache", out_dir=results,
                        show_progress=False, settings=ProbeSettings(classifiers=("logreg",), pool="mean", seed=0,
                                                                    **settings))
    [second_seed] = probe(dataset=dataset, models=["vgg16"], cache_dir=study.parent / "cache", out_dir=results,
                          show_progress=False, settings=ProbeSettings(classifiers=("knn",), seed=1, **settings))
    markdown = build_report(results_dirs=[results], out_dir=tmp_path / "report", metric="accuracy",
                            replicates=REPLICATES).markdown.read_text()
    rows = {row["backbone"]: row for row in markdown_table(markdown, "blobs-labels: accuracy, per image")}
    # the study probed it with its default pools (cls+mean here), this test with mean alone
    assert {"dinov2-small (cls+mean)", "dinov2-small (mean)"} <= set(rows) and "dinov2-small" not in rows
    assert rows["dinov2-small (mean)"]["logreg"].lstrip("*").startswith(
        f"{mean_pool['metrics']['accuracy']['value']:.3f}")
    assert rows["dinov2-small (mean)"]["svm"] == ""  # only logreg was probed on the mean pool
    assert rows["vgg16"]["knn"].lstrip("*").startswith(f"{second_seed['metrics']['accuracy']['value']:.3f}")
    skipped = markdown.split("## Skipped or incomplete records", 1)[1]
    older = next(line for line in skipped.splitlines() if "vgg16__gap__knn__kfold4-seed0.json" in line)
    assert "vgg16__gap__knn__kfold4-seed1" in older and "newer record" in older


def test_report_cli_defaults_to_accuracy_and_prints_the_leaderboard_tables_and_path(study, tmp_path, capsys):
    """README: `medprobe report` prints the leaderboard, the per-image tables and the path of report.html;
    --metric defaults to accuracy."""
    out = tmp_path / "report"
    with pytest.raises(SystemExit) as info:
        main(["report", str(study), "--out", str(out), "--bootstrap", "100"])
    printed = capsys.readouterr().out
    assert info.value.code in (0, None)
    assert printed.startswith("Leaderboard: accuracy per image, each backbone's method chosen on validation")
    assert "blobs-labels: accuracy, per image" in printed and "balanced_accuracy, per image" not in printed
    assert str(out / "report.html") in printed.replace("\n", "")


def test_table_columns_put_probes_first_then_fine_tunes_from_frozen_to_unfrozen():
    """README: columns are logreg, svm, knn, then finetune-none, finetune-last-N (by N), finetune-all; the
    tables sort their methods by this order."""
    from medprobe.report.tables import method_order

    found = ["finetune-all", "knn", "finetune-last-10", "logreg", "finetune-none", "svm", "finetune-last-2", "mine"]
    assert sorted(found, key=method_order) == ["logreg", "svm", "knn", "mine", "finetune-none", "finetune-last-2",
                                               "finetune-last-10", "finetune-all"]


def test_report_html_is_written_last_so_its_presence_means_the_report_is_whole(study, tmp_path, monkeypatch):
    """README: report.html is written last (figures, tables, CSVs before it); a failure before it leaves none."""
    import medprobe.report as report_module

    written, real_write = [], report_module._atomic_write

    def recording(path, write):
        written.append(path.name)
        real_write(path, write)

    monkeypatch.setattr(report_module, "_atomic_write", recording)
    done = build_report(results_dirs=[study], out_dir=tmp_path / "whole", replicates=REPLICATES, latex=True)
    assert written == ["summary.csv", "comparisons.csv", "report.md", "report.tex", "report.html"]
    newest_other = max(p.stat().st_mtime_ns for p in (tmp_path / "whole").rglob("*") if p.is_file() and p != done.html)
    assert done.html.stat().st_mtime_ns >= newest_other  # the figures too
    monkeypatch.setattr(report_module.render, "render_html", lambda content: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        build_report(results_dirs=[study], out_dir=tmp_path / "broken", replicates=REPLICATES)
    assert not (tmp_path / "broken" / "report.html").exists()


def test_comparisons_csv_rows_are_the_tables_paired_tests_and_their_differences_the_records(report):
    """README: comparisons.csv has one row per paired test: the difference (other minus the column's best), its
    95% CI, the p value and the unit, as the report's comparisons computed them; at the image level the
    difference is the two records' own metric values apart (the same pooled test samples)."""
    from medprobe.report.render import bootstrap_digits

    tables = {(t.dataset, t.level, t.metric): t for t in [report.leaderboard, *report.tables] if t is not None}
    with report.comparisons_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    checked = 0
    for row in rows:
        table = tables[(row["dataset"], row["level"], row["metric"])]
        [cell] = [cell for r, cell in table.column(row["method"]) if r.label == row["model"]]
        c, tolerance = cell.comparison, 10.0 ** -bootstrap_digits(int(row["replicates"]))
        assert row["comparable"] == str(c.comparable) and row["unit"] == c.unit and row["note"] == c.reason
        if not c.comparable:
            continue
        difference, low, high, p = (float(row[k]) for k in ("difference", "difference_ci_low",
                                                            "difference_ci_high", "p_value"))
        assert abs(difference - c.difference) <= tolerance and abs(p - c.p_value) <= tolerance
        assert [abs(a - b) <= tolerance for a, b in zip((low, high), c.ci, strict=True)] == [True, True]
        assert low - tolerance <= difference <= high + tolerance and 0 <= p <= 1
        if row["level"] == "sample":
            values = [json.loads(Path(row[k]).read_text())["metrics"][row["metric"]]["value"]
                      for k in ("record", "best_record")]
            assert abs(difference - (values[0] - values[1])) <= tolerance, row
            checked += 1
    assert checked >= 5 and {row["unit"] for row in rows} == {"patient"}  # resampled by patient: grouped data


def test_a_backbone_that_was_only_fine_tuned_shows_its_total_parameter_count(study, tmp_path):
    """README: rows show the parameter count from the cache provenance; a backbone that was only fine-tuned
    (no cache read, no probe record) shows its fine-tune record's total parameter count."""
    from medprobe.report.render import format_parameters

    only = tmp_path / "finetuned-only"
    for path in study.rglob("*finetune-*"):
        if path.is_file():
            (only / path.relative_to(study)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, only / path.relative_to(study))
    totals = {json.loads(p.read_text())["cost"]["total_parameters"] for p in only.rglob("*.json")}
    done = build_report(results_dirs=[only], out_dir=tmp_path / "report", replicates=REPLICATES)
    [table] = [t for t in done.tables if t.level == "sample"]
    assert [row.model for row in table.rows] == ["tiny-cnn"] and set(table.methods) == {"finetune-none",
                                                                                        "finetune-all"}
    assert len(totals) == 1 and table.rows[0].backbone.parameters == totals.pop() > 0
    assert f"| {format_parameters(table.rows[0].backbone.parameters)} |" in done.markdown.read_text()


def test_a_single_fold_fine_tune_beside_k_fold_runs_is_marked_not_comparable(study, tmp_path):
    """README: k-fold runs pool their out-of-fold predictions, so they compare; a run on other test samples
    (`finetune --fold 0` against the 4-fold runs) is marked n/c."""
    from medprobe.finetune.runner import FinetuneSettings, finetune

    results = tmp_path / "results"
    shutil.copytree(study, results)
    other = save_tiny_timm(tmp_path / "tiny-cnn-b", "test_resnet", input_size=32)
    finetune(dataset=load_dataset(study.parent / "blobs" / "labels.csv"), model=str(other), out_dir=results,
             show_progress=False,
             settings=FinetuneSettings(unfreeze="all", epochs=1, batch_size=8, workers=0, bootstrap=REPLICATES,
                                       precision="fp32", device="cpu", folds=4, fold=0))
    done = build_report(results_dirs=[results], out_dir=tmp_path / "report", replicates=REPLICATES)
    [table] = [t for t in done.tables if t.level == "sample"]
    column = {row.model: cell for row, cell in table.column("finetune-all")}
    assert set(column) == {"tiny-cnn", "tiny-cnn-b"}
    compared = [cell.comparison for cell in column.values() if cell.comparison is not None]
    assert len(compared) == 1 and not compared[0].comparable and "different test samples" in compared[0].reason
    probes = [cell.comparison for _, cell in table.column("logreg") if cell.comparison is not None]
    assert probes and all(c.comparable for c in probes)  # k-fold against k-fold: the same pooled test samples
    assert "n/c" in [line for line in done.markdown.read_text().splitlines() if "tiny-cnn-b" in line][0]

"""The report's figures (PNG): grouped bars with CI whiskers, frozen vs unfrozen, score against parameters,
label-efficiency curves, and the confusion matrix and ROC curves of each dataset's best run.

matplotlib is imported here only, inside the functions, and always draws on an Agg canvas (no display,
no pyplot state), so the rest of the report loads fast and runs headless.
"""

from __future__ import annotations

import io
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medprobe.errors import MedprobeError
from medprobe.report.embedding import DEFAULT_PROJECTION, embedding_map, map_source, projection
from medprobe.report.records import Predictions, RunRecord
from medprobe.report.tables import Row, Table, is_frozen
from medprobe.results.metrics import CALIBRATION_BINS, binary_auroc, equal_mass_bins
from medprobe.results.record import safe_name

DPI = 110


@dataclass
class Figure:
    dataset: str | None  # None: spans datasets
    title: str
    caption: str
    path: Path
    png: bytes


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    figure = MplFigure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _colours(n: int) -> list:
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    return [palette(i % 10) for i in range(n)]


def _whiskers(values: list[float | None], cis: list[list[float] | None]) -> np.ndarray:
    """Asymmetric error bars (2, n) from CIs; zero length where a CI is missing."""
    low = [v - ci[0] if v is not None and ci else 0.0 for v, ci in zip(values, cis, strict=True)]
    high = [ci[1] - v if v is not None and ci else 0.0 for v, ci in zip(values, cis, strict=True)]
    return np.clip(np.array([low, high]), 0, None)


def _y_limits(axes, values: list[float]) -> None:
    low = min([0.0, *values])
    axes.set_ylim(low, max(1.0, *values) + 0.05 if values else 1.05)


def grouped_bars(tables: list[Table]) -> object:
    """One panel per level: backbones along x, one bar per method, CI whiskers."""
    methods = tables[0].methods
    rows = tables[0].rows
    figure = _new_figure(max(6.0, 1.2 + 0.35 * len(rows) * len(methods)), 3.6 * len(tables))
    panels = figure.subplots(len(tables), 1, squeeze=False)[:, 0]
    width = 0.8 / max(len(methods), 1)
    for axes, table in zip(panels, tables, strict=True):
        drawn = []
        for k, (method, colour) in enumerate(zip(methods, _colours(len(methods)), strict=True)):
            cells = [row.cells.get(method) for row in table.rows]
            values = [c.value if c else None for c in cells]
            cis = [c.ci if c else None for c in cells]
            x = np.arange(len(table.rows)) + (k - (len(methods) - 1) / 2) * width
            heights = [v if v is not None else np.nan for v in values]
            axes.bar(x, heights, width, yerr=_whiskers(values, cis), capsize=2, color=colour, label=method,
                     error_kw={"elinewidth": 0.8})
            drawn += [v for v in values if v is not None] + [ci[1] for ci in cis if ci]
        axes.set_xticks(np.arange(len(table.rows)), [row.label for row in table.rows], rotation=20, ha="right")
        axes.set_ylabel(table.metric)
        axes.set_title(table.title, fontsize=10)
        axes.grid(axis="y", alpha=0.3)
        _y_limits(axes, drawn)
    panels[0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: bars stay visible
    return figure


def _best_of(row: Row, frozen: bool):
    cells = [(m, c) for m, c in row.cells.items() if is_frozen(m) == frozen and c.value is not None]
    return max(cells, key=lambda item: item[1].value) if cells else None


def frozen_vs_unfrozen(table: Table) -> object | None:
    """Per backbone that was fine-tuned unfrozen: its best frozen method beside its best unfrozen one."""
    pairs = [(row, _best_of(row, True), _best_of(row, False)) for row in table.rows]
    pairs = [p for p in pairs if p[2] is not None]
    if not pairs:
        return None
    figure = _new_figure(max(5.0, 1.5 + 1.1 * len(pairs)), 3.8)
    axes = figure.subplots()
    drawn = []
    for k, (label, colour) in enumerate(zip(("frozen", "unfrozen"), _colours(2), strict=True)):
        chosen = [p[1 + k] for p in pairs]
        values = [c[1].value if c else None for c in chosen]
        cis = [c[1].ci if c else None for c in chosen]
        x = np.arange(len(pairs)) + (k - 0.5) * 0.38
        axes.bar(x, [v if v is not None else np.nan for v in values], 0.38, yerr=_whiskers(values, cis),
                 capsize=3, color=colour, label=f"best {label}")
        for xi, item in zip(x, chosen, strict=True):
            if item:  # the winning method, written up the inside of its bar, clear of the whiskers
                axes.text(xi, 0.03, item[0], transform=axes.get_xaxis_transform(), ha="center", va="bottom",
                          rotation=90, fontsize=7, color="white")
        drawn += [v for v in values if v is not None] + [ci[1] for ci in cis if ci]
    axes.set_xticks(np.arange(len(pairs)), [p[0].label for p in pairs], rotation=20, ha="right")
    axes.set_ylabel(table.metric)
    axes.set_title(f"{table.title}: frozen vs unfrozen", fontsize=10)
    axes.grid(axis="y", alpha=0.3)
    _y_limits(axes, drawn)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return figure


def score_vs_parameters(tables: list[Table]) -> object | None:
    """Best frozen and unfrozen score against backbone size, one panel per dataset: is a small model enough?"""
    panels = [t for t in tables if any(row.backbone.parameters for row in t.rows)]
    if not panels:
        return None
    columns = min(len(panels), 3)
    lines = -(-len(panels) // columns)
    figure = _new_figure(4.2 * columns, 3.4 * lines)
    grid = figure.subplots(lines, columns, squeeze=False).ravel()
    for axes in grid[len(panels):]:
        axes.set_visible(False)
    for axes, table in zip(grid, panels, strict=False):
        for frozen, marker, colour in ((True, "o", _colours(2)[0]), (False, "^", _colours(2)[1])):
            points = [(row.backbone.parameters / 1e6, best[1], row.label) for row in table.rows
                      if row.backbone.parameters and (best := _best_of(row, frozen))]
            if not points:
                continue
            x = [p[0] for p in points]
            values = [p[1].value for p in points]
            axes.errorbar(x, values, yerr=_whiskers(values, [p[1].ci for p in points]), fmt=marker, color=colour,
                          capsize=2, label="frozen (best method)" if frozen else "unfrozen (best)")
            for xi, value, (_, _, label) in zip(x, values, points, strict=True):
                axes.annotate(label, (xi, value), textcoords="offset points", xytext=(4, 3), fontsize=7)
        _log_x(axes)
        axes.set_xlabel("backbone parameters (millions, log scale)")
        axes.set_ylabel(table.metric)
        axes.set_title(table.dataset, fontsize=10)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7, loc="lower right")
    return figure


def _log_x(axes) -> None:
    """A log x axis labelled in plain numbers (matplotlib labels minor ticks over a narrow range, and they
    overlap)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axes.set_xscale("log")
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axes.xaxis.set_minor_formatter(NullFormatter())


def score_vs_cost(board: Table) -> object | None:
    """The leaderboard's headline score against what extraction costs: images/s and peak memory, one column
    per dataset. Up and right on the first row, up and left on the second, is better."""
    axes_of = (("images_per_second", "extraction images/s (log scale)"),
               ("peak_memory_mb", "extraction peak memory, MB (log scale)"))
    measured = [(name, title) for name, title in axes_of if any(getattr(r.backbone, name) for r in board.rows)]
    if not measured:
        return None
    figure = _new_figure(4.2 * len(board.methods), 3.3 * len(measured))
    grid = figure.subplots(len(measured), len(board.methods), squeeze=False)
    colours = dict(zip([row.label for row in board.rows], _colours(len(board.rows)), strict=True))
    for line, (name, title) in enumerate(measured):
        for column, dataset in enumerate(board.methods):
            axes = grid[line, column]
            for row, cell in board.column(dataset):
                cost = getattr(row.backbone, name)
                if not cost or cell.value is None:
                    continue
                axes.errorbar([cost], [cell.value], yerr=_whiskers([cell.value], [cell.ci]), fmt="o", capsize=2,
                              color=colours[row.label], markeredgecolor="black" if cell.best else None)
                axes.annotate(row.label, (cost, cell.value), textcoords="offset points", xytext=(4, 3), fontsize=7)
            _log_x(axes)
            axes.set_xlabel(title, fontsize=8)
            axes.set_ylabel(board.metric)
            axes.set_title(dataset, fontsize=10)
            axes.grid(alpha=0.3)
    return figure


def embedding_maps(dataset: str, maps: list) -> object:
    """One panel per backbone: the 2-D projection coloured by class; hollow markers: the run was wrong."""
    columns = min(len(maps), 3)
    lines = -(-len(maps) // columns)
    figure = _new_figure(3.6 * columns + 1.2, 3.3 * lines)
    grid = figure.subplots(lines, columns, squeeze=False).ravel()
    for axes in grid[len(maps):]:
        axes.set_visible(False)
    classes = maps[0].classes
    colours = _colours(len(classes))
    for axes, found in zip(grid, maps, strict=False):
        for k, (name, colour) in enumerate(zip(found.classes, colours, strict=False)):
            for wrong in (False, True):
                chosen = (found.y == k) & (found.wrong == wrong)
                axes.scatter(found.points[chosen, 0], found.points[chosen, 1], s=14, linewidths=0.9,
                             facecolors="none" if wrong else [colour], edgecolors=[colour],
                             label=None if wrong else name)
        axes.set_title(found.label, fontsize=9)
        axes.set_xticks([])
        axes.set_yticks([])
    grid[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0) if len(maps) == 1 else None)
    return figure


def label_efficiency(dataset: str, shot_records: list[RunRecord], full_records: list[RunRecord],
                     metric: str) -> object | None:
    """Metric against labelled samples (or patients) per class, one line per backbone x method, CI band;
    the full protocol (tuned hyperparameters, all labels) as an `all` point at the right."""
    curves: dict[tuple[str, str, str], list[RunRecord]] = defaultdict(list)
    for record in shot_records:
        if record.value(metric)[0] is not None:
            curves[(record.model, record.pool, record.method)].append(record)
    if not curves:
        return None
    budgets = sorted({r.shots for group in curves.values() for r in group})
    all_position = budgets[-1] * 2.5
    figure = _new_figure(6.4, 4.0)
    axes = figure.subplots()
    for (model, pool, method), colour in zip(sorted(curves), _colours(len(curves)), strict=True):
        points = sorted(curves[(model, pool, method)], key=lambda r: r.shots)
        x = [r.shots for r in points]
        values = [r.value(metric)[0] for r in points]
        cis = [r.value(metric)[1] for r in points]
        axes.plot(x, values, "o-", color=colour, label=f"{model} {method}", markersize=4)
        if all(cis):
            axes.fill_between(x, [c[0] for c in cis], [c[1] for c in cis], color=colour, alpha=0.15, linewidth=0)
        full = [r for r in full_records if (r.model, r.pool, r.method) == (model, pool, method)
                and r.value(metric)[0] is not None]
        if full:
            newest = max(full, key=lambda r: (r.created_at, r.name))
            value, ci = newest.value(metric)
            axes.errorbar([all_position], [value], yerr=_whiskers([value], [ci]), fmt="s", color=colour,
                          capsize=2, markersize=4)
            axes.plot([x[-1], all_position], [values[-1], value], ":", color=colour, linewidth=0.8)
    ticks = [*budgets, all_position]
    axes.set_xscale("log", base=2)
    axes.set_xticks(ticks, [*(str(b) for b in budgets), "all"])
    axes.minorticks_off()
    axes.set_xlabel("labelled training samples per class (patients when grouped)")
    axes.set_ylabel(f"{metric} (mean over draws)")
    axes.set_title(f"{dataset}: label efficiency", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="lower right")
    return figure


def confusion_matrix(record: RunRecord) -> object | None:
    block = record.confusion
    if block is None or not block.labels or not block.matrix:
        return None
    labels, matrix = block.labels, block.matrix
    counts = np.asarray(matrix, dtype=float)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)  # colour by recall, so rare classes show
    size = 1.6 + 0.55 * len(labels)
    figure = _new_figure(size + 1.2, size)
    axes = figure.subplots()
    image = axes.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(counts):
        axes.text(j, i, f"{int(count)}", ha="center", va="center", fontsize=8,
                  color="white" if share[i, j] > 0.6 else "black")
    axes.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(f"{record.model} {record.method}", fontsize=9)
    figure.colorbar(image, ax=axes, label="share of the true class", shrink=0.8)
    return figure


def roc_curves(record: RunRecord, predictions: Predictions) -> object:
    """Binary: the positive (second) class, as the records' AUROC; more classes: one-vs-rest per class."""
    from sklearn.metrics import roc_curve

    classes = predictions.classes
    targets = [1] if len(classes) == 2 else list(range(len(classes)))
    figure = _new_figure(4.6, 4.2)
    axes = figure.subplots()
    ones = np.ones((1, len(predictions.y)))
    for k, colour in zip(targets, _colours(len(targets)), strict=True):
        positive = predictions.y == k
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = roc_curve(positive, predictions.scores[:, k])
        area = binary_auroc(predictions.scores[:, k], positive, ones)[0]
        axes.plot(fpr, tpr, color=colour, label=f"{classes[k]} (AUROC {area:.3f})")
    axes.plot([0, 1], [0, 1], ":", color="grey", linewidth=0.8)
    _finish_unit_square(axes, record, "false positive rate", "true positive rate")
    return figure


def _finish_unit_square(axes, record: RunRecord, xlabel: str, ylabel: str) -> None:
    """Labels, equal aspect, the run as title, the legend: ROC curves and reliability diagrams alike."""
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_aspect("equal")
    axes.set_title(f"{record.model} {record.method}", fontsize=9)
    axes.legend(fontsize=7, loc="lower right")


def reliability_diagram(record: RunRecord, predictions: Predictions) -> object:
    """Accuracy against top-class confidence in the records' own equal-mass bins, with the record's ECE."""
    confidence = predictions.scores.max(axis=1)
    correct = predictions.scores.argmax(axis=1) == predictions.y
    bin_of = equal_mass_bins(confidence)
    bins = np.unique(bin_of)
    mean_confidence = np.array([confidence[bin_of == b].mean() for b in bins])
    accuracy = np.array([correct[bin_of == b].mean() for b in bins])
    figure = _new_figure(4.6, 4.2)
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], ":", color="grey", linewidth=0.8, label="perfectly calibrated")
    axes.plot(mean_confidence, accuracy, "o-", color=_colours(1)[0], markersize=4,
              label=f"{len(bins)} equal-mass bins")
    ece = record.metrics.get("ece")
    if ece is not None and ece.value is not None:
        interval = f" [{ece.ci[0]:.3f}, {ece.ci[1]:.3f}]" if ece.ci else ""
        axes.text(0.04, 0.92, f"ECE {ece.value:.3f}{interval}", transform=axes.transAxes, fontsize=8)
    axes.set_xlim(0, 1.02)
    axes.set_ylim(0, 1.02)
    _finish_unit_square(axes, record, "confidence (top-class probability)", "accuracy")
    return figure


def subgroup_forest(record: RunRecord, metric: str) -> object | None:
    """The run's `metric` per subgroup with its CI, one panel per subgroup column; None with nothing scored."""
    columns = {column: [g for g in block.groups if not g.too_small and
                        g.metrics.get(metric) is not None and g.metrics[metric].value is not None]
               for column, block in record.subgroups.columns.items()}
    columns = {column: groups for column, groups in columns.items() if groups}
    if not columns:
        return None
    height = 1.0 + 0.32 * sum(len(groups) for groups in columns.values())
    figure = _new_figure(5.6, max(2.4, height))
    panels = figure.subplots(len(columns), 1, sharex=True, squeeze=False)[:, 0]
    for axes, (column, groups) in zip(panels, columns.items(), strict=True):
        values = [g.metrics[metric].value for g in groups]
        cis = [g.metrics[metric].ci for g in groups]
        positions = np.arange(len(groups))[::-1]
        axes.errorbar(values, positions, xerr=_whiskers(values, cis), fmt="o", color=_colours(1)[0], capsize=3,
                      markersize=4)
        axes.set_yticks(positions, [f"{g.value} (n={g.samples})" for g in groups], fontsize=8)
        axes.set_ylim(-0.7, len(groups) - 0.3)
        axes.set_title(column, fontsize=9, loc="left")
        axes.grid(axis="x", linewidth=0.4, alpha=0.5)
    panels[-1].set_xlabel(metric)
    figure.suptitle(f"{record.model}, {record.method}", fontsize=9)
    return figure


def _finding_auroc(record: RunRecord, finding: str) -> float:
    entry = record.per_finding.get(finding)
    return np.nan if entry is None or entry.auroc.value is None else entry.auroc.value


def finding_heatmap(dataset: str, runs: list[RunRecord]) -> object:
    """Findings (rows) x runs (columns) of a multi-label dataset, coloured and labelled by test AUROC."""
    findings = list(dict.fromkeys(f for r in runs for f in r.findings))
    values = np.array([[_finding_auroc(r, f) for r in runs] for f in findings], dtype=float)
    figure = _new_figure(1.6 + 1.1 * len(runs), 1.2 + 0.36 * len(findings))
    axes = figure.subplots()
    image = axes.imshow(values, cmap="viridis", vmin=0.5, vmax=1.0, aspect="auto")
    for (i, j), value in np.ndenumerate(values):
        if np.isfinite(value):
            axes.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                      color="white" if value < 0.8 else "black")
    axes.set_xticks(range(len(runs)), [f"{r.model}\n{r.method}" for r in runs], fontsize=7)
    axes.set_yticks(range(len(findings)), findings, fontsize=8)
    figure.colorbar(image, ax=axes, label="AUROC", shrink=0.8)
    axes.set_title(dataset, fontsize=9)
    return figure


def draw_all(tables: list[Table], board: Table | None, records: list[RunRecord], out_dir: Path, metric: str,
             predictions_of, embedding: str = DEFAULT_PROJECTION, seed: int = 0) -> tuple[list[Figure], list[str]]:
    """Every figure that the records allow, written as PNG under out_dir; and a note per figure that could
    not be drawn and why."""
    chosen_projection = projection(embedding)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures, notes = [], []

    def keep(figure, dataset: str | None, stem: str, title: str, caption: str) -> None:
        png = _png(figure)
        path = out_dir / f"{safe_name(stem)}.png"
        path.write_bytes(png)
        figures.append(Figure(dataset, title, caption, path, png))

    datasets = list(dict.fromkeys(t.dataset for t in tables))
    for dataset in datasets:
        levels = [t for t in tables if t.dataset == dataset]
        sample = levels[0]
        keep(grouped_bars(levels), dataset, f"{dataset}__bars", f"{dataset}: {metric} by backbone and method",
             "Bars: value on all test samples; whiskers: 95% bootstrap CI.")
        figure = frozen_vs_unfrozen(sample)
        if figure is None:
            notes.append(f"{dataset}: no frozen-vs-unfrozen figure (no unfrozen fine-tuning record; "
                         "run `medprobe finetune --unfreeze all`)")
        else:
            keep(figure, dataset, f"{dataset}__frozen-vs-unfrozen", f"{dataset}: frozen vs unfrozen",
                 "Best frozen method (probes, head-only fine-tuning) beside the best unfrozen fine-tuning, "
                 "per backbone; the method is written on each bar.")
        shots = [r for r in records if r.dataset == dataset and r.shots is not None]
        if shots:
            full = [r for r in records if r.dataset == dataset and r.shots is None]
            figure = label_efficiency(dataset, shots, full, metric)
            if figure is not None:
                keep(figure, dataset, f"{dataset}__label-efficiency", f"{dataset}: label efficiency",
                     "Mean over draws with its 95% bootstrap CI (band); `all`: the full protocol with tuned "
                     "hyperparameters.")
        maps, missing = [], []
        for row in sample.rows:
            record = map_source([cell.record for cell in row.cells.values()])
            predictions = predictions_of(record) if record else None
            if not isinstance(predictions, Predictions):
                continue
            try:
                maps.append(embedding_map(row.label, record, predictions, chosen_projection, seed))
            except MedprobeError as exc:
                missing.append(f"{row.label}: {exc}")
        if maps:
            keep(embedding_maps(dataset, maps), dataset, f"{dataset}__embedding-{embedding}",
                 f"{dataset}: embedding map ({chosen_projection.name.upper()} of the cached features)",
                 "Each test sample of the backbone's best-on-validation probe, placed by a 2-D projection of its "
                 "frozen features and coloured by its true class; hollow: that probe got it wrong. Separated "
                 "colours: the classes are apart before any probe is fitted. Features: " +
                 "; ".join(f"{m.label}: {m.source}" for m in maps) + ".")
        notes += [f"{dataset}: no embedding map for {why}" for why in missing]
        best = sample.best_cell()
        if best is None:
            continue
        record = best[1].record
        figure = confusion_matrix(record)
        if figure is not None:
            keep(figure, dataset, f"{dataset}__confusion", f"{dataset}: confusion matrix of the best run "
                 f"({record.model}, {record.method})", "Counts; colour: share of the true class (recall).")
        predictions = predictions_of(record)
        if isinstance(predictions, Predictions):
            keep(roc_curves(record, predictions), dataset, f"{dataset}__roc",
                 f"{dataset}: ROC curves of the best run ({record.model}, {record.method})",
                 "From the test predictions; binary: the second class is positive; else one-vs-rest.")
        else:
            notes.append(f"{dataset}: no ROC curves ({record.name} has no readable predictions CSV)")
        with_subgroups = [cell.record for row in sample.rows for cell in row.cells.values() if cell.record.subgroups]
        if with_subgroups:
            record = record if record.subgroups else with_subgroups[0]
            figure = subgroup_forest(record, metric)
            if figure is not None:
                which = "best run" if record is best[1].record else "first run with subgroups"
                keep(figure, dataset, f"{dataset}__subgroups", f"{dataset}: {metric} by subgroup of the {which} "
                     f"({record.model}, {record.method})", "Each group's test predictions scored alone; whiskers: "
                     "95% bootstrap CI within the group. Groups under the record's minimum size are left out.")
        calibrated = sample.best_cell(probabilities=True)
        predictions = predictions_of(calibrated[1].record) if calibrated else None
        if isinstance(predictions, Predictions):
            record = calibrated[1].record
            which = "best run" if calibrated[1] is best[1] else "best run with probabilities"
            keep(reliability_diagram(record, predictions), dataset, f"{dataset}__reliability",
                 f"{dataset}: reliability of the {which} ({record.model}, {record.method})",
                 f"Test accuracy against mean top-class confidence in {CALIBRATION_BINS} equal-mass bins (the "
                 "record's ECE bins); "
                 "on the diagonal a confidence of p is right a fraction p of the time. SVM and kNN scores are "
                 "not probabilities and are not drawn.")
        else:
            notes.append(f"{dataset}: no reliability diagram (no run with probabilities and a readable "
                         "predictions CSV; logreg and fine-tuning have them)")
    multilabel = [r for r in records if r.multilabel]
    for dataset in dict.fromkeys(r.dataset for r in multilabel):
        runs = sorted((r for r in multilabel if r.dataset == dataset), key=lambda r: (r.model, r.method))
        keep(finding_heatmap(dataset, runs), dataset, f"{dataset}__findings", f"{dataset}: AUROC per finding",
             "Test AUROC of each finding's probe (rows) for each backbone and classifier (columns), from the "
             "pooled k-fold test predictions; the colour scale runs from chance (0.5) to 1.")
    figure = score_vs_cost(board) if board is not None else None
    if figure is not None:
        keep(figure, None, "score-vs-extraction-cost", f"{metric} against extraction cost",
             "The leaderboard's headline score per backbone against its extraction images/s and peak memory "
             "(as recorded in the cache; the device is in the leaderboard); black edge: the best per dataset; "
             "whiskers: 95% CI.")
    figure = score_vs_parameters([t for t in tables if t.level == "sample"])
    if figure is None:
        notes.append("no score-vs-parameters figure (no record knows its backbone's parameter count)")
    else:
        keep(figure, None, "score-vs-parameters", f"{metric} against backbone parameters",
             "Best frozen (circles) and unfrozen (triangles) score per backbone; whiskers: 95% CI.")
    return figures, notes

"""The report's cohort sections: internal against external test results side by side (`--test`), each
run's metrics per subgroup (`--subgroups`) with the worst group and the largest gap, and the per-finding
results of multi-label datasets. Plain text tables that every format renders alike."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medprobe.errors import MedprobeError
from medprobe.report.records import FindingPredictions, RunRecord, read_finding_predictions
from medprobe.report.stats import format_p, two_sided_p
from medprobe.report.tables import method_order
from medprobe.results.metrics import CALIBRATION_BINS, bootstrap_weights, group_codes
from medprobe.results.multilabel import multilabel_metrics
from medprobe.results.schema import MetricValue


@dataclass
class TextTable:
    dataset: str
    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str
    headline: bool = False  # printed on the console beside the per-dataset tables (a multi-label dataset's own)


def _value_text(entry: MetricValue | None) -> str:
    if entry is None or entry.value is None:
        return "—"
    if entry.ci:
        return f"{entry.value:.3f} [{entry.ci[0]:.3f}, {entry.ci[1]:.3f}]"
    return f"{entry.value:.3f}"


def _newest(records: list[RunRecord]) -> list[RunRecord]:
    """One record per dataset, backbone, pool, method and protocol: the newest (as the comparison tables
    choose). Two datasets' records may share a file name (e.g. two manifests over one image folder)."""
    chosen: dict[tuple, RunRecord] = {}
    for record in sorted(records, key=lambda r: (r.created_at, r.name)):
        chosen[(record.dataset, record.model, record.pool, record.method, record.name.rsplit("-seed", 1)[0])] = record
    return sorted(chosen.values(), key=lambda r: (r.model, method_order(r.method), r.external is not None, r.name))


def _protocol_text(record: RunRecord) -> str:
    """"kfold5", or "external: <cohort>" for a --test record."""
    if record.external is None:
        return record.protocol
    return f"external: {record.external.dataset.name}"


def external_tables(records: list[RunRecord], metric: str) -> list[TextTable]:
    """Per dataset with external records: each run's internal estimate beside its external test."""
    tables = []
    for dataset in dict.fromkeys(r.dataset for r in records if r.external is not None):
        mine = [r for r in records if r.dataset == dataset]
        by_file = {r.path.name: r for r in mine}
        rows = []
        for record in _newest([r for r in mine if r.external is not None]):
            internal = by_file.get(record.external.internal_record)
            inside = internal.metrics.get(metric) if internal else None
            outside = record.metrics.get(metric)
            change = f"{outside.value - inside.value:+.3f}" if inside and outside and None not in (
                inside.value, outside.value) else "—"
            rows.append([record.model, record.method, str(record.external.dataset.name),
                         _value_text(inside) if internal else "— (no record)", _value_text(outside), change])
        tables.append(TextTable(dataset, f"{dataset}: internal vs external test ({metric})",
                                ["backbone", "method", "external cohort", "internal (k-fold test)", "external",
                                 "change"], rows,
                                "Internal: the pooled k-fold test predictions on DATA. External: one model tuned and "
                                "refit on all of DATA, scored on every sample of the other cohort. 95% bootstrap "
                                "CIs."))
    return tables


def subgroup_tables(records: list[RunRecord], metric: str) -> list[TextTable]:
    """Per dataset and subgroup column: every run with --subgroups, the metric per group, the worst group and
    the largest gap."""
    tables = []
    with_subgroups = _newest([r for r in records if r.subgroups])
    for dataset in dict.fromkeys(r.dataset for r in with_subgroups):
        mine = [r for r in with_subgroups if r.dataset == dataset]
        columns = list(dict.fromkeys(c for r in mine for c in r.subgroups.columns))
        for column in columns:
            runs = [r for r in mine if column in r.subgroups.columns]
            values = list(dict.fromkeys(g.value for r in runs for g in r.subgroups.columns[column].groups))
            rows = []
            for record in runs:
                block = record.subgroups.columns[column]
                groups = {g.value: g for g in block.groups}
                cells = []
                for value in values:
                    group = groups.get(value)
                    if group is None:
                        cells.append("")
                    elif group.too_small:
                        cells.append(f"too small (n={group.samples})")
                    else:
                        cells.append(f"{_value_text(group.metrics.get(metric))} (n={group.samples})")
                worst = block.worst.get(metric)
                gap = block.largest_gap.get(metric)
                rows.append([record.model, record.method, _protocol_text(record), *cells,
                             f"{worst.group}: {worst.value:.3f}" if worst else "—",
                             f"{gap:.3f}" if gap is not None else "—"])
            minimum = mine[0].subgroups.min_samples
            tables.append(TextTable(dataset, f"{dataset}: {metric} by {column}",
                                    ["backbone", "method", "protocol", *values, "worst group", "largest gap"], rows,
                                    f"Each group's test predictions scored alone, 95% bootstrap CI within the group; "
                                    f"groups under {minimum} test samples are not scored. Worst: the lowest value "
                                    "(the highest for ECE, Brier, NLL); gap: highest minus lowest, without a CI."))
    return tables


CALIBRATION_COLUMNS = (("ECE", "ece"), ("Brier", "brier"), ("NLL", "nll"))


def calibration_tables(records: list[RunRecord]) -> list[TextTable]:
    """Per dataset: every run whose scores are probabilities, its ECE, Brier and NLL as scored, and with
    --calibrate the same after the calibrator and its fitted parameter per fold; runs whose scores are not
    probabilities are named as such, not scored."""
    tables = []
    scored = _newest([r for r in records if r.calibration is not None])
    for dataset in dict.fromkeys(r.dataset for r in scored):
        runs = [r for r in scored if r.dataset == dataset]
        if not any(r.probabilities for r in runs):
            continue
        rows = []
        for record in runs:
            head = [record.model, record.method, _protocol_text(record)]
            if not record.probabilities:
                rows.append([*head, "not probabilities", "", "", "", "", "", ""])
                continue
            calibrated = record.calibrated
            after = calibrated.metrics if calibrated and calibrated.applied and calibrated.metrics else {}
            parameters = [p.get("temperature") for p in (calibrated.per_fold or [])] if after else []
            temperature = ", ".join(f"{t:.2f}" for t in parameters if isinstance(t, (int, float)))
            rows.append([*head, *(_value_text(record.metrics.get(m)) for _, m in CALIBRATION_COLUMNS),
                         *(_value_text(after.get(m)) if after else "—" for _, m in CALIBRATION_COLUMNS),
                         temperature or (f"not applied: {calibrated.why}" if calibrated and calibrated.why else "—")])
        tables.append(TextTable(dataset, f"{dataset}: calibration",
                                ["backbone", "method", "protocol", *(name for name, _ in CALIBRATION_COLUMNS),
                                 *(f"{name} calibrated" for name, _ in CALIBRATION_COLUMNS),
                                 "temperature per fold (and finding)"],
                                rows,
                                "As scored, and after --calibrate (fitted on each fold's validation part only, "
                                "applied to its test part; predictions unchanged). ECE over "
                                f"{CALIBRATION_BINS} equal-mass bins of the top-class confidence; lower is better "
                                "for all three. 95% bootstrap CIs. SVM and kNN scores are not probabilities and are "
                                "not scored."))
    return tables


MULTILABEL_SUMMARY = (("macro AUROC", "macro_auroc"), ("micro AUROC", "micro_auroc"),
                      ("mAP", "mean_average_precision"), ("macro F1", "macro_f1"))


def paired_macro_auroc(runs: list[RunRecord], replicates: int, seed: int) -> list[str]:
    """Per run: "best" for the highest macro AUROC, else the two-sided paired-bootstrap p of its difference
    from it (both scored on the same resamples, patients drawn when grouped), or n/c and why."""
    loaded = []
    for record in runs:
        try:
            loaded.append(read_finding_predictions(record))
        except MedprobeError:
            loaded.append(None)
    values = [(r.metrics.get("macro_auroc") or MetricValue(None)).value for r in runs]
    scored = [i for i, v in enumerate(values) if v is not None and loaded[i] is not None]
    if not scored:
        return ["n/c"] * len(runs)
    reference = max(scored, key=lambda i: values[i])
    best = loaded[reference]
    clusters = group_codes(best.groups)
    weights = list(bootstrap_weights(len(best.ids), replicates, seed, clusters))

    def distribution(p: FindingPredictions) -> np.ndarray:
        return np.concatenate([multilabel_metrics(p.truth, p.scores, p.thresholds, w)["macro_auroc"] for w in weights])

    reference_distribution = distribution(best)
    cells = []
    for i, predictions in enumerate(loaded):
        if i == reference:
            cells.append("best")
        elif predictions is None or values[i] is None:
            cells.append("n/c (no predictions)")
        elif set(predictions.ids) != set(best.ids) or len(predictions.ids) != len(best.ids) or \
                predictions.findings != best.findings:
            cells.append("n/c (other test samples or findings)")
        else:
            order = {sample: k for k, sample in enumerate(predictions.ids)}
            rows = np.array([order[sample] for sample in best.ids])
            aligned = FindingPredictions(best.ids, best.groups, predictions.truth[rows], predictions.scores[rows],
                                         predictions.thresholds[rows], predictions.findings)
            differences = distribution(aligned) - reference_distribution
            differences = differences[np.isfinite(differences)]
            cells.append(format_p(two_sided_p(differences)) if differences.size else "n/c")
    return cells


def finding_tables(records: list[RunRecord], replicates: int, seed: int) -> list[TextTable]:
    """Per multi-label dataset: findings (rows) x runs (columns), AUROC with its CI, then the summary metrics
    and each run's paired test against the best macro AUROC."""
    tables = []
    multilabel = _newest([r for r in records if r.multilabel])
    for dataset in dict.fromkeys(r.dataset for r in multilabel):
        runs = [r for r in multilabel if r.dataset == dataset]
        findings = list(dict.fromkeys(f for r in runs for f in r.findings))
        rows = []
        for finding in findings:
            counts = (runs[0].data.get("finding_counts") or {}).get(finding, {})
            rows.append([finding, str(counts.get("positives", "?")),
                         *(_value_text(r.per_finding[finding].auroc if finding in r.per_finding else None)
                           for r in runs)])
        for label, metric in MULTILABEL_SUMMARY:
            rows.append([label, "", *(_value_text(r.metrics.get(metric)) for r in runs)])
        rows.append(["paired test vs best macro AUROC", "", *paired_macro_auroc(runs, replicates, seed)])
        tables.append(TextTable(dataset, f"{dataset}: AUROC per finding (multi-label)",
                                ["finding", "positives", *(f"{r.model} {r.method}" for r in runs)], rows,
                                "One binary probe per finding, hyperparameters and an F1-maximising threshold "
                                "chosen on that finding's validation labels; unknown labels left out. 95% "
                                "bootstrap CIs (patients resampled when grouped). F1 uses the validated "
                                "thresholds; per-finding AP and F1 are in the records. The paired test scores both "
                                "runs' macro AUROC on the same resamples of the shared test images (the report's "
                                "--bootstrap and --seed).", headline=True))
    return tables

"""Subgroup analysis (`--subgroups sex,site,age_group`): every metric of a run recomputed on the test
predictions of each value of a manifest column, with its own bootstrap CI (patients resampled within the
group), the worst group per metric and the largest gap between groups. Groups under a minimum size are
listed as too small instead of scored: a 95% CI on eight samples is noise presented as evidence."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medprobe.data.samples import Dataset, natural_key
from medprobe.errors import MedprobeError
from medprobe.results.metrics import CALIBRATION_METRICS, PROBABILITIES, evaluate, group_codes, summarize_metrics
from medprobe.results.multilabel import multilabel_report
from medprobe.results.schema import SubgroupColumn, SubgroupGroup, Subgroups, WorstGroup

LOWER_IS_BETTER = frozenset(CALIBRATION_METRICS)  # for these the worst group is the highest
BLANK = "(blank)"  # the group of samples whose cell in the column is empty
CSV_PREFIX = "subgroup_"  # a predictions CSV column per subgroup column: subgroup_sex


def check_subgroup_columns(dataset: Dataset, columns: Sequence[str], min_samples: int,
                           option: str = "--subgroups") -> None:
    """Every requested column exists in the dataset's manifest; else one error naming what is there."""
    if min_samples < 1:
        raise MedprobeError(f"--subgroup-min {min_samples} must be at least 1 (groups smaller are not scored)")
    available = dataset.attribute_columns
    missing = [column for column in columns if column not in available]
    if missing:
        offer = f"its other columns are: {', '.join(available)}" if available else (
            "it has no columns beyond path/label/group/split")
        raise MedprobeError(f"{option} {','.join(columns)}: {dataset.source} has no column {', '.join(missing)}; "
                            f"{offer} (add the column to the manifest, or drop it from {option})")


def subgroup_values(dataset: Dataset, positions: np.ndarray, column: str) -> list[str]:
    """The column's value for each sample at `positions` (BLANK where the cell is empty)."""
    return [dataset.samples[i].attribute(column) or BLANK for i in positions]


def _worst_and_gap(scored: list[SubgroupGroup]) -> tuple[dict, dict]:
    worst, gap = {}, {}
    for metric in scored[0].metrics if scored else ():
        values = [(group.metrics[metric].value, group.value) for group in scored
                  if group.metrics[metric].value is not None]
        if not values:
            continue
        pick = max if metric in LOWER_IS_BETTER else min
        value, group = pick(values, key=lambda pair: pair[0])
        worst[metric] = WorstGroup(group, value)
        if len(values) > 1:
            gap[metric] = max(v for v, _ in values) - min(v for v, _ in values)
    return worst, gap


def _subgroups(values_by_column: dict[str, list[str]], groups: list[str | None], min_samples: int,
               score_group) -> Subgroups:
    """Per column and value: counts, and `score_group(members, patient codes)` -> (metrics, per-class recall or
    None) for groups of at least `min_samples`; then the worst group and largest gap per metric."""
    columns = {}
    for column, values in values_by_column.items():
        values = np.asarray(values, dtype=object)
        entries = []
        for value in sorted(set(values.tolist()), key=natural_key):
            members = np.flatnonzero(values == value)
            codes = group_codes([groups[i] for i in members])
            entry = SubgroupGroup(value, int(len(members)), int(len(members) if codes is None else codes.max() + 1))
            if len(members) >= min_samples:
                entry.metrics, entry.per_class_recall = score_group(members, codes)
            entries.append(entry)
        worst, gap = _worst_and_gap([entry for entry in entries if not entry.too_small])
        columns[column] = SubgroupColumn(entries, worst, gap)
    return Subgroups(min_samples, columns)


def subgroup_report(y: np.ndarray, scores: np.ndarray, values_by_column: dict[str, list[str]],
                    groups: list[str | None], classes: list[str], *, ordinal: bool, replicates: int, seed: int,
                    scores_are: str, min_samples: int) -> Subgroups:
    """A record's `subgroups`: per column, each value's sample and patient counts and metrics with CIs (or
    too_small), the worst group per metric and the largest gap (max - min over the scored groups)."""
    calibration = scores_are == PROBABILITIES

    def score_group(members: np.ndarray, codes: np.ndarray | None):
        point, distributions = evaluate(y[members], scores[members], ordinal=ordinal, replicates=replicates,
                                        seed=seed, clusters=codes, calibration=calibration)
        return summarize_metrics(point, distributions, classes)

    return _subgroups(values_by_column, groups, min_samples, score_group)


def run_subgroups(dataset: Dataset, positions: np.ndarray, scores: np.ndarray, *, columns: Sequence[str],
                  min_samples: int, ordinal: bool, replicates: int, seed: int, scores_are: str) -> Subgroups:
    """subgroup_report for the test samples of `dataset` at `positions` (in the order of `scores`' rows)."""
    y = dataset.targets()[positions]
    groups = [dataset.samples[i].group for i in positions]
    values = {column: subgroup_values(dataset, positions, column) for column in columns}
    return subgroup_report(y, scores, values, groups, dataset.classes, ordinal=ordinal, replicates=replicates,
                           seed=seed, scores_are=scores_are, min_samples=min_samples)


def run_multilabel_subgroups(dataset: Dataset, positions: np.ndarray, scores: np.ndarray, thresholds: np.ndarray, *,
                             columns: Sequence[str], min_samples: int, replicates: int, seed: int,
                             probabilities: bool) -> Subgroups:
    """The multi-label summary metrics (macro and micro AUROC, mAP, macro F1 at the validated thresholds; mean
    ECE, Brier and NLL with `probabilities`) per subgroup of the test images of `dataset` at `positions`."""
    Y = dataset.finding_matrix()[positions]
    groups = [dataset.samples[i].group for i in positions]

    def score_group(members: np.ndarray, codes: np.ndarray | None):
        report = multilabel_report(Y[members], scores[members], thresholds[members], list(dataset.findings),
                                   replicates=replicates, seed=seed, clusters=codes, calibration=probabilities)
        return report["metrics"], None

    values = {column: subgroup_values(dataset, positions, column) for column in columns}
    return _subgroups(values, groups, min_samples, score_group)

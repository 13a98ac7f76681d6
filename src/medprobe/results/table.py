"""The compact console table of run records (model x method, main metrics with their CIs)."""

from __future__ import annotations

from rich.table import Table

from medprobe.results.multilabel import SUMMARY_METRICS as MULTILABEL_TABLE_METRICS
from medprobe.results.schema import MULTILABEL

TABLE_METRICS = ("accuracy", "balanced_accuracy", "f1_weighted", "auroc")


def metric_cell(metrics: dict, name: str) -> str:
    entry = metrics.get(name) or {}
    value, ci = entry.get("value"), entry.get("ci")
    if value is None:
        return "-"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"


def records_table(records: list[dict]) -> Table:
    """One row per record (and per patient below it); multi-label runs show their summary metrics."""
    multilabel = bool(records) and all(record.get("task") == MULTILABEL for record in records)
    columns = MULTILABEL_TABLE_METRICS if multilabel else TABLE_METRICS
    table = Table("model", "pool", "method", "protocol", *columns, title="test metrics, 95% bootstrap CI")
    for record in records:
        table.add_row(record["model"], record["pool"], record["method"], record["protocol"],
                      *(metric_cell(record["metrics"], c) for c in columns))
        if record.get("patient_metrics"):
            patient = record["patient_metrics"]["metrics"]
            table.add_row("", "", "", "per patient", *(metric_cell(patient, c) for c in columns))
    return table

"""The compact console table of run records (model x method, main metrics with their CIs)."""

from __future__ import annotations

from rich.table import Table

TABLE_METRICS = ("accuracy", "balanced_accuracy", "f1_weighted", "auroc")


def metric_cell(metrics: dict, name: str) -> str:
    entry = metrics.get(name) or {}
    value, ci = entry.get("value"), entry.get("ci")
    if value is None:
        return "-"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"


def records_table(records: list[dict]) -> Table:
    table = Table("model", "pool", "method", "protocol", *TABLE_METRICS, title="test metrics, 95% bootstrap CI")
    for record in records:
        table.add_row(record["model"], record["pool"], record["method"], record["protocol"],
                      *(metric_cell(record["metrics"], c) for c in TABLE_METRICS))
        if record.get("patient_metrics"):
            patient = record["patient_metrics"]["metrics"]
            table.add_row("", "", "", "per patient", *(metric_cell(patient, c) for c in TABLE_METRICS))
    return table

"""The overlays `medprobe explain` left beside a record, as report figures (copied under figures/explain/ so
report.md's links and report.html's data: URIs both work). Reads PNG and JSON only."""

from __future__ import annotations

import json
from pathlib import Path

from medprobe.report.figures import Figure
from medprobe.report.records import RunRecord
from medprobe.results.record import EXPLAIN_INDEX, explanation_dir, safe_name


def explanation_figures(records: list[RunRecord], out_dir: Path) -> tuple[list[Figure], list[str]]:
    figures, notes = [], []
    for record in records:
        index = explanation_dir(record.path) / EXPLAIN_INDEX
        if not index.is_file():
            continue
        try:
            payload = json.loads(index.read_text())
            samples = payload["samples"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            notes.append(f"{record.dataset}: explanations of {record.name} unreadable ({exc}); run `medprobe explain` "
                         "again")
            continue
        for sample in samples:
            source = index.parent / str(sample.get("png"))
            if not source.is_file():
                notes.append(f"{record.dataset}: overlay {source} is missing; run `medprobe explain` again")
                continue
            png = source.read_bytes()
            path = out_dir / safe_name(record.path.stem) / source.name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png)
            verdict = "correct" if sample.get("correct") else "wrong"
            figures.append(Figure(
                record.dataset, f"{sample.get('id')}: {sample.get('label')}, predicted {sample.get('prediction')} "
                f"({verdict}, {float(sample.get('confidence') or 0):.2f})",
                f"{record.model} {record.method} ({record.pool}): left the image as the backbone saw it, right the "
                f"evidence for the predicted class over the {payload.get('map', 'positions')} (bright: most), "
                "from the fold's probe that never trained on this image.", path, png))
    return figures, notes

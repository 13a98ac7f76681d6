"""Multi-label manifests: zero or more findings per image, as chest X-ray sets have them.

Two forms: a `labels` column holding the findings joined by `|` (empty: no finding), or a dataset spec's
`labels = ["atelectasis", "effusion"]` naming 0/1 columns, where a blank cell is unknown (left out of that
finding's fits and metrics) and a `-1` (CheXpert's "uncertain") follows `uncertain = "ignore" | "zero" |
"one"` (ignore: unknown)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from medprobe.errors import MedprobeError

LABELS_COLUMN = "labels"
SEPARATOR = "|"
NO_FINDING = "(no finding)"  # the label text of an image with no finding
UNCERTAIN = {"ignore": math.nan, "zero": 0.0, "one": 1.0}  # what a -1 becomes
DEFAULT_UNCERTAIN = "ignore"
SPEC_KEYS = {"labels", "uncertain"}


@dataclass(frozen=True)
class FindingColumns:
    """A spec's `labels = [...]`: the 0/1 columns, and what an uncertain -1 means."""

    columns: tuple[str, ...]
    uncertain: str = DEFAULT_UNCERTAIN


def parse_finding_columns(spec: dict, path: Path) -> FindingColumns | None:
    if "labels" not in spec:
        if "uncertain" in spec:
            raise MedprobeError(f'{path}: uncertain = ... needs labels = ["finding", ...] (the 0/1 columns)')
        return None
    columns = spec["labels"]
    if not isinstance(columns, list) or not columns or not all(isinstance(c, str) and c for c in columns) or \
            len(set(columns)) != len(columns):
        raise MedprobeError(f'{path}: labels must name distinct 0/1 columns, e.g. labels = ["atelectasis", "effusion"]')
    uncertain = str(spec.get("uncertain", DEFAULT_UNCERTAIN))
    if uncertain not in UNCERTAIN:
        raise MedprobeError(f"{path}: uncertain = {uncertain!r} is not one of {', '.join(UNCERTAIN)}")
    return FindingColumns(tuple(columns), uncertain)


def _cell(value: str, where: str, column: str, uncertain: str) -> float:
    text = value.strip()
    if text == "":
        return math.nan
    try:
        number = float(text)
    except ValueError:
        number = None
    if number == -1:
        return UNCERTAIN[uncertain]
    if number not in (0, 1):
        raise MedprobeError(f"{where}: {column} = {value!r}; a finding column holds 1, 0, -1 (uncertain) or "
                            "nothing (unknown)")
    return float(number)


def column_findings(rows: list[dict[str, str]], spec: FindingColumns, where) -> list[tuple[float, ...]]:
    """Each row's finding vector from the spec's 0/1 columns; `where(i)` names row i in errors."""
    return [tuple(_cell(row.get(c, ""), where(i), c, spec.uncertain) for c in spec.columns)
            for i, row in enumerate(rows)]


def pipe_findings(rows: list[dict[str, str]]) -> tuple[list[str], list[tuple[float, ...]]]:
    """The findings named in the `labels` column (sorted) and each row's 0/1 vector over them."""
    named = [{part.strip() for part in row.get(LABELS_COLUMN, "").split(SEPARATOR) if part.strip()} for row in rows]
    findings = sorted(set().union(*named))
    return findings, [tuple(float(f in present) for f in findings) for present in named]


def finding_label(vector: tuple[float, ...], findings: list[str]) -> str:
    """The label text of an image: its present findings joined by `|`, or NO_FINDING."""
    present = [name for name, value in zip(findings, vector, strict=True) if value == 1]
    return SEPARATOR.join(present) or NO_FINDING

"""The comparison tables: per dataset and level (per sample, per patient), rows = backbones, columns =
methods, cells = the chosen metric with its CI, the best per column marked, and a paired bootstrap of each
cell against its column's best. Label-budget (`--shots`) records are left to the label-efficiency figure,
external-test (`--test`) records to the internal-vs-external table (report.cohorts)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from medprobe.errors import MedprobeError
from medprobe.report.records import LEVELS, Backbone, Predictions, Problem, RunRecord
from medprobe.report.stats import Comparison, PairedBootstrap, held_out

PROBE_METHODS = ("logreg", "svm", "knn")
TIE_TOLERANCE = 1e-12
LEADERBOARD = "leaderboard"  # the level of the backbone x dataset table; its columns are datasets


def method_order(method: str) -> tuple:
    """Probes first, then other methods, then fine-tuning from least to most unfrozen."""
    if method in PROBE_METHODS:
        return (0, PROBE_METHODS.index(method), 0, "")
    if method.startswith("finetune-"):
        mode = method.removeprefix("finetune-")
        if mode == "none":
            return (2, 0, 0, "")
        if mode.startswith("last-") and mode[5:].isdigit():
            return (2, 1, int(mode[5:]), "")
        return (2, 2, 0, "") if mode == "all" else (2, 3, 0, mode)
    return (1, 0, 0, method)


def is_frozen(method: str) -> bool:
    """Probes and head-only fine-tuning leave the backbone as pretrained."""
    return not method.startswith("finetune-") or method == "finetune-none"


@dataclass
class Cell:
    record: RunRecord
    value: float | None
    ci: list[float] | None
    best: bool = False
    comparison: Comparison | None = None  # against the column's best; None for the reference itself


@dataclass
class Row:
    label: str
    model: str
    backbone: Backbone
    cells: dict[str, Cell] = field(default_factory=dict)


@dataclass
class Table:
    dataset: str
    level: str  # sample | patient
    metric: str
    methods: list[str]
    rows: list[Row]

    @property
    def title(self) -> str:
        if self.is_leaderboard:
            return f"Leaderboard: {self.metric} per image, each backbone's method chosen on validation"
        return f"{self.dataset}: {self.metric}, {'per patient' if self.level == 'patient' else 'per image'}"

    def column(self, method: str) -> list[tuple[Row, Cell]]:
        return [(row, row.cells[method]) for row in self.rows if method in row.cells]

    @property
    def is_leaderboard(self) -> bool:
        return self.level == LEADERBOARD

    def best_cell(self, *, probabilities: bool = False) -> tuple[Row, Cell] | None:
        """The best cell of the table (`probabilities`: among runs whose scores are probabilities); ties go to
        the first in reading order (row, then method column)."""
        scored = [(row, row.cells[m]) for row in self.rows for m in self.methods
                  if m in row.cells and row.cells[m].value is not None
                  and (row.cells[m].record.probabilities or not probabilities)]
        return max(scored, key=lambda item: item[1].value) if scored else None


def _merged_backbone(records: list[RunRecord]) -> Backbone:
    """First known value per field, probe records first (their caches say how extraction went)."""
    merged = Backbone()
    for record in sorted(records, key=lambda r: r.kind != "probe"):
        for name, value in vars(record.backbone).items():
            if getattr(merged, name) is None and value is not None:
                setattr(merged, name, value)
    return merged


class TableBuilder:
    def __init__(self, metric: str, bootstrap: PairedBootstrap, problems: list[Problem]) -> None:
        self.metric = metric
        self.bootstrap = bootstrap
        self.problems = problems
        self._predictions: dict[str, Predictions | MedprobeError] = {}

    def predictions(self, record: RunRecord) -> Predictions | MedprobeError:
        key = str(record.path)
        if key not in self._predictions:
            try:
                self._predictions[key] = record.read_predictions()
            except MedprobeError as exc:
                self._predictions[key] = exc
                reason = str(exc).removeprefix(f"{record.path}: ")  # the problem list names the file already
                self.problems.append(Problem(record.path, f"{reason} (no paired test for it)", False))
        return self._predictions[key]

    def build(self, records: list[RunRecord]) -> list[Table]:
        # external and multi-label records have tables of their own (report.cohorts)
        main = [r for r in records if r.shots is None and r.external is None and not r.multilabel]
        by_dataset: dict[str, list[RunRecord]] = defaultdict(list)
        for record in main:
            by_dataset[record.dataset].append(record)
        tables = []
        for dataset in sorted(by_dataset):
            rows = self._rows(by_dataset[dataset])
            methods = sorted({m for row in rows for m in row.cells}, key=method_order)
            for level in LEVELS:
                if level == "patient" and not any(r.has_patient_level for r in by_dataset[dataset]):
                    continue
                table = Table(dataset, level, self.metric, methods, [self._level_row(row, level) for row in rows])
                for method in methods:
                    self._mark_column(table, method)
                tables.append(table)
        return tables

    def leaderboard(self, tables: list[Table]) -> Table | None:
        """Backbones x datasets (per image): each cell is the backbone's headline run on that dataset, the
        method with the best validation score (never the test: the test only scores the choice); the best
        per dataset marked and every other cell paired-tested against it. None with no validation scores."""
        rows: dict[str, Row] = {}
        members: dict[str, list[RunRecord]] = defaultdict(list)
        datasets = []
        for table in (t for t in tables if t.level == "sample"):
            for row in table.rows:
                scored = [(cell.record.validation_score, -k, cell) for k, method in enumerate(table.methods)
                          if (cell := row.cells.get(method)) is not None and cell.value is not None
                          and cell.record.validation_score is not None]
                if not scored:
                    continue
                chosen = max(scored, key=lambda item: item[:2])[2]  # ties: the cheaper (earlier) method
                board_row = rows.setdefault(row.label, Row(row.label, row.model, Backbone()))
                board_row.cells[table.dataset] = Cell(chosen.record, chosen.value, chosen.ci)
                members[row.label] += [cell.record for cell in row.cells.values()]
                datasets.append(table.dataset)
        if not rows:
            return None
        for label, row in rows.items():
            row.backbone = _merged_backbone(members[label])
        board = Table("all datasets", LEADERBOARD, self.metric, list(dict.fromkeys(datasets)),
                      [rows[label] for label in sorted(rows)])
        for dataset in board.methods:
            self._mark_column(board, dataset)
        return board

    def _rows(self, records: list[RunRecord]) -> list[Row]:
        pools = defaultdict(set)
        for record in records:
            pools[record.model].add(record.pool)
        cells: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
        for record in records:
            # a model probed with several pools gets a row per pool, else one row whatever the pool
            label = f"{record.model} ({record.pool})" if len(pools[record.model]) > 1 else record.model
            cells[(label, record.method)].append(record)
        rows: dict[str, Row] = {}
        members: dict[str, list[RunRecord]] = defaultdict(list)
        for (label, method), candidates in sorted(cells.items()):
            newest = max(candidates, key=lambda r: (r.created_at, r.name))
            for older in candidates:
                if older is not newest:
                    self.problems.append(Problem(older.path, f"not in the tables: {newest.name} is a newer record of "
                                                             "the same backbone and method", False))
            rows.setdefault(label, Row(label, newest.model, Backbone()))
            rows[label].cells[method] = Cell(newest, None, None)
            members[label].extend(candidates)
        for label, row in rows.items():
            row.backbone = _merged_backbone(members[label])
        return [rows[label] for label in sorted(rows)]

    def _level_row(self, row: Row, level: str) -> Row:
        cells = {method: Cell(cell.record, *cell.record.value(self.metric, level)) for method, cell in
                 row.cells.items()}
        return Row(row.label, row.model, row.backbone, cells)

    def _mark_column(self, table: Table, method: str) -> None:
        scored = [(row, cell) for row, cell in table.column(method) if cell.value is not None]
        if not scored:
            return
        top = max(cell.value for _, cell in scored)
        for _, cell in scored:
            cell.best = cell.value >= top - TIE_TOLERANCE
        reference = next(cell for _, cell in scored if cell.best)  # ties: the first row is the reference
        reference_tests = self._tests(reference.record, table.level)
        for _, cell in scored:
            if cell is reference:
                continue
            other_tests = self._tests(cell.record, table.level)
            if isinstance(reference_tests, str) or isinstance(other_tests, str):
                reason = reference_tests if isinstance(reference_tests, str) else other_tests
                cell.comparison = Comparison(False, reason, unit="sample" if table.is_leaderboard else table.level,
                                             replicates=self.bootstrap.replicates,
                                             seed=self.bootstrap.seed)
                continue
            cell.comparison = self.bootstrap.compare(str(reference.record.path), reference_tests,
                                                     str(cell.record.path), other_tests)

    def _tests(self, record: RunRecord, level: str):
        """The run's test set at `level`, or why there is none."""
        level = "sample" if level == LEADERBOARD else level
        predictions = self.predictions(record)
        if isinstance(predictions, MedprobeError):
            return "not comparable: predictions CSV missing or unreadable"
        tests = held_out(predictions, level)
        return tests if tests is not None else "not comparable: no patient-level predictions"

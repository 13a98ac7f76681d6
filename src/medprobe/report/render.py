"""Writing the report: Markdown, self-contained HTML (figures embedded as data: URIs), LaTeX tables, the
tidy summary.csv (one row per record) and comparisons.csv (one row per paired test), and console tables."""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from dataclasses import dataclass
from pathlib import Path

from medprobe.report.cohorts import TextTable
from medprobe.report.figures import Figure
from medprobe.report.records import LEVELS, REPORT_METRICS, Backbone, Problem, RunRecord, number
from medprobe.report.stats import format_p
from medprobe.report.tables import Cell, Table
from medprobe.results.subgroups import LOWER_IS_BETTER

SIGNIFICANCE = 0.05  # the LaTeX dagger; the other formats print p itself


@dataclass
class ReportContent:
    metric: str
    sources: list[Path]
    records: list[RunRecord]
    tables: list[Table]
    leaderboard: Table | None  # backbone x dataset, the first thing the report shows
    figures: list[Figure]
    sections: list[TextTable]  # external tests and subgroups (report.cohorts), under their dataset
    problems: list[Problem]
    notes: list[str]
    replicates: int
    seed: int
    created_at: str
    version: str


    @property
    def datasets(self) -> list[str]:
        """Every dataset with a section: tables first, then those with only other sections (multi-label)."""
        return list(dict.fromkeys([*(t.dataset for t in self.tables), *(t.dataset for t in self.sections)]))


# ---- cell and column text, shared by every format


def format_value(value: float | None, ci: list[float] | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"


def comparison_text(cell: Cell) -> str:
    """'' for the column's reference best, p=... for a paired test, n/c when the runs do not share tests."""
    if cell.comparison is None:
        return ""
    return format_p(cell.comparison.p_value) if cell.comparison.comparable else "n/c"


def format_parameters(parameters: float | None) -> str:
    if parameters is None:
        return "—"
    if parameters >= 1e9:
        return f"{parameters / 1e9:.2f}B"
    if parameters >= 1e6:
        return f"{parameters / 1e6:.1f}M"
    return f"{parameters / 1e3:.1f}k" if parameters >= 1e3 else f"{parameters:.0f}"


def format_speed(backbone: Backbone) -> str:
    if backbone.images_per_second is None:
        return "—"
    device = f" ({backbone.device_name})" if backbone.device_name else ""
    return f"{backbone.images_per_second:.1f}{device}"


def format_memory(backbone: Backbone) -> str:
    megabytes = backbone.peak_memory_mb
    if megabytes is None:
        return "—"
    return f"{megabytes / 1024:.1f} GB" if megabytes >= 1024 else f"{megabytes:.0f} MB"


BACKBONE_COLUMNS = ("backbone", "params", "dim", "extract img/s (device)")
LEADERBOARD_COLUMNS = ("backbone", "params", "licence", "extract img/s (device)", "extract peak memory")


def backbone_columns(table: Table) -> tuple[str, ...]:
    return LEADERBOARD_COLUMNS if table.is_leaderboard else BACKBONE_COLUMNS


def backbone_cells(table: Table, row) -> list[str]:
    if table.is_leaderboard:
        return [row.label, format_parameters(row.backbone.parameters), row.backbone.licence or "—",
                format_speed(row.backbone), format_memory(row.backbone)]
    return [row.label, format_parameters(row.backbone.parameters), row.backbone.embed_dim or "—",
            format_speed(row.backbone)]


def chosen_method(table: Table, cell: Cell) -> str:
    """The leaderboard says which method each cell is; the other tables have a column per method."""
    return cell.record.method if table.is_leaderboard else ""


def not_comparable_reasons(table: Table) -> list[str]:
    reasons = [cell.comparison.reason for row in table.rows for cell in row.cells.values()
               if cell.comparison is not None and not cell.comparison.comparable]
    return list(dict.fromkeys(reasons))


def protocols(table: Table) -> str:
    return ", ".join(sorted({cell.record.protocol for row in table.rows for cell in row.cells.values()}))


def leaderboard_text(content: ReportContent) -> str:
    return (f"Each cell: the backbone's run with the best mean validation balanced accuracy among its methods "
            f"(probes and fine-tunes; the test samples never chose it), its test {content.metric} with 95% CI "
            "and the method. Bold: the best per dataset; p: paired bootstrap against it.")


def method_text(content: ReportContent) -> str:
    return (f"Metric: **{content.metric}** on the test predictions, with its 95% bootstrap CI. Bold: the best per "
            f"column. p: paired bootstrap of each cell against its column's best on the same test samples "
            f"({content.replicates} shared resamples, seed {content.seed}; patients are resampled when the "
            f"records have groups); n/c: not comparable (different test samples). Per-patient tables score the "
            f"mean slice score of each patient.")


# ---- Markdown


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def method_cells(table: Table, row, *, best, plain=lambda text: text) -> list[str]:
    """One text per method column: value [CI] (made `plain`, then marked with `best` when it is the best)
    and the paired test against the best."""
    cells = []
    for method in table.methods:
        cell = row.cells.get(method)
        if cell is None:
            cells.append("")
            continue
        text = plain(format_value(cell.value, cell.ci))
        cells.append(" ".join(part for part in (best(text) if cell.best else text, chosen_method(table, cell),
                                                comparison_text(cell)) if part))
    return cells


def markdown_table(table: Table) -> str:
    header = [*backbone_columns(table), *table.methods]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.rows:
        cells = method_cells(table, row, best=lambda text: f"**{text}**")
        lines.append("| " + " | ".join(_md_escape(c) for c in [*backbone_cells(table, row), *cells]) + " |")
    notes = [f"Protocols: {protocols(table)}."] + [f"n/c: {reason}." for reason in not_comparable_reasons(table)]
    return "\n".join(lines) + "\n\n" + " ".join(notes) + "\n"


def markdown_text_table(table: TextTable) -> str:
    lines = ["| " + " | ".join(_md_escape(c) for c in table.columns) + " |",
             "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines) + f"\n\n{table.note}\n"


def problem_rows(content: ReportContent) -> list[tuple[str, str, str]]:
    return [(str(p.path), "skipped" if p.skipped else "reported with gaps", p.reason) for p in content.problems]


def render_markdown(content: ReportContent, out_dir: Path) -> str:
    parts = [f"# medprobe report\n\n{len(content.records)} run record(s) from "
             f"{', '.join(str(s) for s in content.sources)}; medprobe {content.version}, {content.created_at}.\n\n"
             f"{method_text(content)}\n"]
    if content.leaderboard is not None:
        parts.append(f"## Leaderboard\n\n{leaderboard_text(content)}\n\n{markdown_table(content.leaderboard)}")
    shared = [f for f in content.figures if f.dataset is None]
    if shared:
        parts.append("## Across datasets\n")
        parts += [f"![{f.title}]({f.path.relative_to(out_dir).as_posix()})\n\n*{f.title}.* {f.caption}\n"
                  for f in shared]
    for dataset in content.datasets:
        parts.append(f"## {dataset}\n")
        for table in (t for t in content.tables if t.dataset == dataset):
            parts.append(f"### {table.title}\n\n{markdown_table(table)}")
        for section in (t for t in content.sections if t.dataset == dataset):
            parts.append(f"### {section.title}\n\n{markdown_text_table(section)}")
        for figure in (f for f in content.figures if f.dataset == dataset):
            parts.append(f"![{figure.title}]({figure.path.relative_to(out_dir).as_posix()})\n\n*{figure.title}.* "
                         f"{figure.caption}\n")
    if content.problems:
        parts.append("## Skipped or incomplete records\n\n| file | status | reason |\n|---|---|---|\n" +
                     "".join(f"| {_md_escape(a)} | {b} | {_md_escape(c)} |\n" for a, b, c in problem_rows(content)))
    if content.notes:
        parts.append("## Figures not drawn\n\n" + "".join(f"- {note}\n" for note in content.notes))
    return "\n".join(parts)


# ---- HTML (self-contained: inline CSS, images as data: URIs, no scripts, no external references)

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1150px;
color:#1d1d1f;line-height:1.45;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
h3{font-size:1.02rem;margin:1.3rem 0 .4rem}
p.meta{color:#555;font-size:.9rem}
table{border-collapse:collapse;font-size:.84rem;margin:.3rem 0}
th,td{border:1px solid #d9d9d9;padding:.28rem .5rem;text-align:right;vertical-align:top}
th{background:#f3f5f8}td.name,th.name{text-align:left;font-weight:600}
td.best{background:#e8f4ea}td .ci{display:block;white-space:nowrap;font-size:.78rem}
td .p{display:block;color:#666;font-size:.75rem}
p.note{font-size:.8rem;color:#555;margin:.2rem 0 1rem}
figure{display:inline-block;margin:.6rem 1.2rem .6rem 0;vertical-align:top;max-width:100%}
figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.8rem;color:#444;max-width:560px}
td.reason{text-align:left}td.file{text-align:left;font-family:monospace;font-size:.75rem}
"""


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)


def html_table(table: Table) -> str:
    head = "".join(f'<th class="name">{_e(c)}</th>' if i == 0 else f"<th>{_e(c)}</th>"
                   for i, c in enumerate([*backbone_columns(table), *table.methods]))
    body = []
    for row in table.rows:
        first, *info = backbone_cells(table, row)
        cells = [f'<td class="name">{_e(first)}</td>', *(f"<td>{_e(c)}</td>" for c in info)]
        for method in table.methods:
            cell = row.cells.get(method)
            if cell is None:
                cells.append("<td></td>")
                continue
            # value on top, CI and p below: keeps columns narrow enough for five methods side by side
            value = "—" if cell.value is None else f"{cell.value:.3f}"
            ci = f'<span class="ci">[{cell.ci[0]:.3f}, {cell.ci[1]:.3f}]</span>' if cell.ci else ""
            extra = " ".join(part for part in (chosen_method(table, cell), comparison_text(cell)) if part)
            title = _e(cell.comparison.reason if cell.comparison and not cell.comparison.comparable else
                       cell.record.name)
            note = f'<span class="p">{_e(extra)}</span>' if extra else ""
            cells.append(f'<td class="best" title="{title}"><b>{value}</b>{ci}{note}</td>' if cell.best else
                         f'<td title="{title}">{value}{ci}{note}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    notes = [f"Protocols: {protocols(table)}."] + [f"n/c: {reason}." for reason in not_comparable_reasons(table)]
    return (f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            f'<p class="note">{_e(" ".join(notes))}</p>')


def html_text_table(table: TextTable) -> str:
    head = "".join(f'<th class="name">{_e(c)}</th>' if i == 0 else f"<th>{_e(c)}</th>"
                   for i, c in enumerate(table.columns))
    body = "".join("<tr>" + "".join(f'<td class="name">{_e(c)}</td>' if i == 0 else f"<td>{_e(c)}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in table.rows)
    return (f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            f'<p class="note">{_e(table.note)}</p>')


def html_figure(figure: Figure) -> str:
    data = base64.b64encode(figure.png).decode("ascii")
    return (f'<figure><img alt="{_e(figure.title)}" src="data:image/png;base64,{data}">'
            f"<figcaption><b>{_e(figure.title)}.</b> {_e(figure.caption)}</figcaption></figure>")


def render_html(content: ReportContent) -> str:
    method = _e(method_text(content)).replace("**", "")
    parts = [f"<h1>medprobe report</h1><p class=\"meta\">{len(content.records)} run record(s) from "
             f"{_e(', '.join(str(s) for s in content.sources))}; medprobe {_e(content.version)}, "
             f"{_e(content.created_at)}.</p><p>{method}</p>"]
    if content.leaderboard is not None:
        parts.append(f'<h2 id="leaderboard">Leaderboard</h2><p>{_e(leaderboard_text(content))}</p>'
                     f"{html_table(content.leaderboard)}")
    shared = [f for f in content.figures if f.dataset is None]
    if shared:
        parts.append("<h2>Across datasets</h2>" + "".join(html_figure(f) for f in shared))
    for dataset in content.datasets:
        parts.append(f"<h2>{_e(dataset)}</h2>")
        parts += [f"<h3>{_e(t.title)}</h3>{html_table(t)}" for t in content.tables if t.dataset == dataset]
        parts += [f"<h3>{_e(t.title)}</h3>{html_text_table(t)}" for t in content.sections if t.dataset == dataset]
        parts += [html_figure(f) for f in content.figures if f.dataset == dataset]
    if content.problems:
        rows = "".join(f'<tr><td class="file">{_e(a)}</td><td class="reason">{_e(b)}</td>'
                       f'<td class="reason">{_e(c)}</td></tr>' for a, b, c in problem_rows(content))
        parts.append('<h2 id="skipped">Skipped or incomplete records</h2><table><thead><tr><th class="name">file'
                     f"</th><th>status</th><th>reason</th></tr></thead><tbody>{rows}</tbody></table>")
    if content.notes:
        parts.append("<h2>Figures not drawn</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in content.notes) +
                     "</ul>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>medprobe report</title>'
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n")


# ---- LaTeX

_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(c, c) for c in str(text))


def latex_table(table: Table) -> str:
    header = " & ".join(latex_escape(c) for c in ["Backbone", "Params", "Dim", *table.methods])
    lines = []
    for row in table.rows:
        cells = [latex_escape(row.label), latex_escape(format_parameters(row.backbone.parameters)),
                 latex_escape(row.backbone.embed_dim or "--")]
        for method in table.methods:
            cell = row.cells.get(method)
            if cell is None or cell.value is None:
                cells.append("--")
                continue
            text = f"{cell.value:.3f}"
            text = rf"\textbf{{{text}}}" if cell.best else text
            ci = rf" {{\scriptsize [{cell.ci[0]:.3f}, {cell.ci[1]:.3f}]}}" if cell.ci else ""
            comparison = cell.comparison
            dagger = r"$^\dagger$" if comparison and comparison.comparable and comparison.p_value < SIGNIFICANCE \
                else ""
            method = latex_escape(chosen_method(table, cell))
            cells.append(text + dagger + ci + (rf" {{\scriptsize {method}}}" if method else ""))
        lines.append(" & ".join(cells) + r" \\")
    label = f"tab:medprobe-{table.dataset}-{table.level}".replace("_", "-")
    significance = rf"$^\dagger$: differs from the column's best (paired bootstrap, $p<{SIGNIFICANCE}$)."
    if table.is_leaderboard:
        label = "tab:medprobe-leaderboard"
        caption = (f"Leaderboard: test {latex_escape(table.metric)} per image with 95\\% bootstrap CI; each "
                   "backbone's method (named in the cell) chosen on validation balanced accuracy. "
                   f"Bold: best per dataset; {significance}")
    else:
        caption = (f"{latex_escape(table.dataset)}: {latex_escape(table.metric)} "
                   f"{'per patient' if table.level == 'patient' else 'per image'} with 95\\% bootstrap CI. "
                   f"Bold: best per column; {significance}")
    return "\n".join([r"\begin{table}[ht]", r"\centering", r"\small", rf"\caption{{{caption}}}",
                      rf"\label{{{latex_escape(label)}}}", r"\begin{tabular}{lrr" + "l" * len(table.methods) + "}",
                      r"\toprule", header + r" \\", r"\midrule", *lines, r"\bottomrule", r"\end{tabular}",
                      r"\end{table}", ""])


def render_latex(content: ReportContent) -> str:
    tables = ([content.leaderboard] if content.leaderboard else []) + content.tables
    return ("% medprobe report tables; needs \\usepackage{booktabs}\n" +
            "\n".join(latex_table(t) for t in tables))


# ---- CSV


def summary_metrics(records: list[RunRecord]) -> list[str]:
    """The metrics any record holds, the usual ones in their usual order first."""
    seen = {name for r in records for level in LEVELS for name in r.metric_block(level)}
    return [m for m in REPORT_METRICS if m in seen] + sorted(seen - set(REPORT_METRICS))


def _p_values(tables: list[Table]) -> dict[tuple[str, str], float]:
    found = {}
    for table in tables:
        for row in table.rows:
            for cell in row.cells.values():
                if cell.comparison is not None and cell.comparison.comparable:
                    found[(str(cell.record.path), table.level)] = cell.comparison.p_value
                elif cell.best and cell.comparison is None:
                    found[(str(cell.record.path), table.level)] = 1.0  # the reference against itself
    return found


def bootstrap_digits(replicates) -> int:
    """Decimals a bootstrap of `replicates` resamples resolves: one resample moves a percentile by about
    1/replicates of the distribution, so 1000 -> 3, 2000 to 10000 -> 4 (never under 3)."""
    count = replicates if isinstance(replicates, int) and replicates > 0 else 1000
    return max(3, math.ceil(math.log10(count)))


def _csv_value(value, digits: int):
    if value is None:
        return ""
    return f"{value:.{digits}f}" if isinstance(value, float) else value


def worst_subgroup(record: RunRecord, metric: str) -> dict:
    """summary.csv's worst subgroup over every --subgroups column ("sex=M") and its `metric` value."""
    columns = record.subgroups.columns if record.subgroups else {}
    worst = [(entry.value, f"{column}={entry.group}") for column, block in columns.items()
             if (entry := block.worst.get(metric))]
    pick = max if metric in LOWER_IS_BETTER else min
    value, group = pick(worst) if worst else (None, None)
    return {f"worst_subgroup_{metric}": group, f"worst_subgroup_{metric}_value": value}


def render_summary_csv(content: ReportContent) -> str:
    metrics = summary_metrics(content.records)
    p_values = _p_values(content.tables)
    columns = ["dataset", "model", "method", "kind", "protocol", "pool", "shots", "seed", "test_samples",
               "patients", "parameters", "embed_dim", "licence", "extract_images_per_second", "extract_device",
               "trainable_parameters", "train_images_per_second", "train_device"]
    for prefix in ("", "patient_"):
        for name in metrics:
            columns += [f"{prefix}{name}", f"{prefix}{name}_ci_low", f"{prefix}{name}_ci_high"]
    columns += [f"p_vs_best_{content.metric}", f"patient_p_vs_best_{content.metric}", "external_cohort",
                f"worst_subgroup_{content.metric}", f"worst_subgroup_{content.metric}_value", "record", "predictions"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for record in content.records:
        data = record.data
        sizes = [s.test for s in record.sizes]
        patients = record.patient_metrics.patients if record.patient_metrics else None
        backbone = record.backbone
        row = {"dataset": record.dataset, "model": record.model, "method": record.method, "kind": record.kind,
               "protocol": record.protocol, "pool": record.pool, "shots": record.shots, "seed": data.get("seed"),
               "test_samples": sum(sizes) if sizes and all(isinstance(s, int) for s in sizes) else None,
               "patients": patients, "parameters": backbone.parameters, "embed_dim": backbone.embed_dim,
               "licence": backbone.licence,
               "extract_images_per_second": backbone.images_per_second, "extract_device": backbone.device_name,
               "trainable_parameters": number(record.cost.trainable_parameters) if record.cost else None,
               "train_images_per_second": number(record.cost.train_images_per_second) if record.cost else None,
               "train_device": record.cost.device_name if record.cost else None,
               f"p_vs_best_{content.metric}": p_values.get((str(record.path), "sample")),
               f"patient_p_vs_best_{content.metric}": p_values.get((str(record.path), "patient")),
               "external_cohort": record.external.dataset.name if record.external else None,
               **worst_subgroup(record, content.metric),
               "record": str(record.path), "predictions": record.predictions_path}
        for prefix, level in (("", "sample"), ("patient_", "patient")):
            for name in metrics:
                value, ci = record.value(name, level)
                row[f"{prefix}{name}"] = value
                row[f"{prefix}{name}_ci_low"], row[f"{prefix}{name}_ci_high"] = ci if ci else (None, None)
        digits = bootstrap_digits((data.get("bootstrap") or {}).get("replicates"))
        rounded = {k: _csv_value(v, digits) for k, v in row.items()}
        for name in ("parameters", "trainable_parameters"):  # counts, not estimates
            rounded[name] = "" if row[name] is None else int(row[name])
        for name in ("extract_images_per_second", "train_images_per_second"):
            rounded[name] = "" if row[name] is None else f"{row[name]:.1f}"
        writer.writerow(rounded)
    return buffer.getvalue()


def render_comparisons_csv(content: ReportContent) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["dataset", "level", "metric", "method", "model", "best_model", "comparable", "difference",
                     "difference_ci_low", "difference_ci_high", "p_value", "unit", "replicates", "seed", "note",
                     "record", "best_record"])
    boards = [content.leaderboard] if content.leaderboard is not None else []
    for table in [*boards, *content.tables]:  # the leaderboard's columns (`method`) are datasets
        for method in table.methods:
            column = table.column(method)
            reference = next((cell for _, cell in column if cell.best and cell.comparison is None), None)
            for row, cell in column:
                c = cell.comparison
                if c is None:
                    continue
                digits = bootstrap_digits(c.replicates)
                ci = [f"{v:.{digits}f}" for v in c.ci] if c.ci else ["", ""]
                writer.writerow([table.dataset, table.level, table.metric, method, row.label,
                                 reference.record.model if reference else "", c.comparable,
                                 _csv_value(c.difference, digits), *ci, _csv_value(c.p_value, digits), c.unit,
                                 c.replicates, c.seed, c.reason,
                                 cell.record.path, reference.record.path if reference else ""])
    return buffer.getvalue()


# ---- console


def console_table(table: Table):
    from rich.markup import escape
    from rich.table import Table as RichTable

    rich_table = RichTable(*backbone_columns(table), *table.methods,
                           title=f"{table.title} (95% CI; *: best per column; p: paired test vs the best)")
    for row in table.rows:
        # a star as well as bold: piped output loses the bold
        cells = method_cells(table, row, best=lambda text: f"[bold]{text}*[/bold]", plain=escape)
        rich_table.add_row(*(escape(c) for c in backbone_cells(table, row)), *cells)
    return rich_table


def console_text_table(table: TextTable):
    """A report section (report.cohorts.TextTable) for the terminal."""
    from rich.markup import escape
    from rich.table import Table as RichTable

    rich_table = RichTable(*(escape(c) for c in table.columns), title=escape(table.title))
    for row in table.rows:
        rich_table.add_row(*(escape(str(c)) for c in row))
    return rich_table


def print_headline(console, leaderboard: Table | None, tables: list[Table], sections: list[TextTable]) -> None:
    """What `medprobe report` and `medprobe run` print: the leaderboard, each dataset's per-image table and
    each multi-label dataset's findings table."""
    if leaderboard is not None:
        console.print(console_table(leaderboard))
    for table in tables:
        if table.level == "sample":
            console.print(console_table(table))
    for section in sections:
        if section.headline:
            console.print(console_text_table(section))

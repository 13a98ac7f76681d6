"""`medprobe report`: comparison tables and figures from run records (probe and finetune alike).

records.py finds and validates the records, stats.py runs the paired bootstrap on their predictions,
tables.py builds the per-dataset tables, figures.py draws the PNGs, render.py writes every format. Reads
JSON and CSV only: it never imports torch and never re-runs anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medprobe import __version__
from medprobe.errors import MedprobeError
from medprobe.report import render
from medprobe.report.cohorts import calibration_tables, external_tables, finding_tables, subgroup_tables
from medprobe.report.embedding import DEFAULT_PROJECTION, projection
from medprobe.report.explanations import explanation_figures
from medprobe.report.figures import draw_all
from medprobe.report.records import REPORT_METRICS, load_records
from medprobe.report.stats import PairedBootstrap
from medprobe.report.tables import Table, TableBuilder
from medprobe.results.record import _atomic_write
from medprobe.stages import make_callable
from medprobe.timestamps import now_iso

DEFAULT_REPLICATES = 2000


@dataclass
class Report:
    html: Path
    markdown: Path
    summary_csv: Path
    comparisons_csv: Path
    latex: Path | None
    tables: list[Table]
    leaderboard: Table | None
    content: render.ReportContent


def build_report(*, results_dirs: list[Path], out_dir: Path, metric: str = "accuracy", latex: bool = False,
                 replicates: int = DEFAULT_REPLICATES, seed: int = 0, embedding: str = DEFAULT_PROJECTION) -> Report:
    """Read every run record under `results_dirs` and write report.md, report.html, summary.csv,
    comparisons.csv, figures/*.png (and report.tex with `latex`) under `out_dir`. `embedding`: the 2-D
    projection of the embedding maps (pca, tsne, umap)."""
    if metric not in REPORT_METRICS:
        raise MedprobeError(f"--metric {metric!r} is not one of {', '.join(REPORT_METRICS)}")
    if replicates < 1:
        raise MedprobeError(f"--bootstrap {replicates}: the paired test needs at least 1 resample (e.g. 2000)")
    projection(embedding)  # an unknown or uninstalled projection fails before any work
    loaded = load_records([Path(d) for d in results_dirs], metric)
    problems = list(loaded.problems)
    builder = TableBuilder(metric, PairedBootstrap(metric, replicates, seed), problems)
    tables = builder.build(loaded.records)
    leaderboard = builder.leaderboard(tables)
    out_dir = Path(out_dir)
    figures, notes = draw_all(tables, leaderboard, loaded.records, out_dir / "figures", metric, builder.predictions,
                              embedding=embedding, seed=seed)
    explained, explain_notes = explanation_figures(loaded.records, out_dir / "figures" / "explain")
    figures, notes = figures + explained, notes + explain_notes
    content = render.ReportContent(metric=metric, sources=[Path(d) for d in results_dirs], records=loaded.records,
                                   tables=tables, leaderboard=leaderboard, figures=figures,
                                   sections=[*external_tables(loaded.records, metric),
                                             *subgroup_tables(loaded.records, metric),
                                             *calibration_tables(loaded.records),
                                             *finding_tables(loaded.records, replicates, seed)],
                                   problems=problems,
                                   notes=notes,
                                   replicates=replicates, seed=seed, created_at=now_iso(), version=__version__)
    paths = {name: out_dir / name for name in ("summary.csv", "comparisons.csv", "report.md", "report.tex",
                                               "report.html")}
    outputs = [("summary.csv", render.render_summary_csv(content)),
               ("comparisons.csv", render.render_comparisons_csv(content)),
               ("report.md", render.render_markdown(content, out_dir))]
    if latex:
        outputs.append(("report.tex", render.render_latex(content)))
    outputs.append(("report.html", render.render_html(content)))  # last: its presence means the report is whole
    for name, text in outputs:
        _atomic_write(paths[name], lambda handle, text=text: handle.write(text))
    return Report(html=paths["report.html"], markdown=paths["report.md"], summary_csv=paths["summary.csv"],
                  comparisons_csv=paths["comparisons.csv"], latex=paths["report.tex"] if latex else None,
                  tables=tables, leaderboard=leaderboard, content=content)


__all__ = ["DEFAULT_REPLICATES", "Report", "build_report"]

make_callable(__name__)  # medprobe.report(...) is medprobe.api.report(...)

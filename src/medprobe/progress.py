"""Progress bars on stderr (rich), shared by every long-running stage."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

STDERR = Console(stderr=True, highlight=False)  # warnings and per-epoch lines; results go to stdout


class _RateColumn(TextColumn):
    def __init__(self, unit: str) -> None:
        super().__init__("")
        self.unit = unit

    def render(self, task):  # noqa: ANN001 - rich's signature
        from rich.text import Text

        # rich's own estimate needs two updates within its window; a short task (one batch) has one
        speed = task.finished_speed or task.speed or (task.completed / task.elapsed if task.completed and
                                                      task.elapsed else None)
        return Text(f"{speed:,.1f} {self.unit}/s" if speed else f"- {self.unit}/s", style="cyan")


@functools.cache
def _jupyter_widgets() -> bool:
    """Whether ipywidgets is there to draw bars in Jupyter; without it rich would warn at every refresh, so the
    bars are left out, said once."""
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        STDERR.print("progress bars in Jupyter need ipywidgets: pip install 'medprobe[notebook]'", markup=False)
        return False
    return True


@contextlib.contextmanager
def progress_bar(description: str, *, total: int, enabled: bool = True, unit: str = "img",
                 status: bool = False) -> Iterator[Callable[..., None]]:
    """A bar; `advance(n)` moves it on. With `status`, `advance(n, status=text)` also shows a short text
    after the rate (extraction's bottleneck stage)."""
    console = Console(stderr=True)
    if not enabled or (console.is_jupyter and not _jupyter_widgets()):
        yield lambda n, status=None: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _RateColumn(unit),
               TimeRemainingColumn(), *([TextColumn("{task.fields[status]}", style="dim")] if status else []))
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total, status="")

        def advance(n: int, status: str | None = None) -> None:
            progress.update(task, advance=n, **({"status": status} if status is not None else {}))

        yield advance
        progress.refresh()  # rich's stop draws the final state in a terminal, not in Jupyter

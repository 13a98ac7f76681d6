"""Progress bars on stderr (rich), shared by every long-running stage."""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def progress_bar(description: str, *, total: int, enabled: bool = True, unit: str = "img",
                 status: bool = False) -> Iterator[Callable[..., None]]:
    """A bar; `advance(n)` moves it on. With `status`, `advance(n, status=text)` also shows a short text
    after the rate (extraction's bottleneck stage)."""
    if not enabled:
        yield lambda n, status=None: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _RateColumn(unit),
               TimeRemainingColumn(), *([TextColumn("{task.fields[status]}", style="dim")] if status else []))
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(description, total=total, status="")

        def advance(n: int, status: str | None = None) -> None:
            progress.update(task, advance=n, **({"status": status} if status is not None else {}))

        yield advance

"""Progress bars: the rate column shows a rate even for a task that finishes in one update."""

from __future__ import annotations

import time

from rich.progress import Progress

from medprobe.progress import _RateColumn


def test_rate_column_shows_images_per_second_after_a_single_update():
    progress = Progress()
    task = progress.add_task("finetune", total=32)
    column = _RateColumn("img")
    assert column.render(progress.tasks[0]).plain == "- img/s"  # nothing measured yet
    time.sleep(0.05)
    progress.advance(task, 32)  # one batch: rich's own speed estimate needs two updates
    rate = float(column.render(progress.tasks[0]).plain.removesuffix(" img/s").replace(",", ""))
    assert 0 < rate < 32 / 0.05 * 1.01

"""Progress bars: the rate column shows a rate even for a task that finishes in one update."""

from __future__ import annotations

import re
import time

import pytest
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


@pytest.mark.parametrize("verbose", [False, True])
def test_finetune_shows_one_bar_unless_verbose(tmp_path, tiny_timm_models, capsys, verbose):
    from conftest import blob_patients

    from medprobe.data import load_dataset
    from medprobe.finetune.runner import FinetuneSettings, finetune

    dataset = load_dataset(blob_patients(tmp_path / "blobs", patients=8, per_patient=2, size=(40, 40)))
    settings = FinetuneSettings(epochs=2, lr=1e-3, head_lr=1e-2, batch_size=4, workers=0, bootstrap=20,
                                precision="fp32", device="cpu", folds=2, unfreeze="none")
    finetune(dataset=dataset, model=str(tiny_timm_models["resnet"]), settings=settings, out_dir=tmp_path / "out",
             show_progress=True, verbose=verbose)
    err = capsys.readouterr().err
    epoch_lines = [line for line in err.splitlines() if "train loss" in line]
    assert len(epoch_lines) == (2 * 2 if verbose else 0)  # folds x epochs
    assert ("finetune test_resnet" in err or "finetune resnet" in err) != verbose
    assert "- img/s" not in err.splitlines()[-1]


def test_in_jupyter_the_bar_is_drawn_into_an_output_widget(monkeypatch):
    """README: progress bars are also drawn in Jupyter (rich's live display in an ipywidgets Output)."""
    import IPython.display
    import ipywidgets
    import rich.console

    from medprobe.progress import progress_bar

    shown = []
    monkeypatch.setattr(rich.console, "_is_jupyter", lambda: True)  # what a notebook kernel's shell makes it
    monkeypatch.setattr(IPython.display, "display", lambda thing, **_: shown.append(thing))
    with progress_bar("extract demo", total=12) as advance:
        advance(12)
    assert any(isinstance(thing, ipywidgets.Output) for thing in shown)
    drawn = [re.sub(r"\x1b\[[0-9;]*m", "", thing.text) for thing in shown if hasattr(thing, "text")]
    assert any("extract demo" in text and "12/12" in text for text in drawn)


def test_in_jupyter_without_ipywidgets_the_bars_are_left_out_with_one_line(monkeypatch, capsys):
    import sys
    import warnings

    import rich.console

    from medprobe import progress

    monkeypatch.setattr(rich.console, "_is_jupyter", lambda: True)
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import fails
    progress._jupyter_widgets.cache_clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rich's 'install "ipywidgets"' warning would raise here
        for _ in range(2):
            with progress.progress_bar("extract demo", total=12) as advance:
                advance(12)
    progress._jupyter_widgets.cache_clear()
    err = capsys.readouterr().err
    assert err.count("progress bars in Jupyter need ipywidgets: pip install 'medprobe[notebook]'") == 1
    assert "extract demo" not in err

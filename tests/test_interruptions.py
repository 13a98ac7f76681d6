"""Kill medprobe at random points (SIGKILL and SIGINT), resume, and check nothing was lost or corrupted."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import blob_image
from forked_commands import COMMAND_ENV, ForkedCommand
from PIL import Image
from test_scale import assert_same_cache

from medprobe.cache import read_contents, read_features
from medprobe.cache.journal import journal_dir
from medprobe.cache.manage import verify
from medprobe.data import load_dataset
from medprobe.extract.runner import extract, locate_cache

ENV = COMMAND_ENV


@dataclass(frozen=True)
class StopCounts:
    """How many stops the harnesses wait for. Every suite run uses SUITE; the soak
    (benchmarks/interruption_soak.py, MEDPROBE_SOAK=1) uses SOAK, round after round."""

    extract_mid_run: int  # per signal (SIGKILL, SIGINT), landed after the run journalled a batch
    extract_anywhere: int  # SIGKILLs at a random moment
    finetune: int
    run: int


SUITE = StopCounts(extract_mid_run=5, extract_anywhere=3, finetune=3, run=4)
SOAK = StopCounts(extract_mid_run=12, extract_anywhere=6, finetune=5, run=6)
STOPS = SOAK if os.environ.get("MEDPROBE_SOAK") == "1" else SUITE


def many_images(root: Path, count: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(count):
        label = i % 2
        (root / f"class{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(blob_image(rng, label, (96, 80))).save(root / f"class{label}" / f"{i:04d}.png")
    return root


def medprobe(*args) -> subprocess.Popen:
    """A fresh `python -m medprobe`, in a session of its own: SIGINT goes to the whole group, DataLoader
    workers included, as Ctrl-C does."""
    return subprocess.Popen([sys.executable, "-m", "medprobe", *map(str, args)], env=ENV, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def forked(*args) -> ForkedCommand:
    """The same command forked from a process that has already imported medprobe and torch (a session of its
    own too): the stop harnesses' many runs skip the seconds of imports (tests/forked_commands.py)."""
    return ForkedCommand(args)


def wait_for_new_file(folder: Path, pattern: str | tuple[str, ...], process: subprocess.Popen,
                      timeout: float = 120) -> bool:
    """Until this process has written a file matching `pattern` (or one of several) under `folder` (files
    left by an earlier run are older than it): from then on a stop lands mid-run, with finished work to keep."""
    started, deadline = time.time(), time.monotonic() + timeout
    patterns = (pattern,) if isinstance(pattern, str) else pattern
    while time.monotonic() < deadline and process.poll() is None:
        try:  # the folder itself may go between any two looks: a journal is removed once committed
            if any(found.stat().st_mtime > started for p in patterns for found in folder.glob(p)):
                return True
        except FileNotFoundError:
            pass
        time.sleep(0.02)
    return False


@dataclass
class Stop:
    landed: bool  # the run had saved work (a new file) and died of the signal, not of anything else
    returncode: int
    err: str
    workers_seen: int = 0  # child processes (the loader's workers) looked at just before the signal


# a bar's final state ("extract m ━━╸ 4/40 5.9 img/s ...") or a fine-tune's line per epoch
PROGRESS_LINE = re.compile(r" \d+/\d+ .*/s\b|^(fold \d+|all data) epoch \d+/\d+: ")


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def ignores_sigint(pid: int) -> bool | None:
    """From the kernel's SigIgn mask of the process (None once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:")), 16)
    return bool(mask >> (signal.SIGINT - 1) & 1)


def stop_once_it_saved(command: list, folder: Path, pattern: str | tuple[str, ...], how: signal.Signals,
                       delay: float, check_workers: bool = False) -> Stop:
    """Start `medprobe COMMAND`, wait until it has written a file matching `pattern` under `folder`, wait
    `delay` more, send `how` to its whole process group. A Ctrl-C that reached a running process must end
    in the one line and exit code 130 (or the run had just finished). With `check_workers`, every child
    process alive just before the signal (the DataLoader's workers) must be ignoring SIGINT."""
    process = forked(*command)
    saved = wait_for_new_file(folder, pattern, process)
    time.sleep(delay)
    seen = [flag for flag in map(ignores_sigint, children(process.pid) if check_workers else []) if flag is not None]
    signalled = process.signal_group(how)
    _, err = process.communicate(timeout=300)
    assert all(seen), "a loader worker does not ignore SIGINT"
    if how == signal.SIGINT and signalled:
        assert process.returncode in (0, 130), (process.returncode, err)
    if process.returncode == 130:
        assert_one_line_interrupt(err)
    return Stop(saved and process.returncode == (-9 if how == signal.SIGKILL else 130), process.returncode, err,
                len(seen))


def assert_one_line_interrupt(err: str) -> None:
    """Ctrl-C's whole story is one `interrupted: ...` line: beside the progress bars' final states, stderr
    holds nothing else, no traceback from any process or thread."""
    story = [line for line in err.splitlines() if line.strip() and not PROGRESS_LINE.search(line)]
    assert len(story) == 1 and story[0].startswith("interrupted: "), err
    assert "run the same command" in story[0] and "Traceback" not in err and "Exception" not in err, err


def test_extraction_survives_stops_mid_run_and_kills_anywhere(tmp_path):
    from conftest import save_tiny_timm

    data = many_images(tmp_path / "data", 1200)
    # a real resnet18 shape (random weights) at 64 px: slow enough (~200 img/s here) that kills land mid-run
    model, cache = save_tiny_timm(tmp_path / "resnet18", "resnet18", input_size=64), tmp_path / "cache"
    options = dict(model=str(model), device="cpu", precision="fp32", batch_size=4)
    dataset = load_dataset(data)
    reference = extract(dataset=dataset, cache_dir=tmp_path / "reference", workers=0, show_progress=False, **options)
    pools = list(read_contents(reference.path).dims)
    expected = {pool: read_features(reference.path, dataset.ids, pool) for pool in pools}
    path = locate_cache(dataset=dataset, model=str(model), cache_dir=cache, device="cpu", precision="fp32").path
    command = ["extract", data, "--model", model, "--cache-dir", cache, "--device", "cpu", "--precision", "fp32",
               "--batch-size", 4, "--workers", 1]
    rng = np.random.default_rng(0)
    mid_run = {"SIGKILL": 0, "SIGINT": 0}  # stops that landed after this run journalled a batch
    anywhere = 0  # SIGKILLs at a random time: start-up, planning, recovery, commit
    workers_seen = 0  # loader workers found ignoring SIGINT just before a mid-run stop
    for attempt in range(80):
        more_mid_run, more_anywhere = min(mid_run.values()) < STOPS.extract_mid_run, anywhere < STOPS.extract_anywhere
        if not (more_mid_run or more_anywhere):
            break
        if path.exists() and read_contents(path).done.all() and not journal_dir(path).exists():
            path.unlink()  # all extracted between stops: start another cycle (the final check still holds)
        if (attempt % 4 == 0 and more_anywhere) or not more_mid_run:
            process = forked(*command)
            time.sleep(rng.uniform(0.2, 4.0))
            process.signal_group(signal.SIGKILL)
            process.communicate(timeout=120)
            anywhere += process.returncode == -9
        else:
            how = signal.SIGINT if mid_run["SIGINT"] < mid_run["SIGKILL"] else signal.SIGKILL
            stop = stop_once_it_saved(command, journal_dir(path), "batch-*.npz", how, rng.uniform(0.0, 0.3),
                                      check_workers=True)
            mid_run[how.name] += stop.landed
            workers_seen += stop.workers_seen
        if path.exists():  # every stop leaves a complete, valid cache whose done rows are the right ones
            assert verify(path).ok
            contents = read_contents(path)
            done = [i for i, flag in zip(contents.ids, contents.done, strict=True) if flag]
            positions = [dataset.ids.index(i) for i in done]
            for pool in pools:
                assert np.array_equal(read_features(path, done, pool), expected[pool][positions])
    assert mid_run == {"SIGKILL": STOPS.extract_mid_run, "SIGINT": STOPS.extract_mid_run}, (mid_run, anywhere)
    assert anywhere >= STOPS.extract_anywhere, (mid_run, anywhere)
    assert workers_seen >= STOPS.extract_mid_run  # the check above looked at live workers, not at none
    final = forked(*command)
    out, err = final.communicate(timeout=300)
    assert final.returncode == 0, err
    assert read_contents(path).ids == read_contents(reference.path).ids  # same rows in the same order
    for pool in pools:
        assert np.array_equal(read_features(path, dataset.ids, pool), expected[pool])  # bit for bit
    assert_same_cache(path, reference.path)  # the whole file: source fingerprints and stats, done flags too
    assert not journal_dir(path).exists()


def test_a_ctrl_c_that_meets_importlib_s_own_code_is_delivered_again_just_after():
    """A KeyboardInterrupt inside importlib's bootstrap can leave CPython's import lock held (the next import then
    hangs); medprobe's handler raises none there and sends SIGINT again RETRY_S later, which raises outside it."""
    from types import SimpleNamespace

    import medprobe.__main__ as command

    inside_importlib = SimpleNamespace(f_code=SimpleNamespace(co_filename="<frozen importlib._bootstrap>"))
    previous = signal.signal(signal.SIGINT, command.interrupt), signal.signal(signal.SIGALRM, command._interrupt_again)
    try:
        command.interrupt(signal.SIGINT, inside_importlib)  # no KeyboardInterrupt here
        assert 0 < signal.getitimer(signal.ITIMER_REAL)[0] <= command.RETRY_S
        with pytest.raises(KeyboardInterrupt):
            time.sleep(1)  # the retry arrives here, outside importlib
        with pytest.raises(KeyboardInterrupt):
            command.interrupt(signal.SIGINT, sys._getframe())
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGALRM, previous[1])


def test_ctrl_c_while_the_command_is_still_starting_is_exit_130_and_no_traceback(tmp_path):
    """README: Ctrl-C while the command is still starting (importing its libraries, loading the data and the
    model) ends with exit code 130 and no traceback. Stops are drawn within one uninterrupted run's wall time on
    this machine and count only where no batch had been journalled yet; one landing after the command's end is
    ignored by design (cli.main): exit 0 with the whole cache written."""
    from conftest import save_tiny_timm

    data = many_images(tmp_path / "data", 40)
    model, cache = save_tiny_timm(tmp_path / "resnet18", "resnet18", input_size=64), tmp_path / "cache"
    command = ["extract", data, "--model", model, "--cache-dir", cache, "--device", "cpu", "--precision", "fp32",
               "--batch-size", 4, "--workers", 1]
    started = time.monotonic()
    assert medprobe(*command).wait(timeout=300) == 0
    whole_run = time.monotonic() - started
    rng, during_start_up, too_late = np.random.default_rng(1), [], 0
    for _ in range(16):
        if len(during_start_up) == 4:
            break
        shutil.rmtree(cache, ignore_errors=True)
        process = medprobe(*command)
        time.sleep(rng.uniform(0.05, whole_run))
        if process.poll() is not None:
            continue
        os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=120)
        assert "Traceback" not in err and "Exception" not in err, err
        if process.returncode == 0:  # landed after the command's end: the cache is whole, the journal gone
            assert any(cache.rglob("*.h5")) and not any(cache.rglob("batch-*.npz")), err
            too_late += 1
            continue
        assert process.returncode == 130, (process.returncode, err)
        if not any(cache.rglob("batch-*.npz")) and not any(cache.rglob("*.h5")):  # before the progress bar too
            assert all(line.startswith("interrupted: ") for line in err.splitlines() if line.strip()), err
            during_start_up.append(err)
    assert len(during_start_up) == 4, (during_start_up, too_late, whole_run)


def test_finetune_resume_after_stops_mid_training_equals_an_uninterrupted_run(tmp_path, tiny_timm_models):
    import json

    data = many_images(tmp_path / "data", 48)
    model = tiny_timm_models["resnet"]
    # one loader worker, so Ctrl-C also meets fine-tuning's worker processes
    epochs = 12  # enough epochs that stops land mid-training; fewer keep the suite short
    common = ["finetune", data, "--model", model, "--epochs", epochs, "--batch-size", 8, "--workers", 1, "--fold", 0,
              "--folds", 3, "--precision", "fp32", "--device", "cpu", "--bootstrap", 50, "--patience", epochs]
    reference = forked(*common, "--out", tmp_path / "reference")
    assert reference.wait(timeout=300) == 0, reference.communicate()[1]
    [record] = (tmp_path / "reference").rglob("*seed0.json")
    # an epoch here takes a fraction of a second, and more on a loaded machine: a stop's delay is drawn
    # from this machine's own epoch time, so that it lands in the next epoch or its checkpoint write
    epoch_seconds = json.loads(record.read_text())["cost"]["wall_seconds"] / epochs
    checkpoints = tmp_path / "resumed"
    rng = np.random.default_rng(1)
    stops = []
    for _attempt in range(40):  # until STOPS.finetune stops landed after an epoch this run checkpointed
        if len(stops) == STOPS.finetune:
            break
        how = signal.SIGINT if len(stops) % 2 else signal.SIGKILL
        stop = stop_once_it_saved([*common, "--out", checkpoints, "--resume"], checkpoints, "**/last.safetensors",
                                  how, rng.uniform(0.0, 1.5 * epoch_seconds))
        stops += [how.name] if stop.landed else []
        assert stop.returncode != 130 or "--resume" in stop.err, stop.err
        if stop.returncode == 0:  # it trained to the end between stops: start another cycle
            shutil.rmtree(checkpoints)
            stops = []
    assert len(stops) == STOPS.finetune and {"SIGKILL", "SIGINT"} <= set(stops), stops
    final = forked(*common, "--out", checkpoints, "--resume")
    assert final.wait(timeout=300) == 0, final.communicate()[1]
    [expected] = list((tmp_path / "reference").rglob("*.predictions.csv"))
    [resumed] = list(checkpoints.rglob("*.predictions.csv"))
    assert resumed.read_text() == expected.read_text()


@pytest.mark.parametrize("where", ["journal", "commit"])
def test_full_disk_is_a_clear_error_and_nothing_looks_complete(tmp_path, tiny_timm_models, monkeypatch, where):
    import errno

    from medprobe.cache import journal as journal_module
    from medprobe.cache.store import CacheWriter
    from medprobe.errors import MedprobeError

    dataset = load_dataset(many_images(tmp_path / "data", 40))
    options = dict(dataset=dataset, model=str(tiny_timm_models["resnet"]), cache_dir=tmp_path / "cache",
                   device="cpu", precision="fp32", batch_size=4, workers=0, show_progress=False)
    full = OSError(errno.ENOSPC, "No space left on device")
    calls = {"n": 0}
    if where == "journal":
        original = journal_module.np.savez

        def savez_until_full(handle, **arrays):
            calls["n"] += 1
            if calls["n"] > 3:
                raise full
            return original(handle, **arrays)

        monkeypatch.setattr(journal_module.np, "savez", savez_until_full)
    else:
        monkeypatch.setattr(CacheWriter, "write", lambda *args: (_ for _ in ()).throw(full))
    with pytest.raises(MedprobeError, match="No space left on device; free disk space, then run the same command"):
        extract(**options)
    path = locate_cache(dataset=dataset, model=options["model"], cache_dir=options["cache_dir"], device="cpu",
                        precision="fp32").path
    assert not path.exists() and not path.with_name(path.name + ".partial").exists()
    assert len(list(journal_dir(path).glob("batch-*.npz"))) == (3 if where == "journal" else 10)  # work kept
    monkeypatch.undo()
    report = extract(**options)
    assert report.extracted == (40 - 12 if where == "journal" else 0) and read_contents(path).done.all()


def test_a_full_disk_on_the_command_line_is_one_line_exit_2_and_the_previous_cache_is_kept(
        tmp_path, tiny_timm_models, monkeypatch, capsys):
    """README: a full disk ends with `error: cannot write ...: No space left on device; free disk space, then
    run the same command again` and exit 2; the previous cache and the journal are left as they were."""
    import errno

    from medprobe.cache.store import CacheWriter
    from medprobe.cli import main

    root = many_images(tmp_path / "data", 20)
    args = ["extract", str(root), "--model", str(tiny_timm_models["resnet"]), "--cache-dir", str(tmp_path / "cache"),
            "--device", "cpu", "--precision", "fp32", "--batch-size", "4", "--workers", "0"]
    with pytest.raises(SystemExit) as first:
        main(args)
    assert first.value.code in (0, None)
    [path] = (tmp_path / "cache").rglob("*.h5")
    before = path.read_bytes()
    many_images(tmp_path / "more", 8, seed=1)
    for image in (tmp_path / "more").rglob("*.png"):
        image.rename(root / image.parent.name / f"new-{image.name}")
    capsys.readouterr()
    monkeypatch.setattr(CacheWriter, "write",
                        lambda *a: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(SystemExit) as full:
        main(args)
    err = capsys.readouterr().err
    error_lines = [line for line in err.splitlines() if "error" in line]  # beside the progress bar
    assert full.value.code == 2 and len(error_lines) == 1 and err.splitlines()[-1].startswith("error: cannot write ")
    assert "Traceback" not in err
    assert "No space left on device; free disk space, then run the same command again" in " ".join(err.split())
    assert path.read_bytes() == before and not path.with_name(path.name + ".partial").exists()
    assert len(list(journal_dir(path).glob("batch-*.npz"))) == 2  # the 8 new images' batches, kept
    monkeypatch.undo()
    with pytest.raises(SystemExit):
        main(args)
    assert "up to date (28 images)" in capsys.readouterr().out  # the journal committed first: nothing redone
    assert read_contents(path).done.sum() == 28

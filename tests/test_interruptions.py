"""Kill medprobe at random points (SIGKILL and SIGINT), resume, and check nothing was lost or corrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import blob_image
from PIL import Image

from medprobe.cache import read_contents, read_features
from medprobe.cache.journal import journal_dir
from medprobe.cache.manage import verify
from medprobe.data import load_dataset
from medprobe.extract.runner import extract, locate_cache

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def many_images(root: Path, count: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(count):
        label = i % 2
        (root / f"class{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(blob_image(rng, label, (96, 80))).save(root / f"class{label}" / f"{i:04d}.png")
    return root


def medprobe(*args) -> subprocess.Popen:
    # a session of its own: SIGINT goes to the whole group, DataLoader workers included, as Ctrl-C does
    return subprocess.Popen([sys.executable, "-m", "medprobe", *map(str, args)], env=ENV, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_new_batch(journal: Path, process: subprocess.Popen, timeout: float = 60) -> bool:
    """Until this process has journaled a batch (files left by a killed run are older than it)."""
    started, deadline = time.time(), time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        for batch in journal.glob("batch-*.npz") if journal.is_dir() else []:
            try:
                if batch.stat().st_mtime > started:
                    return True
            except FileNotFoundError:  # committed and removed meanwhile
                pass
        time.sleep(0.02)
    return False


def test_extraction_survives_24_random_kills(tmp_path):
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
    outcomes = []
    for attempt in range(60):  # until 24 stops landed (a run that finished first is no stop)
        if sum(code in (-9, 130) for _, code in outcomes) >= 24:
            break
        if path.exists() and read_contents(path).done.all() and not journal_dir(path).exists():
            path.unlink()  # all extracted between kills: start another cycle (the final check still holds)
        process = medprobe(*command)
        how = signal.SIGINT if attempt % 2 else signal.SIGKILL
        if attempt % 4 == 0:  # anywhere: start-up, planning, recovery, commit
            time.sleep(rng.uniform(0.2, 4.0))
        elif wait_for_new_batch(journal_dir(path), process):  # mid-extraction
            time.sleep(rng.uniform(0.0, 0.3))
        if process.poll() is None:
            os.killpg(process.pid, how)
        out, err = process.communicate(timeout=120)
        outcomes.append((how.name, process.returncode))
        if how == signal.SIGINT and process.returncode == 130:
            assert "run the same command again to resume" in err and "Traceback" not in err, err
        if path.exists():  # every stop leaves a complete, valid cache whose done rows are the right ones
            assert verify(path).ok
            contents = read_contents(path)
            done = [i for i, flag in zip(contents.ids, contents.done, strict=True) if flag]
            positions = [dataset.ids.index(i) for i in done]
            for pool in pools:
                assert np.array_equal(read_features(path, done, pool), expected[pool][positions])
    assert sum(code == -9 for _, code in outcomes) >= 8 and sum(code == 130 for _, code in outcomes) >= 8, outcomes
    final = medprobe(*command)
    out, err = final.communicate(timeout=300)
    assert final.returncode == 0, err
    assert read_contents(path).ids == read_contents(reference.path).ids  # same rows in the same order
    for pool in pools:
        assert np.array_equal(read_features(path, dataset.ids, pool), expected[pool])  # bit for bit
    assert not journal_dir(path).exists()


def test_finetune_resume_after_kills_equals_an_uninterrupted_run(tmp_path, tiny_timm_models):
    data = many_images(tmp_path / "data", 48)
    model = tiny_timm_models["resnet"]
    common = ["finetune", data, "--model", model, "--epochs", 8, "--batch-size", 8, "--workers", 0, "--fold", 0,
              "--folds", 3, "--precision", "fp32", "--device", "cpu", "--bootstrap", 50, "--patience", 10]
    started = time.monotonic()
    reference = medprobe(*common, "--out", tmp_path / "reference")
    assert reference.wait(timeout=300) == 0, reference.stderr.read()
    duration = time.monotonic() - started
    checkpoints = tmp_path / "resumed"
    rng = np.random.default_rng(1)
    kills = 0
    for _attempt in range(12):  # until 5 kills landed mid-run (a resumed run has less left to do)
        process = medprobe(*common, "--out", checkpoints, "--resume")
        time.sleep(rng.uniform(1.5, max(2.0, 0.6 * duration)))
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            kills += 1
        process.communicate(timeout=300)
        if kills == 5:
            break
    assert kills >= 3
    final = medprobe(*common, "--out", checkpoints, "--resume")
    assert final.wait(timeout=300) == 0, final.stderr.read()
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

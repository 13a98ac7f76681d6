"""The extraction pipeline: several backbones from one decode, per-backbone caches equal to one-backbone runs
bit for bit (also after kills), stage timing that names the slow stage, and reruns answered from the cache
alone, without torch."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from test_interruptions import forked, many_images, stop_once_it_saved
from torch_blocker import BLOCK_TORCH

from medprobe.cache import read_contents, read_features
from medprobe.cache.journal import Journal, journal_dir
from medprobe.cache.manage import verify
from medprobe.data import load_dataset
from medprobe.extract import loader as loader_module
from medprobe.extract import pipeline as pipeline_module
from medprobe.extract.runner import extract, extract_models
from medprobe.extract.settings import ExtractSettings

SETTINGS = ExtractSettings(device="cpu", precision="fp32", workers=0, batch_size=4)


def features_of(path, ids):
    pools = list(read_contents(path).dims)
    return {pool: read_features(path, ids, pool) for pool in pools}


def count_decodes(monkeypatch) -> list[str]:
    """Every sample the loader decodes (workers=0: in this process)."""
    decoded, original = [], loader_module.read_unit

    def counting(samples, unit, root):
        decoded.extend(samples[i].id for i in unit)
        return original(samples, unit, root)

    monkeypatch.setattr(loader_module, "read_unit", counting)
    return decoded


def test_three_backbones_decode_each_image_once_and_equal_one_backbone_runs(
        tmp_path, image_folder, tiny_timm_models, tiny_dinov2, monkeypatch):
    dataset = load_dataset(image_folder)
    models = [str(tiny_timm_models["resnet"]), str(tiny_dinov2), str(tiny_timm_models["vit"])]
    alone = [extract(dataset=dataset, model=m, cache_dir=tmp_path / f"alone{i}", show_progress=False, **vars(SETTINGS))
             for i, m in enumerate(models)]
    decoded = count_decodes(monkeypatch)
    together = extract_models(dataset, models, tmp_path / "together", SETTINGS, show_progress=False)
    assert sorted(decoded) == sorted(dataset.ids)  # one decode per image for all three backbones
    assert [r.extracted for r in together] == [len(dataset.ids)] * 3
    for one, shared in zip(alone, together, strict=True):
        assert shared.path != one.path and shared.path.name == one.path.name
        expected, got = features_of(one.path, dataset.ids), features_of(shared.path, dataset.ids)
        assert expected.keys() == got.keys()
        for pool in expected:
            assert np.array_equal(expected[pool], got[pool]), pool  # bit for bit
        assert read_contents(shared.path).attrs["images_per_second"] > 0


def test_only_the_backbones_that_need_an_image_get_it(tmp_path, image_folder, tiny_timm_models, tiny_dinov2,
                                                       monkeypatch):
    dataset = load_dataset(image_folder)
    cache = tmp_path / "cache"
    resnet, dino = str(tiny_timm_models["resnet"]), str(tiny_dinov2)
    half = dataset.without({s.id for s in dataset.samples[1::2]})
    extract_models(half, [resnet], cache, SETTINGS, show_progress=False)  # resnet has every other image
    decoded = count_decodes(monkeypatch)
    first, second = extract_models(dataset, [resnet, dino], cache, SETTINGS, show_progress=False)
    assert sorted(decoded) == sorted(dataset.ids)  # the union, each once
    assert (first.extracted, first.reused) == (len(dataset.ids) - len(half.ids), len(half.ids))
    assert second.extracted == len(dataset.ids)
    decoded.clear()
    again = extract_models(dataset, [resnet, dino], cache, SETTINGS, show_progress=False)
    assert decoded == [] and all(r.up_to_date for r in again)


def test_progress_and_cache_name_the_slow_stage(tmp_path, image_folder, tiny_timm_models, monkeypatch):
    dataset = load_dataset(image_folder)
    model = str(tiny_timm_models["resnet"])
    original_append, original_read = Journal.append, loader_module.read_unit

    def slow_append(self, *args):
        time.sleep(1.0)  # a slow disk: well above the three batches' forward time, even on a busy machine
        return original_append(self, *args)

    monkeypatch.setattr(Journal, "append", slow_append)
    report = extract_models(dataset, [model], tmp_path / "slow-disk", SETTINGS, show_progress=False)[0]
    attrs = read_contents(report.path).attrs
    assert attrs["extract_bottleneck"] == "write-bound", attrs["extract_stage_seconds"]
    monkeypatch.setattr(Journal, "append", original_append)

    def slow_read(*args):
        time.sleep(0.3)
        return original_read(*args)

    monkeypatch.setattr(loader_module, "read_unit", slow_read)
    report = extract_models(dataset, [model], tmp_path / "slow-decode", SETTINGS, show_progress=False)[0]
    attrs = read_contents(report.path).attrs
    assert attrs["extract_bottleneck"] == "decode-bound", attrs["extract_stage_seconds"]
    assert set(attrs["extract_stage_seconds"]) == {"decode", "transfer", "compute", "write"}
    assert attrs["extract_stage_seconds"]["transfer"] == 0.0  # no copy to a CPU
    monkeypatch.setattr(loader_module, "read_unit", original_read)

    class SlowCopy(pipeline_module._CopyTimer):  # a slow bus: what the CUDA events would time
        def to_device(self, pixels):
            began = time.perf_counter()
            time.sleep(0.5)
            self.host_seconds = time.perf_counter() - began
            return super().to_device(pixels)

        def seconds(self):
            return self.host_seconds

    monkeypatch.setattr(pipeline_module, "_CopyTimer", SlowCopy)
    report = extract_models(dataset, [model], tmp_path / "slow-copy", SETTINGS, show_progress=False)[0]
    stages = read_contents(report.path).attrs["extract_stage_seconds"]
    assert read_contents(report.path).attrs["extract_bottleneck"] == "transfer-bound", stages
    assert stages["transfer"] >= 0.5 * 3 and stages["compute"] < stages["transfer"], stages  # not counted twice


def cli_without_torch(*args) -> subprocess.CompletedProcess:
    script = BLOCK_TORCH + f"""
from medprobe.cli import main
try:
    main({[str(a) for a in args]!r})
finally:
    assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
"""
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.mark.parametrize("precision", ["auto", "fp32"])
def test_a_rerun_on_a_complete_cache_needs_no_torch(tmp_path, image_folder, tiny_timm_models, precision):
    dataset = load_dataset(image_folder)
    models = [str(tiny_timm_models["resnet"]), str(tiny_timm_models["vit"])]
    cache = tmp_path / "cache"
    extract_models(dataset, models, cache, ExtractSettings(device="cpu", precision=precision, workers=0),
                   show_progress=False)
    command = ["extract", image_folder, *[f"--model={m}" for m in models], "--cache-dir", cache,
               "--device", "cpu", "--precision", precision]
    rerun = cli_without_torch(*command)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.count(": up to date (12 images)") == 2, rerun.stdout
    # a changed image needs the backbone: with torch blocked that is one clear line, never "up to date"
    changed = dataset.samples[0].path
    changed.write_bytes(changed.read_bytes() + b"\0")
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    stale = cli_without_torch(*command)
    assert stale.returncode == 2 and "up to date" not in stale.stdout, (stale.stdout, stale.stderr)
    assert stale.stderr.count("\n") == 1 and "needs torch" in stale.stderr and "Traceback" not in stale.stderr


def test_an_auto_cache_made_for_another_request_is_not_taken_for_this_one(tmp_path, image_folder, tiny_timm_models):
    """`--precision auto` resolves on the hardware, which only torch knows; a cache made with an explicit
    precision must not answer for it without torch."""
    dataset = load_dataset(image_folder)
    model = str(tiny_timm_models["resnet"])
    cache = tmp_path / "cache"
    extract_models(dataset, [model], cache, SETTINGS, show_progress=False)  # precision fp32, asked explicitly
    rerun = cli_without_torch("extract", image_folder, "--model", model, "--cache-dir", cache, "--device", "cpu")
    assert rerun.returncode == 2 and "needs torch" in rerun.stderr, (rerun.stdout, rerun.stderr)


def test_two_backbones_killed_mid_run_resume_each_cache_bit_identically(tmp_path, tiny_dinov2):
    from conftest import save_tiny_timm

    data = many_images(tmp_path / "data", 320)
    slow = save_tiny_timm(tmp_path / "resnet18", "resnet18", input_size=64)  # slow enough for stops to land
    models = [str(slow), str(tiny_dinov2)]
    dataset = load_dataset(data)
    alone = [extract(dataset=dataset, model=m, cache_dir=tmp_path / f"alone{i}", show_progress=False, **vars(SETTINGS))
             for i, m in enumerate(models)]
    expected = [features_of(r.path, dataset.ids) for r in alone]
    cache = tmp_path / "cache"
    paths = [cache / r.path.parent.name / r.path.name for r in alone]
    command = ["extract", data, *[f"--model={m}" for m in models], "--cache-dir", cache, "--device", "cpu",
               "--precision", "fp32", "--batch-size", 4, "--workers", 1]
    rng = np.random.default_rng(1)
    landed = {"SIGKILL": 0, "SIGINT": 0}
    for _ in range(30):
        if min(landed.values()) >= 3:
            break
        how = signal.SIGINT if landed["SIGINT"] < landed["SIGKILL"] else signal.SIGKILL
        stop = stop_once_it_saved(command, journal_dir(paths[0]), "batch-*.npz", how, rng.uniform(0.0, 0.4))
        landed[how.name] += stop.landed
        if stop.returncode == 130:  # one line (checked by stop_once_it_saved) naming both backbones' progress
            assert stop.err.count(" images are cached in ") == 2, stop.err  # both backbones' progress
        for path, reference in zip(paths, expected, strict=True):
            if path.exists():
                assert verify(path).ok
                contents = read_contents(path)
                done = [i for i, flag in zip(contents.ids, contents.done, strict=True) if flag]
                positions = [dataset.ids.index(i) for i in done]
                for pool, values in reference.items():
                    assert np.array_equal(read_features(path, done, pool), values[positions])
        if stop.returncode == 0:  # both extracted to the end between stops: start another cycle
            shutil.rmtree(cache)
    assert min(landed.values()) >= 3, landed
    final = forked(*command)
    _, err = final.communicate(timeout=300)
    assert final.returncode == 0, err
    for path, reference in zip(paths, expected, strict=True):
        assert read_contents(path).done.all() and not journal_dir(path).exists()
        for pool, values in reference.items():
            assert np.array_equal(read_features(path, dataset.ids, pool), values), pool

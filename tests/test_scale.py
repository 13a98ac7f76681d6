"""Scale: sharded extraction under torchrun, GPU-side decoding's pipeline (run on the CPU), probes on
Dask and Ray clusters, out-of-core probes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from medprobe.cache import read_contents
from medprobe.data import load_dataset
from medprobe.errors import MedprobeError
from medprobe.extract import device_decode, distributed
from medprobe.extract.runner import extract

TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"


def medprobe_env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def single_process(dataset, model, cache_dir, **kwargs):
    options = dict(device="cpu", precision="fp32", workers=0, batch_size=4, show_progress=False)
    return extract(dataset=dataset, model=str(model), cache_dir=cache_dir, **{**options, **kwargs})


def cli_extract(data, model, cache_dir, *extra) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "medprobe", "extract", str(data), "--model", str(model), "--cache-dir",
               str(cache_dir), "--device", "cpu", "--precision", "fp32", "--batch-size", "4", "--workers", "0",
               *extra]
    return subprocess.run(command, capture_output=True, text=True, env=medprobe_env(), timeout=300)


def assert_same_cache(left: Path, right: Path) -> None:
    """Same ids, order, sources and done flags, and features equal bit for bit."""
    with h5py.File(left, "r") as a, h5py.File(right, "r") as b:
        for name in ("ids", "source_fingerprint", "source_stat", "done"):
            np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)
        assert sorted(a["features"]) == sorted(b["features"])
        for pool in a["features"]:
            np.testing.assert_array_equal(a["features"][pool][()].view(np.uint16),
                                          b["features"][pool][()].view(np.uint16), err_msg=pool)


@pytest.fixture
def larger_folder(tmp_path: Path) -> Path:
    """30 images (PNG and JPEG) in 2 classes: 8 batches of 4, so 2 ranks get 4 blocks each."""
    from conftest import blob_image

    rng = np.random.default_rng(3)
    root = tmp_path / "larger"
    for label, name in enumerate(["a", "b"]):
        (root / name).mkdir(parents=True)
        for i in range(15):
            suffix = "png" if i % 3 else "jpg"
            Image.fromarray(blob_image(rng, label, (40 + i, 44))).save(root / name / f"i{i:02d}.{suffix}")
    return root


def test_shards_are_whole_batches_dealt_round_robin():
    positions = list(range(10))
    assert distributed.shard(positions, 3, 0, 2) == [0, 1, 2, 6, 7, 8]
    assert distributed.shard(positions, 3, 1, 2) == [3, 4, 5, 9]
    together = sorted(distributed.shard(positions, 3, 0, 3) + distributed.shard(positions, 3, 1, 3)
                      + distributed.shard(positions, 3, 2, 3))
    assert together == positions


def test_two_processes_write_the_single_process_cache(tiny_dinov2, larger_folder, tmp_path):
    reference = single_process(load_dataset(larger_folder), tiny_dinov2, tmp_path / "one")
    result = cli_extract(larger_folder, tiny_dinov2, tmp_path / "two", "--gpus", "2")
    assert result.returncode == 0, result.stderr
    assert "extracted 30, reused 0" in result.stdout and result.stdout.count("extracted") == 1
    sharded = next((tmp_path / "two").rglob("*.h5"))
    assert sharded.name == reference.path.name
    assert_same_cache(reference.path, sharded)
    assert read_contents(sharded).attrs["processes"] == 2
    assert not list((tmp_path / "two").rglob("*.parts"))  # part files merged and removed
    again = cli_extract(larger_folder, tiny_dinov2, tmp_path / "two", "--gpus", "2")
    assert again.returncode == 0 and "up to date (30 images)" in again.stdout


def test_killed_rank_resumes_from_its_part_file(tiny_dinov2, larger_folder, tmp_path):
    reference = single_process(load_dataset(larger_folder), tiny_dinov2, tmp_path / "one")
    killed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         str(TESTS / "interrupted_rank.py"), str(larger_folder), str(tiny_dinov2), str(tmp_path / "two")],
        capture_output=True, text=True, env=medprobe_env(), timeout=300)
    assert killed.returncode != 0
    part = next((tmp_path / "two").rglob("rank1.h5"))
    assert read_contents(part).done.sum() == 8  # rank 1's two flushed batches survived the kill
    resumed = cli_extract(larger_folder, tiny_dinov2, tmp_path / "two", "--gpus", "2")
    assert resumed.returncode == 0, resumed.stderr
    extracted, reused = (int(n) for n in re.search(r"extracted (\d+), reused (\d+)", resumed.stdout).groups())
    assert extracted + reused == 30 and reused >= 8
    assert_same_cache(reference.path, next((tmp_path / "two").rglob("*.h5")))


def test_bad_image_is_reported_once_by_rank_zero(tiny_dinov2, larger_folder, tmp_path):
    (larger_folder / "a" / "i04.png").write_bytes(b"not an image")
    result = cli_extract(larger_folder, tiny_dinov2, tmp_path / "cache", "--gpus", "2")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 2 and "i04.png" in lines[0] and "--gpus 2 failed" in lines[1]
    assert not list((tmp_path / "cache").rglob("*.h5"))


def test_gpus_without_gpus_is_refused(capsys, image_folder, tmp_path):
    from medprobe.cli import main

    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine has the GPUs")
    with pytest.raises(SystemExit) as info:
        main(["extract", str(image_folder), "--model", "efficientnet-lite0", "--gpus", "2", "--cache-dir",
              str(tmp_path)])
    assert info.value.code == 2 and "--device cpu to run 2 CPU processes" in capsys.readouterr().err


def photo_jpeg(size: int = 300, seed: int = 0) -> bytes:
    """A smooth photo-like RGB JPEG (natural-image statistics, so resampling filters matter)."""
    import io

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size + 40] / size
    base = 0.5 + 0.3 * np.sin(6 * xx + seed) * np.cos(4 * yy) + rng.normal(0, 0.05, xx.shape)
    pixels = (np.clip(np.stack([base, base * 0.9, base * 0.8], -1), 0, 1) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("resize_impl", ["pil", "torch"])
def test_tensor_preprocessing_matches_the_pil_path(interpolation, resize_impl):
    """What --decode gpu runs on the device (decode_jpeg, tensor resize, crop, normalise), here on the CPU,
    against the CPU path (PIL decode and the backbone's own resize)."""
    import io

    import torchvision.transforms.v2.functional as tvf
    from torchvision.io import ImageReadMode, decode_jpeg

    from medprobe.models.preprocess import Preprocessing
    from medprobe.models.transforms import TENSOR_RESIZE_MODES, ImageTransform

    data = photo_jpeg()
    transform = ImageTransform(Preprocessing(resize=256, crop=(224, 224), interpolation=interpolation,
                                             resize_impl=resize_impl))
    reference = transform(Image.open(io.BytesIO(data)).convert("RGB"))
    decoded = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    ours = transform.normalise(transform.crop(transform.resize_tensor(decoded)))
    level = 1 / 255 / min(transform.prep.std)  # one 8-bit level, normalised
    assert ours.shape == reference.shape == (3, 224, 224)
    assert (ours - reference).abs().max() <= level + 1e-6
    # a GPU resizes uint8 through float32 and rounds back: still within one level of PIL
    height, width = decoded.shape[-2] * 256 // decoded.shape[-2], decoded.shape[-1] * 256 // decoded.shape[-2]
    through_float = tvf.resize(decoded.float(), [height, width], interpolation=TENSOR_RESIZE_MODES[interpolation],
                               antialias=True).round().clamp(0, 255).to(torch.uint8)
    ours = transform.normalise(transform.crop(through_float))
    assert (ours - reference).abs().max() <= level + 1e-6


def test_device_decoding_path_gives_the_cpu_features(tiny_dinov2, larger_folder, tmp_path, monkeypatch):
    """The --decode gpu pipeline run with the CPU as the decoding device: JPEGs as bytes through the
    loader, a batched decode_jpeg, on-device resize; PNGs and an undecodable JPEG take the CPU path."""
    bad = larger_folder / "b" / "i03.jpg"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # header intact, pixels cut off
    dataset = load_dataset(larger_folder)
    with pytest.raises(MedprobeError, match="failed to decode.*i03.jpg"):
        single_process(dataset, tiny_dinov2, tmp_path / "cpu", workers=1)
    monkeypatch.setattr(device_decode, "DECODE_DEVICE_TYPES", ("cuda", "cpu"))
    with pytest.raises(MedprobeError, match="failed to decode.*i03.jpg"):
        single_process(dataset, tiny_dinov2, tmp_path / "device", workers=1, decode="gpu")
    cpu_path, device_path = (next((tmp_path / name).rglob("*.h5")) for name in ("cpu", "device"))
    assert read_contents(device_path).attrs["decode"] == "gpu"
    assert read_contents(cpu_path).attrs["decode"] == "cpu"
    with h5py.File(cpu_path, "r") as a, h5py.File(device_path, "r") as b:
        np.testing.assert_array_equal(a["done"][()], b["done"][()])
        assert a["done"][()].sum() == 29
        np.testing.assert_array_equal(a["source_fingerprint"][()], b["source_fingerprint"][()])
        # on the CPU, decode_jpeg is libjpeg-turbo as in PIL and the uint8 resize equals PIL's: every row must
        # be the same, which checks that positions, fallbacks and errors line up (a GPU differs by a level)
        for pool in ("cls", "mean", "cls4"):
            np.testing.assert_array_equal(a["features"][pool][()], b["features"][pool][()])


def test_gpu_decoding_needs_a_gpu(tiny_dinov2, image_folder, tmp_path):
    with pytest.raises(MedprobeError, match="--decode gpu needs a CUDA device"):
        single_process(load_dataset(image_folder), tiny_dinov2, tmp_path, decode="gpu")
    with pytest.raises(MedprobeError, match="--decode 'nvjpeg' is not one of cpu, gpu"):
        single_process(load_dataset(image_folder), tiny_dinov2, tmp_path, decode="nvjpeg")

"""Scale: sharded extraction under torchrun, GPU-side decoding's pipeline (run on the CPU), probes on
Dask and Ray clusters, out-of-core probes."""

from __future__ import annotations

import os
import re
import shutil
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


def test_process_i_uses_gpu_i_and_the_cores_are_shared_between_the_ranks_loaders(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [distributed.rank_device(device, rank, 2) for device in ("cuda", "auto") for rank in (0, 1)] == [
        "cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert distributed.rank_device("cpu", 1, 2) == "cpu"
    with pytest.raises(MedprobeError, match="only 2 GPU.* use --gpus 2"):
        distributed.rank_device("cuda", 2, 3)
    with pytest.raises(MedprobeError, match="--device cuda:0 pins one GPU, but 2 processes run; use --device cuda"):
        distributed.rank_device("cuda:0", 0, 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.rank_device("auto", 1, 2) == "auto"  # no GPU: the runner's own device choice (the CPU)
    workers = {}
    for cores, world in ((16, 2), (16, 4), (64, 2), (2, 2), (3, 1)):
        monkeypatch.setattr(distributed.os, "cpu_count", lambda cores=cores: cores)
        workers[cores, world] = distributed.default_rank_workers(world)
    # (cores / N) - 1 per process, at most 8, at least 1
    assert workers == {(16, 2): 7, (16, 4): 3, (64, 2): 8, (2, 2): 1, (3, 1): 2}


def test_two_processes_write_the_single_process_caches(tiny_dinov2, tiny_timm_models, larger_folder, tmp_path):
    """Two backbones in one sharded command: each cache equals its single-process file."""
    resnet = tiny_timm_models["resnet"]
    references = [single_process(load_dataset(larger_folder), model, tmp_path / "one")
                  for model in (tiny_dinov2, resnet)]
    result = cli_extract(larger_folder, tiny_dinov2, tmp_path / "two", "--gpus", "2", "--model", resnet)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("extracted 30, reused 0") == 2, result.stdout
    for reference in references:
        sharded = tmp_path / "two" / reference.path.parent.name / reference.path.name
        assert_same_cache(reference.path, sharded)
        assert read_contents(sharded).attrs["processes"] == 2
    assert not list((tmp_path / "two").rglob("*.journal"))  # every rank's batches committed
    again = cli_extract(larger_folder, tiny_dinov2, tmp_path / "two", "--gpus", "2", "--model", resnet)
    assert again.returncode == 0 and again.stdout.count("up to date (30 images)") == 2, again.stdout


def test_killed_rank_resumes_from_the_journal(tiny_dinov2, larger_folder, tmp_path):
    reference = single_process(load_dataset(larger_folder), tiny_dinov2, tmp_path / "one")
    killed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         str(TESTS / "interrupted_rank.py"), str(larger_folder), str(tiny_dinov2), str(tmp_path / "two")],
        capture_output=True, text=True, env=medprobe_env(), timeout=300)
    assert killed.returncode != 0
    journal = next((tmp_path / "two").rglob("*.journal"))
    assert len(list(journal.glob("batch-r1-*.npz"))) == 2  # rank 1's two written batches survived the kill
    # mid-run, rank 0 held the lock: another process's extraction into that cache was refused
    assert "another medprobe process is extracting into" in (tmp_path / "second-writer.txt").read_text()
    alone = tmp_path / "alone"
    shutil.copytree(tmp_path / "two", alone)  # the same journal, resumed by one process instead of two
    resumed_alone = single_process(load_dataset(larger_folder), tiny_dinov2, alone)
    assert resumed_alone.extracted + resumed_alone.reused == 30 and resumed_alone.reused >= 8
    assert_same_cache(reference.path, resumed_alone.path)
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


def extracted_both_ways(model, folder: Path, tmp_path: Path, device: str) -> tuple[Path, Path]:
    """`folder` with one JPEG cut short (header intact, pixels cut off), extracted on `device` with CPU and with
    device decoding: both stop on that JPEG's decode error with the other 29 images journalled. The CPU- and
    device-decoded caches, checked to hold the same rows and sources and to record their decoding."""
    bad = folder / "b" / "i03.jpg"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    dataset = load_dataset(folder)
    for decode in ("cpu", "gpu"):
        with pytest.raises(MedprobeError, match="failed to decode.*i03.jpg"):
            single_process(dataset, model, tmp_path / decode, device=device, workers=1, decode=decode)
    cpu_path, device_path = (next((tmp_path / name).rglob("*.h5")) for name in ("cpu", "gpu"))
    assert read_contents(device_path).attrs["decode"] == "gpu"
    assert read_contents(cpu_path).attrs["decode"] == "cpu"
    with h5py.File(cpu_path, "r") as a, h5py.File(device_path, "r") as b:
        np.testing.assert_array_equal(a["done"][()], b["done"][()])
        assert a["done"][()].sum() == 29
        np.testing.assert_array_equal(a["source_fingerprint"][()], b["source_fingerprint"][()])
    return cpu_path, device_path


def test_device_decoding_path_gives_the_cpu_features(tiny_dinov2, larger_folder, tmp_path, monkeypatch):
    """The --decode gpu pipeline run with the CPU as the decoding device: JPEGs as bytes through the
    loader, a batched decode_jpeg, on-device resize; PNGs and an undecodable JPEG take the CPU path."""
    monkeypatch.setattr(device_decode, "DECODE_DEVICE_TYPES", ("cuda", "cpu"))
    cpu_path, device_path = extracted_both_ways(tiny_dinov2, larger_folder, tmp_path, "cpu")
    with h5py.File(cpu_path, "r") as a, h5py.File(device_path, "r") as b:
        # on the CPU, decode_jpeg is libjpeg-turbo as in PIL and the uint8 resize equals PIL's: every row must
        # be the same, which checks that positions, fallbacks and errors line up (a GPU differs by a level)
        for pool in ("cls", "mean", "cls4"):
            np.testing.assert_array_equal(a["features"][pool][()], b["features"][pool][()])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (nvJPEG); CI has none")
def test_device_decoding_on_cuda_gives_features_close_to_the_cpu_decoded_ones(tiny_dinov2, larger_folder, tmp_path):
    """README (--decode gpu) on a real GPU, DECODE_DEVICE_TYPES as shipped: the same rows, sources and errors as
    CPU decoding, and features within the decoders' rounding (nvJPEG's IDCT may differ from libjpeg-turbo's by
    a grey level; benchmarks/gpu_decode.py measured a CLS cosine >= 0.99992 on an H200)."""
    from test_fidelity import cosine

    cpu_path, device_path = extracted_both_ways(tiny_dinov2, larger_folder, tmp_path, "cuda")
    with h5py.File(cpu_path, "r") as a, h5py.File(device_path, "r") as b:
        done = a["done"][()].astype(bool)
        for pool in ("cls", "mean"):
            left, right = (f["features"][pool][()][done].astype(np.float64) for f in (a, b))
            lowest = cosine(left, right).min()
            assert lowest >= 0.999, (pool, lowest)


def test_device_decoding_reads_tiff_dicom_and_volume_slices_on_the_cpu(tiny_dinov2, tmp_path, monkeypatch):
    """README: under --decode gpu only JPEG bytes reach the device decoder; PNG, TIFF, DICOM and volume slices
    are decoded on the CPU, so their features equal the CPU path's bit for bit."""
    import pydicom
    from conftest import blob_image
    from volume_helpers import brain, save_nifti, write_rows, write_spec

    rng = np.random.default_rng(5)
    images = tmp_path / "images"
    dicom = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
    for label, name in enumerate(["a", "b"]):
        (images / name).mkdir(parents=True)
        for suffix in ("jpg", "png", "tif"):
            Image.fromarray(blob_image(rng, label, (40, 44))).save(images / name / f"{name}.{suffix}")
        shutil.copy(dicom, images / name / f"{name}.dcm")
    volumes = tmp_path / "volumes"
    for grade, name in enumerate(["a", "b"]):
        save_nifti(volumes / f"{name}.nii.gz", brain(rng, grade))
    write_rows(volumes / "rows.csv", [{"path": "a.nii.gz", "label": "a"}, {"path": "b.nii.gz", "label": "b"}])
    device_decoded: list[str] = []
    real_decode = device_decode.DeviceDecodeLoader._decode_jpegs

    def counted_decode(self, encoded, paths):
        device_decoded.extend(Path(path).name for path in paths)
        return real_decode(self, encoded, paths)

    monkeypatch.setattr(device_decode, "DECODE_DEVICE_TYPES", ("cuda", "cpu"))
    monkeypatch.setattr(device_decode.DeviceDecodeLoader, "_decode_jpegs", counted_decode)
    datasets = {"images": load_dataset(images),
                "volumes": load_dataset(write_spec(volumes / "spec.toml", manifest="rows.csv", slices="middle:3"))}
    assert len(datasets["images"].samples) == 8 and len(datasets["volumes"].samples) == 6
    for name, dataset in datasets.items():
        single_process(dataset, tiny_dinov2, tmp_path / "cpu" / name)
        single_process(dataset, tiny_dinov2, tmp_path / "device" / name, workers=1, decode="gpu")
        cpu_path, device_path = (next((tmp_path / side / name).rglob("*.h5")) for side in ("cpu", "device"))
        with h5py.File(cpu_path, "r") as a, h5py.File(device_path, "r") as b:
            assert a["done"][()].all() and b["done"][()].all()
            for pool in ("cls", "mean"):
                np.testing.assert_array_equal(a["features"][pool][()], b["features"][pool][()])
    assert sorted(device_decoded) == ["a.jpg", "b.jpg"]


def test_gpu_decoded_features_get_a_cache_file_of_their_own(tiny_dinov2, image_folder, tmp_path):
    from medprobe.extract.runner import locate_cache

    dataset = load_dataset(image_folder)
    cpu, gpu = (locate_cache(dataset=dataset, model=str(tiny_dinov2), cache_dir=tmp_path, device="cpu",
                             precision="fp32", decode=decode).path for decode in ("cpu", "gpu"))
    assert cpu.parent == gpu.parent and cpu.name != gpu.name


def test_gpu_decoding_refuses_a_backbone_resizing_with_a_pil_only_filter(tiny_dinov2, image_folder, tmp_path,
                                                                        monkeypatch):
    import json
    import shutil

    lanczos = tmp_path / "lanczos-dinov2"
    shutil.copytree(tiny_dinov2, lanczos)
    config = lanczos / "preprocessor_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "resample": 1}))  # PIL's LANCZOS
    monkeypatch.setattr(device_decode, "DECODE_DEVICE_TYPES", ("cuda", "cpu"))
    dataset = load_dataset(image_folder)
    with pytest.raises(MedprobeError, match="resizes with lanczos, which only PIL implements; use --decode cpu"):
        single_process(dataset, lanczos, tmp_path / "cache", decode="gpu")
    assert not list((tmp_path / "cache").rglob("*.h5"))
    single_process(dataset, tiny_dinov2, tmp_path / "bicubic", decode="gpu")  # the same set-up, a bicubic backbone


def test_gpu_decoding_needs_a_gpu(tiny_dinov2, image_folder, tmp_path):
    with pytest.raises(MedprobeError, match="--decode gpu needs a CUDA device"):
        single_process(load_dataset(image_folder), tiny_dinov2, tmp_path, decode="gpu")
    with pytest.raises(MedprobeError, match="--decode 'nvjpeg' is not one of cpu, gpu"):
        single_process(load_dataset(image_folder), tiny_dinov2, tmp_path, decode="nvjpeg")


# --- probes on a cluster and out of core -------------------------------------------------------------------------


def clustered_study(root: Path, cache_dir: Path, n_per_class: int = 40, n_classes: int = 3, dim: int = 16,
                    spread: float = 1.0, seed: int = 0):
    from probe_helpers import synthetic_study

    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    features = rng.normal(0, 1, (n_classes, dim))[labels] + spread * rng.normal(0, 1, (len(labels), dim))
    return synthetic_study(root, cache_dir, [f"class{c}" for c in labels], features.astype(np.float32))


def run_probe(dataset, cache_dir, out_dir, **settings):
    from medprobe.probe.runner import ProbeSettings, probe

    options = {"bootstrap": 200, "classifiers": ("logreg",), "n_jobs": 2, **settings}
    return probe(dataset=dataset, models=None, cache_dir=cache_dir, out_dir=out_dir,
                 settings=ProbeSettings(**options), show_progress=False)


def predictions(record: dict) -> str:
    return (Path(record["record_path"]).parent / record["predictions"]).read_text()


def assert_same_records(left: list[dict], right: list[dict]) -> None:
    assert [r["method"] for r in left] == [r["method"] for r in right]
    for a, b in zip(left, right, strict=True):
        assert a["hyperparameters"] == b["hyperparameters"], a["method"]
        assert a["metrics"] == b["metrics"], a["method"]
        assert predictions(a) == predictions(b), a["method"]


def test_dask_cluster_gives_the_local_records(tmp_path, monkeypatch):
    """README: the records equal the local ones, and the feature matrix is sent to the cluster once per round
    of tasks (joblib.Parallel call), not once per task: Client.scatter counted in this process."""
    import joblib

    from medprobe.probe import runner

    distributed_lib = pytest.importorskip("distributed")
    dataset = clustered_study(tmp_path / "d", tmp_path / "cache")
    classifiers = ("logreg", "svm", "knn")
    local = run_probe(dataset, tmp_path / "cache", tmp_path / "local", classifiers=classifiers)
    rounds, scattered = [], []

    class CountedRounds(joblib.Parallel):
        def __call__(self, iterable):
            tasks = list(iterable)
            rounds.append(len(tasks))
            return super().__call__(tasks)

    real_scatter = distributed_lib.Client.scatter

    def counted_scatter(self, data, *args, **kwargs):
        scattered.append(getattr(data, "shape", None))
        return real_scatter(self, data, *args, **kwargs)

    with distributed_lib.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      dashboard_address=None) as cluster:
        monkeypatch.setattr(runner, "Parallel", CountedRounds)
        monkeypatch.setattr(distributed_lib.Client, "scatter", counted_scatter)
        remote = run_probe(dataset, tmp_path / "cache", tmp_path / "dask", classifiers=classifiers,
                           backend="dask", scheduler=cluster.scheduler_address)
        monkeypatch.undo()
        streamed_local = run_probe(dataset, tmp_path / "cache", tmp_path / "sl", out_of_core=True)
        streamed_remote = run_probe(dataset, tmp_path / "cache", tmp_path / "sd", out_of_core=True, backend="dask",
                                    scheduler=cluster.scheduler_address)
    assert_same_records(local, remote)
    matrix_sent = scattered.count((len(dataset.ids), remote[0]["feature_dim"]))
    assert matrix_sent == len(rounds) == 2 * len(classifiers)  # each classifier: its search round, its fits round
    assert sum(rounds) > 3 * len(rounds)  # rounds of many tasks: fold x search part, then a fit per fold
    assert_same_records(streamed_local, streamed_remote)
    assert remote[0]["timings"]["backend"] == f"dask {cluster.scheduler_address}"
    assert local[0]["timings"]["backend"] == "local"


def test_ray_cluster_gives_the_local_records(tmp_path):
    """README: the records of all three classifiers equal the local ones on a Ray instance."""
    ray = pytest.importorskip("ray")
    dataset = clustered_study(tmp_path / "d", tmp_path / "cache")
    classifiers = ("logreg", "svm", "knn")
    local = run_probe(dataset, tmp_path / "cache", tmp_path / "local", classifiers=classifiers)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = run_probe(dataset, tmp_path / "cache", tmp_path / "ray", classifiers=classifiers,
                           backend="ray")
    finally:
        ray.shutdown()
    assert_same_records(local, remote)
    assert remote[0]["timings"]["backend"] == "ray local"


@pytest.mark.parametrize("settings, message", [
    ({"backend": "spark"}, "--backend 'spark' is not one of local, dask, ray"),
    ({"backend": "dask"}, "--backend dask needs --scheduler ADDRESS"),
    ({"scheduler": "tcp://127.0.0.1:1"}, "needs --backend dask or ray"),
    ({"backend": "dask", "scheduler": "tcp://127.0.0.1:1"}, "no Dask scheduler answered"),
])
def test_backend_mistakes_are_one_clear_error(tmp_path, settings, message, monkeypatch):
    pytest.importorskip("distributed")
    from medprobe.probe import backends

    monkeypatch.setattr(backends, "CONNECT_TIMEOUT_S", 2)
    dataset = clustered_study(tmp_path / "d", tmp_path / "cache", n_per_class=10)
    with pytest.raises(MedprobeError, match=re.escape(message)):
        run_probe(dataset, tmp_path / "cache", tmp_path / "out", **settings)


def test_feature_blocks_read_exactly_what_memory_holds(tmp_path):
    """Blocks (in order and shuffled) equal the in-memory matrix, also for a cache whose rows are in another
    order than the dataset (slice reads, and scattered row lists) and for two fused pools."""
    from probe_helpers import write_cache, write_manifest

    from medprobe.models.registry import resolve_model
    from medprobe.probe.features import CacheRef, feature_stream

    labels = [f"c{i % 2}" for i in range(700)]
    dataset = load_dataset(write_manifest(tmp_path / "d", labels))
    rng = np.random.default_rng(0)
    cls, mean = rng.normal(size=(700, 5)).astype(np.float16), rng.normal(size=(700, 3)).astype(np.float16)
    path = write_cache(dataset, tmp_path / "cache", "dinov2-small", {"cls": cls, "mean": mean})
    ref = CacheRef(resolve_model("dinov2-small").name, path, read_contents(path).attrs)
    ids = list(reversed(dataset.ids))  # the sample order differs from the cache's row order
    stream, _ = feature_stream([dataset], [[ref]], "cls+mean", ids)
    whole = stream.matrix()
    np.testing.assert_array_equal(whole, np.hstack([cls, mean])[::-1].astype(np.float32))
    scattered = np.sort(rng.choice(700, 90, replace=False))  # blocks far sparser than their span
    for positions, order in ((np.arange(700), None), (scattered, None), (np.arange(700), rng)):
        seen = []
        for block, features in stream.blocks(positions, 256, rng=order):
            np.testing.assert_array_equal(features, whole[block])
            assert len(block) <= 256 and len(np.unique(block // 256)) == 1
            seen.extend(block)
        assert sorted(seen) == list(positions)


def test_out_of_core_logreg_is_close_to_in_memory(tmp_path):
    dataset = clustered_study(tmp_path / "d", tmp_path / "cache", n_per_class=150, spread=2.5)
    memory = run_probe(dataset, tmp_path / "cache", tmp_path / "memory")[0]
    streamed = run_probe(dataset, tmp_path / "cache", tmp_path / "stream", out_of_core=True, save_model=True)[0]
    assert streamed["method"] == "logreg-sgd" and streamed["out_of_core"]["reason"] == "flag"
    assert {"alpha", "val_balanced_accuracy"} <= set(streamed["hyperparameters"][0])
    in_memory, out_of_core = (r["metrics"]["balanced_accuracy"]["value"] for r in (memory, streamed))
    assert 0.6 < in_memory < 0.98  # a problem on which the two can differ
    assert abs(out_of_core - in_memory) < 0.05
    again = run_probe(dataset, tmp_path / "cache", tmp_path / "again", out_of_core=True)[0]
    assert predictions(again) == predictions(streamed)  # seeded block order: reproducible
    import csv

    import joblib

    from medprobe.cache import read_features

    saved = joblib.load(Path(streamed["record_path"]).with_name(streamed["model_file"]))
    rows = [row for row in csv.DictReader(predictions(streamed).splitlines()) if row["fold"] == "0"]
    features = read_features(Path(streamed["features"][0]["cache"]), [row["id"] for row in rows], "cls")
    features = np.hstack([features, read_features(Path(streamed["features"][0]["cache"]), [row["id"] for row in rows],
                                                  "mean")])
    scores = saved["fold_models"][0].scores(features, len(saved["classes"]))
    assert [saved["classes"][i] for i in scores.argmax(1)] == [row["prediction"] for row in rows]


def test_out_of_core_is_chosen_above_the_memory_threshold(tmp_path):
    dataset = clustered_study(tmp_path / "d", tmp_path / "cache", n_per_class=20)
    record = run_probe(dataset, tmp_path / "cache", tmp_path / "out", memory_fraction=1e-9)[0]
    assert record["method"] == "logreg-sgd" and record["out_of_core"]["reason"] == "memory"
    assert record["out_of_core"]["feature_matrix_bytes"] == 60 * 16 * 4
    with pytest.raises(MedprobeError, match="only logreg supports \\(not svm\\); use --clf logreg"):
        run_probe(dataset, tmp_path / "cache", tmp_path / "out", memory_fraction=1e-9, classifiers=("logreg", "svm"))
    with pytest.raises(MedprobeError, match="only logreg supports \\(not knn\\); use --clf logreg"):
        run_probe(dataset, tmp_path / "cache", tmp_path / "out", out_of_core=True, classifiers=("knn",))
    with pytest.raises(MedprobeError, match="--shots does not support"):
        run_probe(dataset, tmp_path / "cache", tmp_path / "out", out_of_core=True, shots=(4,))
    assert run_probe(dataset, tmp_path / "cache", tmp_path / "out")[0]["method"] == "logreg"


def test_the_default_threshold_is_a_quarter_of_available_memory(tmp_path, monkeypatch):
    from medprobe.probe import streaming
    from medprobe.probe.runner import ProbeSettings

    dataset = clustered_study(tmp_path / "d", tmp_path / "cache", n_per_class=20)
    matrix_bytes = 60 * 16 * 4
    assert ProbeSettings().memory_fraction == 0.25
    monkeypatch.setattr(streaming, "available_memory", lambda: 4 * matrix_bytes)
    assert run_probe(dataset, tmp_path / "cache", tmp_path / "fits")[0]["method"] == "logreg"
    monkeypatch.setattr(streaming, "available_memory", lambda: 4 * matrix_bytes - 1)
    record = run_probe(dataset, tmp_path / "cache", tmp_path / "streams")[0]
    assert record["method"] == "logreg-sgd" and record["out_of_core"]["reason"] == "memory"
    assert record["out_of_core"]["available_memory_bytes"] == 4 * matrix_bytes - 1


def test_out_of_core_sgd_sees_blocks_never_the_whole_matrix(tmp_path, monkeypatch):
    from sklearn.linear_model import SGDClassifier

    from medprobe.data.splits import dataset_splits
    from medprobe.probe import streaming

    dataset = clustered_study(tmp_path / "d", tmp_path / "cache", n_per_class=20)
    record = run_probe(dataset, tmp_path / "cache", tmp_path / "default", out_of_core=True)[0]
    assert record["out_of_core"]["block_rows"] == 8192 and record["out_of_core"]["epochs"] == 5
    np.testing.assert_allclose(record["out_of_core"]["alpha_grid"], [1, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6])
    rows_seen = []
    original = SGDClassifier.partial_fit

    def counting(self, X, y, **kwargs):
        rows_seen.append(len(X))
        return original(self, X, y, **kwargs)

    monkeypatch.setattr(SGDClassifier, "partial_fit", counting)
    monkeypatch.setattr(streaming, "BLOCK_ROWS", 8)  # 60 samples: several blocks per pass
    record = run_probe(dataset, tmp_path / "cache", tmp_path / "blocks", out_of_core=True, n_jobs=1)[0]
    assert record["out_of_core"]["block_rows"] == 8 and max(rows_seen) <= 8
    folds = dataset_splits(dataset).folds  # the probe's own splits (5 folds, seed 0)
    assert len(record["hyperparameters"]) == len(folds)
    # 5 passes: 7 search models over train, then the chosen alpha over train+val, in every fold
    assert sum(rows_seen) == sum(5 * (7 * len(f.train) + len(f.train) + len(f.val)) for f in folds)


def test_cluster_and_out_of_core_probes_never_import_torch(tmp_path):
    pytest.importorskip("distributed")
    from torch_blocker import BLOCK_TORCH

    dataset = clustered_study(tmp_path / "d", tmp_path / "cache", n_per_class=20)
    script = BLOCK_TORCH + f"""
from distributed import LocalCluster
from medprobe.cli import main
with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
    try:
        main(["probe", {str(dataset.source)!r}, "--cache-dir", {str(tmp_path / "cache")!r}, "--out",
              {str(tmp_path / "out")!r}, "--bootstrap", "50", "--out-of-core", "--backend", "dask", "--scheduler",
              cluster.scheduler_address])
    except SystemExit as exc:
        assert not exc.code, exc.code
import sys
assert "torch" not in sys.modules
print("no torch")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=medprobe_env(),
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "logreg-sgd" in result.stdout and "no torch" in result.stdout

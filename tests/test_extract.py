from __future__ import annotations

import os
import time

import h5py
import numpy as np
import pytest
from PIL import Image

from medprobe.cache import read_contents, read_features
from medprobe.data import load_dataset
from medprobe.errors import Interrupted, MedprobeError
from medprobe.extract import runner
from medprobe.extract.runner import extract


def run(dataset, model, cache_dir, **kwargs):
    options = dict(device="cpu", precision="fp32", workers=0, batch_size=4, show_progress=False)
    options.update(kwargs)
    return extract(dataset=dataset, model=str(model), cache_dir=cache_dir, **options)


@pytest.mark.parametrize("name, pools", [
    ("resnet", {"gap": 96}), ("vgg", {"gap": 4096}), ("densenet", {"gap": 17}),
    ("vit", {"cls": 64, "mean": 64, "cls4": 256}),
])
def test_timm_backbones_extract_end_to_end(name, pools, tiny_timm_models, image_folder, cache_dir):
    dataset = load_dataset(image_folder)
    report = run(dataset, tiny_timm_models[name], cache_dir, workers=1)
    contents = read_contents(report.path)
    assert contents.dims == pools
    assert contents.done.all() and contents.ids == dataset.ids
    assert contents.attrs["backend"] == "timm" and contents.attrs["precision"] == "fp32"
    features = read_features(report.path, dataset.ids, next(iter(pools)))
    assert features.shape == (12, next(iter(pools.values())))
    assert np.isfinite(features).all() and features.std(axis=0).max() > 0


def test_transformers_backbone_records_provenance(tiny_dinov2, manifest, cache_dir):
    dataset = load_dataset(manifest)
    report = run(dataset, tiny_dinov2, cache_dir)
    contents = read_contents(report.path)
    assert contents.dims == {"cls": 32, "mean": 32, "cls4": 128}
    attrs = contents.attrs
    assert attrs["weights_identity"].startswith("sha:")
    assert attrs["preprocessing"]["crop"] == [32, 32] and attrs["preprocessing"]["resize"] == 39
    assert attrs["num_parameters"] > 0 and attrs["images_extracted"] == 16
    assert {"torch", "transformers", "timm"} <= set(attrs["library_versions"])
    assert attrs["dataset_root"] == str(manifest.parent.resolve())
    with h5py.File(report.path, "r") as handle:  # the documented layout, read with plain h5py
        assert handle["features/cls"].dtype == np.float16
        assert handle["ids"][0].decode() == "img/s00.png"
        assert handle["done"][()].sum() == 16


def test_efficientnet_lite0_bf16_matches_fp32(image_folder, cache_dir):
    dataset = load_dataset(image_folder)
    fp32_report = run(dataset, "efficientnet-lite0", cache_dir)
    bf16_report = run(dataset, "efficientnet-lite0", cache_dir, precision="bf16")
    assert bf16_report.path != fp32_report.path  # precisions never share a file
    assert read_contents(bf16_report.path).attrs["precision"] == "bf16"
    fp32 = read_features(fp32_report.path, dataset.ids, "gap")
    bf16 = read_features(bf16_report.path, dataset.ids, "gap")
    cos = (fp32 * bf16).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(bf16, axis=1)
    assert cos.min() >= 0.996  # the README's figure


def test_rerun_is_up_to_date_without_loading_weights(tiny_dinov2, image_folder, cache_dir, monkeypatch):
    dataset = load_dataset(image_folder)
    first = run(dataset, tiny_dinov2, cache_dir)
    assert first.extracted == 12

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded for an up-to-date cache")

    monkeypatch.setattr(runner, "load_backbone", refuse)
    again = run(dataset, tiny_dinov2, cache_dir)
    assert again.up_to_date and again.reused == 12 and again.path == first.path


def test_interrupted_extraction_resumes_to_the_same_features(tiny_dinov2, image_folder, tmp_path, monkeypatch):
    dataset = load_dataset(image_folder)
    reference = run(dataset, tiny_dinov2, tmp_path / "uninterrupted")
    original_load = runner.load_backbone

    def load_then_break(*args, **kwargs):
        backbone = original_load(*args, **kwargs)
        embed, calls = backbone.embed, []

        def embed_twice_then_interrupt(pixels):
            calls.append(1)
            if len(calls) > 2:
                raise KeyboardInterrupt
            return embed(pixels)

        backbone.embed = embed_twice_then_interrupt
        return backbone

    monkeypatch.setattr(runner, "load_backbone", load_then_break)
    with pytest.raises(Interrupted, match="8 of 12 images are cached .* run the same command again to resume"):
        run(dataset, tiny_dinov2, tmp_path / "resumed")
    partial_path = reference.path.parents[1].parent / "resumed" / reference.path.relative_to(
        reference.path.parents[1])
    assert read_contents(partial_path).done.sum() == 8  # two batches of 4 were kept
    with pytest.raises(MedprobeError, match="lacks 4 sample"):
        read_features(partial_path, dataset.ids, "cls")
    monkeypatch.setattr(runner, "load_backbone", original_load)
    resumed = run(dataset, tiny_dinov2, tmp_path / "resumed")
    assert resumed.extracted == 4 and resumed.reused == 8
    for pool in ("cls", "mean", "cls4"):
        np.testing.assert_array_equal(read_features(resumed.path, dataset.ids, pool),
                                      read_features(reference.path, dataset.ids, pool))


def test_every_batch_runs_at_the_full_batch_shape_after_a_resume_too(tiny_dinov2, image_folder, tmp_path,
                                                                      monkeypatch):
    """README: every batch is run at the full batch shape (the last one padded). 12 images in batches of 5,
    stopped after the first: the resumed 7 run as a full batch and a padded one of 2, and every feature equals
    the uninterrupted run's bit for bit."""
    dataset = load_dataset(image_folder)
    reference = run(dataset, tiny_dinov2, tmp_path / "uninterrupted", batch_size=5)
    original_load, shapes = runner.load_backbone, []

    def load_recording(*args, stop_after=None, **kwargs):
        backbone = original_load(*args, **kwargs)
        embed = backbone.embed

        def recorded(pixels):
            if stop_after is not None and len(shapes) == stop_after:
                raise KeyboardInterrupt
            shapes.append(tuple(pixels.shape))
            return embed(pixels)

        backbone.embed = recorded
        return backbone

    monkeypatch.setattr(runner, "load_backbone", lambda *a, **k: load_recording(*a, stop_after=1, **k))
    with pytest.raises(Interrupted, match="5 of 12 images are cached"):
        run(dataset, tiny_dinov2, tmp_path / "resumed", batch_size=5)
    monkeypatch.setattr(runner, "load_backbone", load_recording)
    resumed = run(dataset, tiny_dinov2, tmp_path / "resumed", batch_size=5)
    assert resumed.extracted == 7 and resumed.reused == 5
    assert len(shapes) == 3 and {shape[0] for shape in shapes} == {5}  # 5 | 5, 2 + 3 padding rows
    for pool in ("cls", "mean", "cls4"):
        np.testing.assert_array_equal(read_features(resumed.path, dataset.ids, pool),
                                      read_features(reference.path, dataset.ids, pool))


def test_header_checks_run_in_blocks_of_4096_and_find_every_bad_file(image_folder, monkeypatch):
    """BENCHMARKS.md: the header checks submit blocks of VALIDATE_BLOCK images (4,096), not one future per image
    at once (+145 MB at 100k images before)."""
    from concurrent.futures import ThreadPoolExecutor

    samples = load_dataset(image_folder).samples
    (samples[4].path).write_bytes(b"not an image")
    (samples[10].path).write_bytes(b"")
    submitted = []

    class Recording(ThreadPoolExecutor):
        def map(self, function, items, **kwargs):
            submitted.append(len(items))
            return super().map(function, items, **kwargs)

    assert runner.VALIDATE_BLOCK == 4096
    monkeypatch.setattr(runner, "ThreadPoolExecutor", Recording)
    monkeypatch.setattr(runner, "VALIDATE_BLOCK", 5)
    bad = runner.find_bad_headers(samples)
    assert submitted == [5, 5, 2]
    assert [sample.path for sample, _ in bad] == [samples[4].path, samples[10].path]


def test_changed_image_is_reextracted_and_touched_image_is_not(tiny_dinov2, image_folder, cache_dir):
    dataset = load_dataset(image_folder)
    first = run(dataset, tiny_dinov2, cache_dir)
    before = read_features(first.path, dataset.ids, "cls")
    touched = image_folder / "benign" / "img1.png"
    os.utime(touched, ns=(time.time_ns(), time.time_ns() + 10**9))  # same bytes, new mtime
    changed = image_folder / "malignant" / "img2.jpg"
    Image.fromarray(np.full((50, 50, 3), 255, np.uint8)).save(changed)
    report = run(dataset, tiny_dinov2, cache_dir)
    assert (report.extracted, report.changed, report.reused) == (1, 1, 11)
    after = read_features(first.path, dataset.ids, "cls")
    row = dataset.ids.index("malignant/img2.jpg")
    assert not np.allclose(after[row], before[row])
    np.testing.assert_array_equal(np.delete(after, row, 0), np.delete(before, row, 0))
    assert run(dataset, tiny_dinov2, cache_dir).up_to_date  # the touched file's new stat was recorded


def test_new_images_are_added_incrementally(tiny_dinov2, image_folder, cache_dir):
    run(load_dataset(image_folder), tiny_dinov2, cache_dir)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(image_folder / "benign" / "new.png")
    report = run(load_dataset(image_folder), tiny_dinov2, cache_dir)
    assert (report.extracted, report.reused) == (1, 12)


def test_changed_weights_invalidate_every_row(tmp_path, image_folder, cache_dir):
    from conftest import save_tiny_dinov2

    model = save_tiny_dinov2(tmp_path / "model", seed=0)
    dataset = load_dataset(image_folder)
    first = run(dataset, model, cache_dir)
    old = read_features(first.path, dataset.ids, "cls")
    save_tiny_dinov2(model, seed=1)  # same folder, new weights
    second = run(dataset, model, cache_dir)
    assert second.path == first.path and second.extracted == 12
    assert not np.allclose(read_features(second.path, dataset.ids, "cls"), old)


def test_a_new_hub_commit_in_the_local_hub_cache_invalidates_every_row(tmp_path, image_folder, cache_dir,
                                                                        monkeypatch):
    import huggingface_hub.constants
    from conftest import save_tiny_dinov2
    from family_models import publish_to_hub_cache

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    dataset = load_dataset(image_folder)
    features, identities = [], []
    for seed, commit in ((0, "a" * 40), (0, "a" * 40), (1, "b" * 40)):  # the same snapshot twice, then a new one
        model = save_tiny_dinov2(tmp_path / f"download-{seed}", seed=seed)
        for file in sorted(model.iterdir()):
            publish_to_hub_cache(tmp_path / "hub", "tiny-org/tiny-dinov2", file, commit=commit)
        report = run(dataset, "hf:tiny-org/tiny-dinov2", cache_dir)
        identities.append((report.extracted, read_contents(report.path).attrs["weights_identity"]))
        features.append(read_features(report.path, dataset.ids, "cls"))
    assert identities == [(12, f"hub:tiny-org/tiny-dinov2@{'a' * 40}"), (0, f"hub:tiny-org/tiny-dinov2@{'a' * 40}"),
                          (12, f"hub:tiny-org/tiny-dinov2@{'b' * 40}")]
    assert np.array_equal(features[0], features[1]) and not np.allclose(features[2], features[0])


def test_other_preprocessing_uses_another_file(tiny_dinov2, image_folder, cache_dir):
    dataset = load_dataset(image_folder)
    default = run(dataset, tiny_dinov2, cache_dir)
    larger = run(dataset, tiny_dinov2, cache_dir, image_size=48)
    assert larger.path != default.path and larger.extracted == 12
    assert read_contents(larger.path).attrs["preprocessing"]["crop"] == [48, 48]


def test_unreadable_image_stops_before_any_compute(tiny_dinov2, image_folder, cache_dir, monkeypatch):
    (image_folder / "benign" / "img3.png").write_bytes(b"garbage")

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded although the dataset is invalid")

    monkeypatch.setattr(runner, "load_backbone", refuse)
    with pytest.raises(MedprobeError, match=r"1 unreadable image\(s\): .*img3.png"):
        run(load_dataset(image_folder), tiny_dinov2, cache_dir)
    assert not list(cache_dir.rglob("*.h5"))


def test_truncated_image_is_reported_and_its_row_left_undone(tiny_dinov2, image_folder, cache_dir):
    path = image_folder / "malignant" / "img4.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # header intact, pixels missing
    dataset = load_dataset(image_folder)
    with pytest.raises(MedprobeError, match="failed to decode.*img4.jpg"):
        run(dataset, tiny_dinov2, cache_dir)
    contents = read_contents(next(cache_dir.rglob("*.h5")))
    assert contents.done.sum() == 11 and not contents.done[contents.row_of["malignant/img4.jpg"]]


def test_second_writer_is_refused(tiny_dinov2, image_folder, cache_dir):
    from medprobe.cache import cache_lock

    dataset = load_dataset(image_folder)
    target = runner.locate_cache(dataset=dataset, model=str(tiny_dinov2), cache_dir=cache_dir, device="cpu",
                                 precision="fp32")
    with cache_lock(target.path):
        with pytest.raises(MedprobeError, match="another medprobe process is extracting into .*wait for it"):
            run(dataset, tiny_dinov2, cache_dir)


@pytest.mark.parametrize(("kind", "channels_last"), [("resnet", True), ("vit", False)])
def test_the_forward_runs_under_inference_mode_and_autocast_and_cnns_channels_last(
        kind, channels_last, image_folder, tiny_timm_models, tmp_path, monkeypatch):
    """README: the forward runs under inference_mode and autocast; CNNs run channels-last (input and
    weights), ViTs as they are."""
    import torch

    seen = []
    real_load = runner.load_backbone

    def load_backbone(*args, **kwargs):
        backbone = real_load(*args, **kwargs)

        conv = next(m for m in backbone.module.modules() if isinstance(m, torch.nn.Conv2d))  # the pixels' first

        def record(module, inputs):
            seen.append({"inference": torch.is_inference_mode_enabled(),
                         "autocast": torch.is_autocast_enabled("cpu"), "dtype": torch.get_autocast_dtype("cpu"),
                         "input_channels_last": inputs[0].is_contiguous(memory_format=torch.channels_last),
                         "weights_channels_last": conv.weight.is_contiguous(memory_format=torch.channels_last)})

        conv.register_forward_pre_hook(record)  # embed may call forward_features, not the module itself
        return backbone

    monkeypatch.setattr(runner, "load_backbone", load_backbone)
    dataset = load_dataset(image_folder)
    extract(dataset=dataset, model=str(tiny_timm_models[kind]), cache_dir=tmp_path / "cache", device="cpu",
            precision="bf16", batch_size=4, workers=0, show_progress=False)
    assert len(seen) == 3  # 12 images, batches of 4
    for forward in seen:
        assert forward["inference"] and forward["autocast"] and forward["dtype"] == torch.bfloat16
        assert forward["input_channels_last"] is channels_last and forward["weights_channels_last"] is channels_last


def test_two_csv_manifests_over_one_image_folder_share_one_cache(tiny_dinov2, image_folder, cache_dir):
    """README: two manifests over the same image folder share one cache, each reading only its own ids: the
    second extracts only the images the first did not, into the same file, and reads the first's rows."""
    images = sorted(str(p.relative_to(image_folder)) for p in image_folder.rglob("img*"))
    for name, chosen in (("first.csv", images[:8]), ("second.csv", images[4:])):
        rows = ["path,label"] + [f"{path},{path.split('/')[0]}" for path in chosen]
        (image_folder / name).write_text("\n".join(rows) + "\n")
    first = run(load_dataset(image_folder / "first.csv"), tiny_dinov2, cache_dir)
    second = run(load_dataset(image_folder / "second.csv"), tiny_dinov2, cache_dir)
    assert (first.extracted, first.reused) == (8, 0) and (second.extracted, second.reused) == (4, 4)
    assert second.path == first.path and len(list(cache_dir.rglob("*.h5"))) == 1
    assert read_features(second.path, images[4:], "cls").shape == (8, 32)  # every id of the second is there


def test_the_cache_file_has_the_documented_layout_and_provenance(tiny_dinov2, tmp_path, cache_dir):
    import hashlib
    import re
    from pathlib import Path

    from medprobe.cache import layout

    folder = tmp_path / "flat"  # more rows than one 256-row chunk; no labels needed to extract
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(300):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    dataset = load_dataset(folder)
    report = run(dataset, tiny_dinov2, cache_dir, batch_size=64)
    with h5py.File(report.path, "r") as handle:
        for name in ("ids", "source_fingerprint", "source_stat"):
            assert h5py.check_string_dtype(handle[name].dtype).encoding == "utf-8", name
        assert handle["done"].dtype == np.uint8 and handle["done"][()].tolist() == [1] * 300
        for pool, dim in {"cls": 32, "mean": 32, "cls4": 128}.items():
            features = handle[f"features/{pool}"]
            assert features.dtype == np.float16 and features.shape == (300, dim)
            assert features.chunks == (256, dim) and features.compression is None
        ids = handle["ids"][()].astype(str)
        for sample_id, digest, stat in zip(ids, handle["source_fingerprint"][()].astype(str),
                                           handle["source_stat"][()].astype(str), strict=True):
            path = folder / sample_id
            assert digest == hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
            assert stat == f"{path.stat().st_size}:{path.stat().st_mtime_ns}"
        attrs = set(handle.attrs)
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    paragraph = readme.split("Attributes of `/` hold the provenance:")[1].split("\n\n")[0]
    documented = set(re.findall(r"`([a-z_]+)`", paragraph)) - {"cpu", "gpu"}  # those two are values
    assert attrs == documented == set(layout.PROVENANCE_KEYS)

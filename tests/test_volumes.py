from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path
from volume_helpers import brain, glioma_cohort, save_nifti, write_rows, write_spec

from medprobe.cli import main
from medprobe.data import load_dataset
from medprobe.data import reader as reader_module
from medprobe.data.images import window_to_uint8
from medprobe.data.reader import read_all
from medprobe.data.volumes import AXES
from medprobe.errors import MedprobeError


def images_of(dataset) -> list[np.ndarray]:
    decoded = list(read_all(dataset.samples, dataset.root))
    assert all(item.error is None for item in decoded), [item.error for item in decoded]
    return [np.asarray(item.image) for item in sorted(decoded, key=lambda item: item.position)]


def one_volume_dataset(tmp_path, voxels, *, zooms=(1.0, 1.0, 1.0), axcodes="RAS", name="v", **spec):
    """Two volumes (labels a, b) from the same voxels, written in `axcodes` orientation."""
    folder = tmp_path / name
    save_nifti(folder / "a.nii.gz", voxels, zooms, axcodes)
    save_nifti(folder / "b.nii.gz", voxels[::-1].copy(), zooms, axcodes)
    write_rows(folder / "rows.csv", [{"path": "a.nii.gz", "label": "a"}, {"path": "b.nii.gz", "label": "b"}])
    return load_dataset(write_spec(folder / "spec.toml", manifest="rows.csv", **spec))


@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
def test_orientation_does_not_change_the_slices(tmp_path, axis):
    voxels = brain(np.random.default_rng(1), 1)
    reference = one_volume_dataset(tmp_path, voxels, name="ras", axis=axis, slices="all")
    for axcodes in ("LPS", "PSL", "ILA"):
        other = one_volume_dataset(tmp_path, voxels, axcodes=axcodes, name=axcodes, axis=axis, slices="all")
        assert other.ids == reference.ids
        for mine, theirs in zip(images_of(other), images_of(reference), strict=True):
            np.testing.assert_array_equal(mine, theirs)


def test_axes_cut_the_expected_planes_upright(tmp_path):
    voxels = np.zeros((20, 24, 16), np.float32)
    voxels[:, 20:, :] = 1000  # anterior band
    voxels[:, :, 14:] += 500  # superior band
    dataset = one_volume_dataset(tmp_path, voxels, slices="middle:1")
    assert dataset.ids[0] == "a.nii.gz#axial:7"  # the lower middle of 16
    axial = images_of(dataset)[0][..., 0]
    assert axial.shape == (24, 20)  # rows run along y, columns along x
    assert axial[:4].min() > 0 and axial[-10:].max() == 0  # anterior is up
    coronal = images_of(one_volume_dataset(tmp_path, voxels, name="c", axis="coronal", slices="middle:1"))[0]
    assert coronal.shape[:2] == (16, 20) and coronal[0, :, 0].min() > coronal[-1, :, 0].max()  # superior is up


def test_anisotropic_voxels_become_square_pixels(tmp_path):
    voxels = brain(np.random.default_rng(2), 0)
    dataset = one_volume_dataset(tmp_path, voxels, zooms=(1.0, 1.0, 3.0), axis="coronal", slices="middle:2")
    image = images_of(dataset)[0]
    assert image.shape == (16 * 3, 20, 3)  # z spacing 3 mm -> three times as many rows as slices


def test_slice_rules_select_the_documented_slices(tmp_path):
    voxels = np.zeros((10, 10, 12), np.float32)
    voxels[:, :, 2] = 5  # full slice
    voxels[:5, :, 3] = 5  # half
    voxels[:1, :, 4] = 5  # a tenth
    rules = {"all": list(range(12)), "middle:4": [4, 5, 6, 7], "every:5": [0, 5, 10],
             "nonzero:0.5": [2, 3], "nonzero:0.1": [2, 3, 4], "middle:50": list(range(12))}
    for rule, expected in rules.items():
        dataset = one_volume_dataset(tmp_path, voxels, name=rule.replace(":", "-"), slices=rule)
        assert [s.slice.index for s in dataset.samples if s.label == "a"] == expected, rule


def test_mask_guided_selection(tmp_path):
    voxels = brain(np.random.default_rng(3), 2)
    mask = np.zeros_like(voxels)
    mask[5:7, 5:10, 3] = 1  # area 10
    mask[5:11, 5:10, 5] = 1  # area 30
    mask[5:9, 5:10, 7] = 1  # area 20
    folder = tmp_path / "masked"
    for name in ("a", "b"):
        save_nifti(folder / f"{name}.nii.gz", voxels, axcodes="LPS")
        save_nifti(folder / f"{name}-mask.nii.gz", mask, axcodes="LPS")
    write_rows(folder / "rows.csv", [{"path": f"{n}.nii.gz", "label": n, "mask": f"{n}-mask.nii.gz"} for n in "ab"])
    present = load_dataset(write_spec(folder / "present.toml", manifest="rows.csv", slices="mask"))
    assert [s.slice.index for s in present.samples if s.label == "a"] == [3, 5, 7]
    top = load_dataset(write_spec(folder / "top.toml", manifest="rows.csv", slices="mask-top:2"))
    assert [s.slice.index for s in top.samples if s.label == "a"] == [5, 7]
    write_rows(folder / "nomask.csv", [{"path": "a.nii.gz", "label": "a"}, {"path": "b.nii.gz", "label": "b"}])
    with pytest.raises(MedprobeError, match="lacks column.*mask"):
        load_dataset(write_spec(folder / "bad.toml", manifest="nomask.csv", slices="mask"))
    write_rows(folder / "seg.csv", [{"path": f"{n}.nii.gz", "label": n, "seg": f"{n}-mask.nii.gz"} for n in "ab"])
    named = load_dataset(write_spec(folder / "seg.toml", manifest="seg.csv", slices="mask", mask="seg"))
    assert [s.slice.index for s in named.samples if s.label == "a"] == [3, 5, 7]  # mask = "seg": that column
    save_nifti(folder / "small-mask.nii.gz", mask[:, :, :6], axcodes="LPS")
    write_rows(folder / "off-grid.csv", [{"path": "a.nii.gz", "label": "a", "mask": "small-mask.nii.gz"},
                                         {"path": "b.nii.gz", "label": "b", "mask": "b-mask.nii.gz"}])
    with pytest.raises(MedprobeError, match=r"mask .*small-mask\.nii\.gz has shape") as refused:
        load_dataset(write_spec(folder / "off.toml", manifest="off-grid.csv", slices="mask"))
    assert "\n" not in str(refused.value)


def test_window_is_per_volume_and_nans_are_handled(tmp_path):
    voxels = brain(np.random.default_rng(4), 1)
    voxels[0, 0, :] = np.nan
    voxels[1, 0, :] = np.inf
    voxels[2, 0, :] = -np.inf
    dataset = one_volume_dataset(tmp_path, voxels, slices="all", window=[1.0, 99.0])
    expected = window_to_uint8(voxels, (1.0, 99.0))  # one window for the whole volume
    for sample, image in zip(dataset.samples[:16], images_of(dataset)[:16], strict=True):
        np.testing.assert_array_equal(image[..., 0], np.rot90(expected[:, :, sample.slice.index]))
    first = images_of(dataset)[0][-1, :3, 0]  # the voxels x = 0, 1, 2 at y = 0: NaN, +inf, -inf
    assert first.tolist() == [0, 255, 0]  # NaN and -inf at the window's low end, +inf at its high end


def test_nibabel_example_images(tmp_path):
    folder = tmp_path / "nib"
    folder.mkdir()
    for name in ("anatomical.nii", "example4d.nii.gz"):
        os.symlink(os.path.join(data_path, name), folder / name)
    original = nib.load(folder / "anatomical.nii")
    assert "".join(nib.aff2axcodes(original.affine)) == "LAS"
    canonical = np.asarray(original.dataobj, dtype=np.float32)[::-1]  # LAS -> RAS flips x
    write_rows(folder / "both.csv", [{"path": "anatomical.nii", "label": "x"},
                                     {"path": "example4d.nii.gz", "label": "y"}])
    with pytest.raises(MedprobeError, match=r"4-D \(2 volumes\); set volume"):
        load_dataset(write_spec(folder / "both.toml", manifest="both.csv", slices="middle:3"))
    write_rows(folder / "two.csv", [{"path": "anatomical.nii", "label": "x"}, {"path": "anatomical.nii", "label": "y"}])
    with pytest.raises(MedprobeError, match="listed twice"):
        load_dataset(write_spec(folder / "two.toml", manifest="two.csv", slices="middle:3"))
    dataset = load_dataset(write_spec(folder / "anat.toml", manifest="both.csv", slices="middle:3", volume=1))
    anatomical = [s for s in dataset.samples if s.path.name == "anatomical.nii"]
    assert [s.id for s in anatomical] == [f"anatomical.nii#axial:{i}" for i in (11, 12, 13)]
    images = images_of(dataset)
    expected = window_to_uint8(canonical)
    np.testing.assert_array_equal(images[0][..., 0], np.rot90(expected[:, :, 11]))
    four_d = [image for sample, image in zip(dataset.samples, images, strict=True) if sample.label == "y"]
    assert len(four_d) == 3 and four_d[0].shape[:2] == (96, 128)


def test_stacked_modalities_are_the_rgb_channels(tmp_path):
    root = glioma_cohort(tmp_path / "g", patients=3, modalities=("t1", "t1c", "flair"))
    rows = [{"t1": f"t1/p{i:02d}.nii.gz", "t1c": f"t1c/p{i:02d}.nii.gz", "flair": f"flair/p{i:02d}.nii.gz",
             "label": f"grade{i % 3 + 2}", "group": f"p{i:02d}"} for i in range(3)]
    write_rows(root / "stacked.csv", rows)
    stacked = load_dataset(write_spec(root / "stacked.toml", manifest="stacked.csv", channels=["t1", "t1c", "flair"],
                                      slices="middle:2"))
    singles = [load_dataset(write_spec(root / f"{m}.toml", manifest=f"{m}.csv", slices="middle:2"))
               for m in ("t1", "t1c", "flair")]
    assert stacked.ids == singles[0].ids
    rgb = images_of(stacked)
    for channel, single in enumerate(singles):
        for image, gray in zip(rgb, images_of(single), strict=True):
            np.testing.assert_array_equal(image[..., channel], gray[..., 0])
    save_nifti(root / "flair" / "p01.nii.gz", np.zeros((20, 24, 10), np.float32))
    with pytest.raises(MedprobeError, match="differ in shape.*co-register"):
        load_dataset(root / "stacked.toml")


def test_one_decompression_per_volume(tmp_path, monkeypatch):
    root = glioma_cohort(tmp_path / "g", patients=4)
    dataset = load_dataset(write_spec(root / "t1.toml", manifest="t1.csv", slices="all"))
    calls = []
    original = reader_module.read_volume
    monkeypatch.setattr(reader_module, "read_volume", lambda *a: calls.append(a[1]) or original(*a))
    assert len(images_of(dataset)) == 4 * 16
    assert sorted(calls) == sorted({s.path for s in dataset.samples})


def test_slice_ids_groups_and_bad_specs(tmp_path):
    root = glioma_cohort(tmp_path / "g", patients=3)
    write_rows(root / "nogroup.csv", [{"path": f"t1/p{i:02d}.nii.gz", "label": str(i % 2)} for i in range(3)])
    dataset = load_dataset(write_spec(root / "s.toml", manifest="nogroup.csv", axis="sagittal", slices="every:7"))
    assert dataset.ids[:3] == ["t1/p00.nii.gz#sagittal:0", "t1/p00.nii.gz#sagittal:7", "t1/p00.nii.gz#sagittal:14"]
    assert {s.group for s in dataset.samples} == {f"t1/p{i:02d}.nii.gz" for i in range(3)}
    with pytest.raises(MedprobeError, match="volumes need a dataset spec"):
        load_dataset(root / "t1.csv")
    bad = {"axis": "transverse", "slices": "middle", "window": [99, 1], "volume": -1, "channels": ["t1"]}
    for key, value in bad.items():
        with pytest.raises(MedprobeError, match=key if key != "slices" else "middle:K"):
            load_dataset(write_spec(root / f"bad-{key}.toml", manifest="t1.csv", **{key: value}))
    (root / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    write_rows(root / "broken.csv", [{"path": "broken.nii.gz", "label": "a"}, {"path": "t1/p00.nii.gz", "label": "b"}])
    with pytest.raises(MedprobeError, match="cannot read volume .*broken.nii.gz"):
        load_dataset(write_spec(root / "broken.toml", manifest="broken.csv"))


def test_inspect_shows_volumes(tmp_path, capsys):
    root = glioma_cohort(tmp_path / "g", patients=3)
    spec = write_spec(root / "t1.toml", manifest="t1.csv", slices="middle:4")
    with pytest.raises(SystemExit) as exit_info:
        main(["datasets", "inspect", str(spec)])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "3 volumes" in out and "20x24x16" in out and "1x1x1.5" in out and "RAS" in out and "4 slices" in out


def test_volume_study_end_to_end(tmp_path, tiny_timm_models, capsys):
    """Extract slices, probe with patient-level metrics, fuse modalities, verify and re-extract on change."""
    from medprobe.extract.runner import extract
    from medprobe.finetune.runner import FinetuneSettings, finetune
    from medprobe.probe.runner import ProbeSettings, probe

    model, cache = str(tiny_timm_models["resnet"]), tmp_path / "cache"
    root = glioma_cohort(tmp_path / "g", patients=9, modalities=("t1", "flair"))
    t1 = load_dataset(write_spec(root / "t1.toml", manifest="t1.csv", slices="middle:3"))
    flair = load_dataset(write_spec(root / "flair.toml", manifest="flair.csv", slices="middle:3"))
    options = dict(model=model, cache_dir=cache, device="cpu", precision="fp32", workers=2, show_progress=False)
    first = extract(dataset=t1, **options)
    assert first.extracted == 27
    extract(dataset=flair, **options)
    settings = ProbeSettings(classifiers=("knn",), bootstrap=200, folds=3)
    record = probe(dataset=t1, models=[model], cache_dir=cache, out_dir=tmp_path / "out", settings=settings,
                   show_progress=False)[0]
    assert record["patient_metrics"]["patients"] == 9 and sum(f["test"] for f in record["sizes"]) == 27
    fused = probe(dataset=t1, models=[model], cache_dir=cache, out_dir=tmp_path / "out", settings=settings,
                  with_datasets=[flair], show_progress=False)[0]
    assert fused["feature_dim"] == 2 * record["feature_dim"]
    assert [source["dataset"] for source in fused["features"]] == ["t1", "flair"]

    with pytest.raises(SystemExit) as exit_info:
        main(["cache", "verify", str(first.path), "--deep"])
    assert exit_info.value.code == 0, capsys.readouterr().out

    assert extract(dataset=t1, **options).extracted == 0  # nothing changed
    voxels = np.asarray(nib.load(root / "t1" / "p04.nii.gz").dataobj)
    save_nifti(root / "t1" / "p04.nii.gz", voxels + 50, zooms=(1.0, 1.0, 1.5))
    assert extract(dataset=t1, **options).changed == 3  # only that patient's slices
    rewindowed = load_dataset(write_spec(root / "t1w.toml", manifest="t1.csv", slices="middle:3", window=[2.0, 98.0]))
    assert extract(dataset=rewindowed, **options).extracted == 27  # another window: other pixels

    tuned = finetune(dataset=t1, model=model, settings=FinetuneSettings(
        epochs=1, batch_size=8, workers=0, fold=0, folds=3, bootstrap=100, precision="fp32", device="cpu"),
        out_dir=tmp_path / "out", show_progress=False)[0]
    assert tuned["patient_metrics"]["patients"] == 3 and tuned["sizes"][0]["test"] == 9


def test_voxel_rules_remember_their_selection_until_a_file_changes(tmp_path, monkeypatch):
    from medprobe.data import slicing

    monkeypatch.setenv("MEDPROBE_CACHE", str(tmp_path / "cache"))
    voxels = np.zeros((10, 10, 12), np.float32)
    voxels[:, :, 2:5] = 5
    for name in ("a", "b"):
        save_nifti(tmp_path / f"{name}.nii.gz", voxels)
    write_rows(tmp_path / "rows.csv", [{"path": "a.nii.gz", "label": "a"}, {"path": "b.nii.gz", "label": "b"}])
    dataset_spec = write_spec(tmp_path / "s.toml", manifest="rows.csv", slices="nonzero:0.5")
    reads = []
    original = slicing._voxels
    monkeypatch.setattr(slicing, "_voxels", lambda *a: reads.append(a[0]) or original(*a))
    first = load_dataset(dataset_spec)
    assert len(reads) == 2 and [s.slice.index for s in first.samples if s.label == "a"] == [2, 3, 4]
    again = load_dataset(dataset_spec)
    assert len(reads) == 2 and again.ids == first.ids  # remembered: no volume read
    voxels[:, :, 7] = 5
    save_nifti(tmp_path / "a.nii.gz", voxels)  # a changed file is read again
    changed = load_dataset(dataset_spec)
    assert len(reads) == 3 and [s.slice.index for s in changed.samples if s.label == "a"] == [2, 3, 4, 7]


def test_without_slices_every_axial_plane_is_a_sample(tmp_path):
    voxels = np.random.default_rng(2).normal(size=(12, 10, 7)).astype(np.float32)  # RAS: 7 axial planes
    default = one_volume_dataset(tmp_path, voxels, name="default")
    explicit = one_volume_dataset(tmp_path, voxels, name="explicit", axis="axial", slices="all")
    assert len(default.samples) == 2 * 7 and [s.id.split("#")[1] for s in default.samples] == \
        [s.id.split("#")[1] for s in explicit.samples]


@pytest.mark.parametrize("axcodes", ["RAS", "LPS"])
def test_columns_run_patient_left_to_right_and_sagittal_has_superior_up_anterior_right(tmp_path, axcodes):
    """README (Orientation): axial anterior up, coronal and sagittal superior up; columns run patient-left to
    patient-right for axial and coronal (and posterior to anterior for sagittal), whatever the file's order."""
    voxels = np.zeros((20, 24, 16), np.float32)  # canonical RAS: x grows to the patient's right
    voxels[:4] = 1000  # a band on the patient's left
    voxels[:, 20:, :] += 300  # anterior
    voxels[:, :, 13:] += 500  # superior
    def middle(axis):
        dataset = one_volume_dataset(tmp_path, voxels, axcodes=axcodes, name=f"{axcodes}-{axis}", axis=axis,
                                     slices="middle:1")
        return images_of(dataset)[0][..., 0]  # volume a, its one slice
    axial, coronal, sagittal = middle("axial"), middle("coronal"), middle("sagittal")
    assert axial.shape == (24, 20) and coronal.shape == (16, 20) and sagittal.shape == (16, 24)
    for plane in (axial, coronal):
        assert plane[:, :4].min() > plane[:, 4:].max()  # the left band is on the left of the image
    assert axial[:4, 4:].min() > axial[4:, 4:].max()  # anterior up
    assert coronal[:3, 4:].min() > coronal[3:, 4:].max()  # superior up
    assert sagittal[:3].min() > sagittal[3:, :20].max()  # superior up
    assert sagittal[3:, 20:].min() > sagittal[3:, :20].max()  # anterior on the right


@pytest.mark.parametrize("zooms, axis, shape", [((1.0, 1.0, 3.0), "coronal", (48, 20)),
                                                ((0.8, 1.2, 1.0), "axial", (36, 20))])
def test_anisotropic_planes_are_bilinear_resampled_as_torch_does(tmp_path, zooms, axis, shape):
    """README: anisotropic voxels are resampled (bilinear) to square pixels at the finer in-plane spacing:
    equal within one grey level to torch's bilinear interpolation of the windowed plane (half-pixel centres),
    and not what nearest-neighbour gives."""
    import torch

    voxels = brain(np.random.default_rng(5), 1)
    dataset = one_volume_dataset(tmp_path, voxels, zooms=zooms, axis=axis, slices="middle:1", window=[1.0, 99.0])
    image = images_of(dataset)[0][..., 0]
    index = dataset.samples[0].slice.index
    plane = np.rot90(np.take(window_to_uint8(voxels, (1.0, 99.0)), index, axis=AXES[axis]))
    assert image.shape == shape
    source = torch.from_numpy(plane.astype(np.float32).copy())[None, None]
    bilinear = torch.nn.functional.interpolate(source, size=shape, mode="bilinear", align_corners=False)
    nearest = torch.nn.functional.interpolate(source, size=shape, mode="nearest")
    assert np.abs(image - bilinear[0, 0].round().numpy()).max() <= 1
    assert np.abs(image - nearest[0, 0].numpy()).max() > 20


@pytest.mark.parametrize("rule", ["mask", "mask-top:2"])
def test_mask_rules_remember_their_selection_under_the_cache_until_the_mask_changes(tmp_path, monkeypatch, rule):
    """README: nonzero and mask rules remember the selection in <medprobe cache>/slice-selections/, keyed by
    the files' paths and stats and the rule, until a volume or mask changes."""
    from medprobe.data import slicing

    monkeypatch.setenv("MEDPROBE_CACHE", str(tmp_path / "cache"))
    voxels = brain(np.random.default_rng(6), 0)
    mask = np.zeros_like(voxels)
    mask[5:9, 5:10, 3] = 1
    mask[5:11, 5:10, 6] = 1
    mask[5:7, 5:10, 9] = 1
    for name in ("a", "b"):
        save_nifti(tmp_path / f"{name}.nii.gz", voxels)
        save_nifti(tmp_path / f"{name}-mask.nii.gz", mask)
    write_rows(tmp_path / "rows.csv", [{"path": f"{n}.nii.gz", "label": n, "mask": f"{n}-mask.nii.gz"} for n in "ab"])
    spec = write_spec(tmp_path / "s.toml", manifest="rows.csv", slices=rule)
    reads = []
    original = slicing._voxels
    monkeypatch.setattr(slicing, "_voxels", lambda *a: reads.append(a[0].name) or original(*a))
    def selected():
        return [s.slice.index for s in load_dataset(spec).samples if s.label == "a"]
    expected = [3, 6, 9] if rule == "mask" else [3, 6]
    assert selected() == expected and sorted(reads) == ["a-mask.nii.gz", "b-mask.nii.gz"]  # masks only
    memos = sorted((tmp_path / "cache" / "slice-selections").glob("*.json"))
    assert len(memos) == 2  # one per volume
    assert selected() == expected and len(reads) == 2  # remembered: no mask read
    mask[5:11, 5:11, 12] = 1  # the largest area now
    save_nifti(tmp_path / "a-mask.nii.gz", mask)
    assert selected() == ([3, 6, 9, 12] if rule == "mask" else [6, 12]) and reads[2:] == ["a-mask.nii.gz"]
    other_rule = write_spec(tmp_path / "t.toml", manifest="rows.csv", slices="mask-top:1")
    assert [s.slice.index for s in load_dataset(other_rule).samples if s.label == "b"] == [6]  # keyed by rule too
    assert len(list((tmp_path / "cache" / "slice-selections").glob("*.json"))) == 5


def test_extraction_workers_read_each_volume_once(tmp_path, tiny_timm_models, monkeypatch):
    """README (Speed): extraction hands whole volumes to the DataLoader workers, so each volume is read and
    decompressed once, however many slices it gives: counted inside the worker processes, through a file."""
    from medprobe.extract.runner import extract

    root = glioma_cohort(tmp_path / "g", patients=4)
    dataset = load_dataset(write_spec(root / "t1.toml", manifest="t1.csv", slices="every:2"))
    reads_file = tmp_path / "reads.txt"
    original = reader_module.read_volume
    def counted(blobs, source, volume_index):
        with reads_file.open("a") as handle:  # forked workers share no memory with the test
            handle.write(f"{os.getpid()} {source.name}\n")
        return original(blobs, source, volume_index)
    monkeypatch.setattr(reader_module, "read_volume", counted)
    report = extract(dataset=dataset, model=str(tiny_timm_models["resnet"]), cache_dir=tmp_path / "cache",
                     device="cpu", precision="fp32", workers=2, batch_size=4, show_progress=False)
    assert report.extracted == 4 * 8  # 8 of the 16 axial planes per volume
    reads = [line.split() for line in reads_file.read_text().splitlines()]
    assert sorted(name for _, name in reads) == [f"p{i:02d}.nii.gz" for i in range(4)]  # once each
    assert all(int(pid) != os.getpid() for pid, _ in reads)  # in the loader's workers, not the main process


def test_fused_modalities_join_slices_on_patient_and_slice_position(tmp_path):
    """README (Modalities): `probe t1.toml --with flair.toml` joins slices on (group, slice position), not on
    row order or file names: flair's manifest lists the patients in reverse, and its features carry each
    slice's patient and position, or (second cache) the only label signal."""
    import csv

    from probe_helpers import write_cache

    from medprobe.probe.features import extracted_models, feature_stream
    from medprobe.probe.runner import ProbeSettings, probe

    root = glioma_cohort(tmp_path / "g", patients=9, modalities=("t1", "flair"))
    with (root / "flair.csv").open() as handle:
        write_rows(root / "flair-reversed.csv", list(csv.DictReader(handle))[::-1])
    t1 = load_dataset(write_spec(root / "t1.toml", manifest="t1.csv", slices="middle:4"))
    flair = load_dataset(write_spec(root / "flair.toml", manifest="flair-reversed.csv", slices="middle:4"))
    assert [s.group for s in t1.samples] != [s.group for s in flair.samples]  # another order

    def where(sample):
        return [float(sample.group[1:]), float(sample.slice.index)]

    rng, tagged, labelled = np.random.default_rng(7), tmp_path / "tagged", tmp_path / "labelled"
    write_cache(t1, tagged, "resnet50", {"gap": rng.normal(size=(len(t1.ids), 2))})  # one cache, both rows
    write_cache(flair, tagged, "resnet50", {"gap": np.array([where(s) for s in flair.samples])})
    stream, _ = feature_stream([t1, flair], [extracted_models(t1, tagged), extracted_models(flair, tagged)], "gap",
                               t1.ids)
    assert stream.matrix()[:, 2:].tolist() == [where(s) for s in t1.samples]  # each t1 slice met its twin

    one_hot = {"grade2": [4, 0, 0], "grade3": [0, 4, 0], "grade4": [0, 0, 4]}
    write_cache(t1, labelled, "resnet50", {"gap": rng.normal(size=(len(t1.ids), 3))})
    write_cache(flair, labelled, "resnet50", {"gap": np.array([one_hot[s.label] for s in flair.samples])
                                              + rng.normal(size=(len(flair.ids), 3))})
    settings = ProbeSettings(classifiers=("logreg",), bootstrap=100, folds=3)
    fused = probe(dataset=t1, models=["resnet50"], cache_dir=labelled, out_dir=tmp_path / "out", settings=settings,
                  with_datasets=[flair], show_progress=False)[0]
    assert fused["metrics"]["accuracy"]["value"] > 0.95  # flair's signal reached t1's labels

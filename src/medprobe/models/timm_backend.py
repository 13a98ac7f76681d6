"""timm backend: the torchvision-ImageNet CNNs of the reference study (`*.tv_in1k`), any `timm:NAME`,
and local folders written by timm's save_for_hf (config.json with `architecture`)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from medprobe.errors import MedprobeError
from medprobe.models.backbone import Backbone, hash_model_directory
from medprobe.models.hub import cached_commit, hub_error
from medprobe.models.preprocess import Preprocessing
from medprobe.models.registry import CNN_POOLS, VIT_POOLS, ModelSpec


def timm_name(spec: ModelSpec) -> str:
    if spec.is_local:
        return f"local-dir:{spec.source}"
    if spec.revision:
        return f"hf-hub:{spec.hub_repo}@{spec.revision}"
    return spec.source


def _pretrained_cfg(spec: ModelSpec) -> dict:
    from timm.models import get_pretrained_cfg, parse_model_name
    from timm.models._hub import load_model_config_from_hf, load_model_config_from_path

    source, ident = parse_model_name(timm_name(spec))
    try:
        if source == "local-dir":
            cfg = load_model_config_from_path(ident)[0]
        elif source == "hf-hub":
            cfg = load_model_config_from_hf(ident.split("@")[0])[0]
        else:
            cfg = get_pretrained_cfg(ident)
    except (OSError, ValueError, RuntimeError) as exc:
        raise hub_error(spec.source, exc) from exc
    if cfg is None:
        raise MedprobeError(f"timm has no pretrained weights named {spec.source!r}; see timm.list_pretrained()")
    return cfg if isinstance(cfg, dict) else cfg.to_dict()


def preprocessing(spec: ModelSpec) -> Preprocessing:
    from timm.data import resolve_data_config

    config = resolve_data_config({}, pretrained_cfg=_pretrained_cfg(spec))
    size = int(config["input_size"][-1])
    crop_pct = float(config.get("crop_pct") or 1.0)
    return Preprocessing(
        resize=math.floor(size / crop_pct),
        crop=(size, size),
        interpolation=str(config.get("interpolation") or "bilinear"),
        mean=tuple(float(v) for v in config["mean"]),
        std=tuple(float(v) for v in config["std"]),
        resize_impl="pil",
        crop_rounding="round",
    )


def weights_identity(spec: ModelSpec) -> str | None:
    hub_id = spec.hub_repo
    commit = cached_commit(hub_id, spec.revision)
    return f"hub:{hub_id}@{commit}" if commit else None


def load(spec: ModelSpec, prep: Preprocessing) -> Backbone:
    import timm

    name = timm_name(spec)
    try:
        if prep.input_size != preprocessing(spec).input_size:
            try:  # ViTs take img_size and resample their position embeddings; CNNs need nothing
                model = timm.create_model(name, pretrained=True, num_classes=0, img_size=prep.input_size)
            except TypeError:
                model = timm.create_model(name, pretrained=True, num_classes=0)
        else:
            model = timm.create_model(name, pretrained=True, num_classes=0)
    except (OSError, RuntimeError, ValueError) as exc:
        raise hub_error(spec.source, exc) from exc
    if spec.is_local:
        identity = hash_model_directory(Path(spec.source))
        commit = None
    else:
        commit = cached_commit(spec.hub_repo, spec.revision)
        identity = f"hub:{spec.hub_repo}@{commit}"
    is_vit = hasattr(model, "num_prefix_tokens") and hasattr(model, "forward_intermediates")
    if is_vit:
        has_cls = getattr(model, "cls_token", None) is not None
        pools = VIT_POOLS if has_cls else ("mean",)
        embed = _vit_embed(model, has_cls=has_cls)
    else:
        pools = CNN_POOLS
        embed = _cnn_embed(model)
    return Backbone(spec=spec, module=model, preprocessing=prep, embed=embed, pools=pools, is_cnn=not is_vit,
                    weights_identity=identity, resolved_revision=commit)


def _vit_embed(model, *, has_cls: bool):
    prefix = int(model.num_prefix_tokens)

    def embed(pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        if not has_cls:
            tokens = model.forward_features(pixels)
            return {"mean": tokens[:, prefix:].mean(dim=1)}
        tokens, intermediates = model.forward_intermediates(
            pixels, indices=4, return_prefix_tokens=True, norm=True, output_fmt="NLC")
        return {
            "cls": tokens[:, 0],
            "mean": tokens[:, prefix:].mean(dim=1),
            "cls4": torch.cat([prefix_tokens[:, 0] for _, prefix_tokens in intermediates], dim=-1),
        }

    return embed


def _cnn_embed(model):
    def embed(pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"gap": model.forward_head(model.forward_features(pixels), pre_logits=True).flatten(1)}

    return embed

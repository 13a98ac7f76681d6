"""transformers backend: DINOv2 (with or without registers), RAD-DINO, ViT and any AutoModel vision
checkpoint on the hub or saved locally with save_pretrained. trust_remote_code stays off."""

from __future__ import annotations

import inspect

import torch

from medprobe.models.backbone import Backbone
from medprobe.models.hub import cached_commit, hub_error
from medprobe.models.preprocess import Preprocessing
from medprobe.models.registry import CNN_POOLS, VIT_POOLS, ModelSpec

_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
LOAD_ERRORS = (OSError, ValueError, KeyError, EnvironmentError)


def _field(container, key: str):
    if container is None:
        return None
    if isinstance(container, dict):
        return container.get(key)
    return getattr(container, key, None)


def _uses_torchvision(processor) -> bool:
    names = {cls.__name__ for cls in type(processor).__mro__}
    return bool(names & {"TorchvisionBackend", "BaseImageProcessorFast"})


def preprocessing(spec: ModelSpec) -> Preprocessing:
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(spec.source, revision=spec.revision, trust_remote_code=False)
    except LOAD_ERRORS as exc:
        raise hub_error(spec.source, exc) from exc
    size = processor.size if getattr(processor, "do_resize", True) else None
    if _field(size, "shortest_edge"):
        resize: int | tuple[int, int] | None = int(_field(size, "shortest_edge"))
    elif _field(size, "height"):
        resize = (int(_field(size, "height")), int(_field(size, "width")))
    else:
        resize = None
    crop_size = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    crop = (int(_field(crop_size, "height")), int(_field(crop_size, "width"))) if crop_size else None
    resample = getattr(processor, "resample", 3)
    normalize = getattr(processor, "do_normalize", True)
    return Preprocessing(
        resize=resize,
        crop=crop,
        interpolation=_RESAMPLE_NAMES.get(int(resample), "bicubic"),
        mean=tuple(float(v) for v in processor.image_mean) if normalize else (0.0, 0.0, 0.0),
        std=tuple(float(v) for v in processor.image_std) if normalize else (1.0, 1.0, 1.0),
        resize_impl="torch" if _uses_torchvision(processor) else "pil",
        crop_rounding="floor",
    )


def weights_identity(spec: ModelSpec) -> str | None:
    commit = cached_commit(spec.source, spec.revision)
    return f"hub:{spec.source}@{commit}" if commit else None


def quiet_transformers() -> None:
    """Load reports and per-shard progress bars would bury medprobe's own progress line."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def load(spec: ModelSpec, prep: Preprocessing) -> Backbone:
    from transformers import AutoModel

    quiet_transformers()
    from medprobe.models.backbone import hash_model_directory

    try:
        model = AutoModel.from_pretrained(spec.source, revision=spec.revision, trust_remote_code=False)
    except LOAD_ERRORS as exc:
        raise hub_error(spec.source, exc) from exc
    config = model.config
    is_vit = getattr(config, "patch_size", None) is not None and getattr(config, "hidden_size", None) is not None
    commit = getattr(config, "_commit_hash", None)
    if spec.is_local:
        from pathlib import Path

        identity = hash_model_directory(Path(spec.source))
    else:
        identity = f"hub:{spec.source}@{commit}"
    if is_vit:
        pools = VIT_POOLS if hasattr(model, "layernorm") else ("cls", "mean")
        embed = _vit_embed(model, prefix_tokens=1 + int(getattr(config, "num_register_tokens", 0) or 0),
                           with_cls4="cls4" in pools)
    else:
        pools = CNN_POOLS
        embed = _cnn_embed(model)
    return Backbone(spec=spec, module=model, preprocessing=prep, embed=embed, pools=pools,
                    is_cnn=not is_vit, weights_identity=identity, resolved_revision=commit)


def _vit_embed(model, *, prefix_tokens: int, with_cls4: bool):
    """cls: final-normed CLS; mean: final-normed patch tokens (registers excluded); cls4: the last four
    blocks' CLS tokens, each through the final norm, concatenated (DINOv2 linear-eval input)."""
    extra = {}
    if "interpolate_pos_encoding" in inspect.signature(model.forward).parameters:
        extra["interpolate_pos_encoding"] = True  # lets --image-size differ from the trained size

    def embed(pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        out = model(pixel_values=pixels, output_hidden_states=with_cls4, **extra)
        tokens = out.last_hidden_state
        pooled = {"cls": tokens[:, 0], "mean": tokens[:, prefix_tokens:].mean(dim=1)}
        if with_cls4:
            pooled["cls4"] = torch.cat([model.layernorm(h[:, 0]) for h in out.hidden_states[-4:]], dim=-1)
        return pooled

    return embed


def _cnn_embed(model):
    def embed(pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        out = model(pixel_values=pixels)
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            pooled = out.last_hidden_state.mean(dim=(2, 3))
        return {"gap": pooled.flatten(1)}

    return embed

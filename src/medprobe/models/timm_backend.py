"""timm helpers for the timm family: model names, the pretrained config that travels with the weights,
creation with the model card's kwargs, and the block layout from timm's own `group_matcher`."""

from __future__ import annotations

import importlib
import math
import re
from pathlib import Path

from medprobe.errors import MedprobeError
from medprobe.models.hub import cached_commit, hub_error
from medprobe.models.preprocess import Preprocessing
from medprobe.models.spec import ModelSpec

CLASS_PREFIX = "class:"  # a create_kwargs value naming a class, e.g. "class:timm.layers.SwiGLUPacked"
LOAD_ERRORS = (OSError, RuntimeError, ValueError)


def timm_name(spec: ModelSpec) -> str:
    if spec.is_local:
        return f"local-dir:{spec.source}"
    if spec.revision:
        return f"hf-hub:{spec.hub_repo}@{spec.revision}"
    return spec.source


def pretrained_cfg(spec: ModelSpec) -> dict:
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
    except LOAD_ERRORS as exc:
        raise hub_error(spec.source, exc) from exc
    if cfg is None:
        raise MedprobeError(f"timm has no pretrained weights named {spec.source!r}; see timm.list_pretrained()")
    return cfg if isinstance(cfg, dict) else cfg.to_dict()


def preprocessing(spec: ModelSpec) -> Preprocessing:
    from timm.data import resolve_data_config

    config = resolve_data_config({}, pretrained_cfg=pretrained_cfg(spec))
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
    commit = cached_commit(spec.hub_repo, spec.revision)
    return f"hub:{spec.hub_repo}@{commit}" if commit else None


def creation_kwargs(spec: ModelSpec) -> dict:
    """The spec's create_kwargs with class paths imported (the model card passes classes)."""
    kwargs: dict = {}
    for key, value in spec.create_kwargs:
        if isinstance(value, str) and value.startswith(CLASS_PREFIX):
            module, _, attr = value.removeprefix(CLASS_PREFIX).rpartition(".")
            value = getattr(importlib.import_module(module), attr)
        kwargs[key] = value
    return kwargs | {"num_classes": 0}


def create(spec: ModelSpec, prep: Preprocessing):
    """timm.create_model(pretrained=True) with the entry's kwargs; a ViT asked for another input size takes
    img_size and resamples its position embeddings (CNNs need nothing)."""
    import timm

    name, kwargs = timm_name(spec), creation_kwargs(spec)
    try:
        if prep.input_size != preprocessing(spec).input_size:
            try:
                return timm.create_model(name, pretrained=True, **(kwargs | {"img_size": prep.input_size}))
            except TypeError:
                pass
        return timm.create_model(name, pretrained=True, **kwargs)
    except LOAD_ERRORS as exc:
        raise hub_error(spec.source, exc) from exc


def identity(spec: ModelSpec) -> tuple[str, str | None]:
    from medprobe.models.identity import hash_model_directory

    if spec.is_local:
        return hash_model_directory(Path(spec.source)), None
    commit = cached_commit(spec.hub_repo, spec.revision)
    return f"hub:{spec.hub_repo}@{commit}", commit


def _patterns(spec) -> list[tuple[re.Pattern, tuple | None]]:
    if isinstance(spec, str):
        return [(re.compile(spec), None)]
    return [(re.compile(pattern), suffix) for pattern, suffix in spec]


def group_layout(model):
    """Blocks from timm's `group_matcher(coarse=True)` (the grouping timm's layer decay uses): the groups
    that hold a block's parameters, in order (timm folds the final norm into the last one); what follows the last
    block (a CNN's pre-logits) is the top; the stem stays frozen."""
    from timm.models import group_parameters

    from medprobe.models.backbone import BlockLayout

    try:
        matcher = model.group_matcher(coarse=True)
    except (AttributeError, NotImplementedError):
        return BlockLayout([])
    block_patterns = [p for p, suffix in _patterns(matcher.get("blocks", [])) if suffix != (99999,)]
    named = dict(model.named_parameters())
    groups = [names for _, names in sorted(group_parameters(model, matcher).items())]
    is_block = [any(p.match(n) for p in block_patterns for n in names) for names in groups]
    if not any(is_block):
        return BlockLayout([])
    first, last = is_block.index(True), len(is_block) - 1 - is_block[::-1].index(True)
    blocks = [[named[n] for n in names] for names in groups[first:last + 1]]
    top = [named[n] for names in groups[last + 1:] for n in names]
    return BlockLayout(blocks, top)

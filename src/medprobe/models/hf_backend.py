"""transformers helpers the transformers families share: image-processor reading, loading with one
clear error, weights identity, and the token pools of a ViT. trust_remote_code stays off."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from medprobe.errors import MedprobeError
from medprobe.models.hub import cached_commit, hub_error
from medprobe.models.identity import hash_model_directory
from medprobe.models.preprocess import Preprocessing
from medprobe.models.spec import ModelSpec

_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
LOAD_ERRORS = (OSError, ValueError, KeyError, RuntimeError)


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
    """The checkpoint's own image processor, as a Preprocessing record."""
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(spec.source, revision=spec.revision, trust_remote_code=False)
    except LOAD_ERRORS as exc:
        raise hub_error(spec.source, exc) from exc
    size = processor.size if getattr(processor, "do_resize", True) else None
    crop_size = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    crop = (int(_field(crop_size, "height")), int(_field(crop_size, "width"))) if crop_size else None
    shortest_edge = _field(size, "shortest_edge")
    crop_pct = getattr(processor, "crop_pct", None)
    if shortest_edge and crop_pct and crop is None:
        # ConvNextImageProcessor (microsoft/resnet-50, facebook/convnext-*): below 384 the shortest edge goes to
        # shortest_edge / crop_pct, then a centre crop of shortest_edge square; from 384 a square resize
        edge = int(shortest_edge)
        resize: int | tuple[int, int] | None = int(edge / crop_pct) if edge < 384 else (edge, edge)
        crop = (edge, edge) if edge < 384 else None
    elif shortest_edge:
        resize = int(shortest_edge)
    elif _field(size, "height"):
        resize = (int(_field(size, "height")), int(_field(size, "width")))
    else:
        resize = None
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


def load_model(model_class, spec: ModelSpec, **kwargs):
    """`model_class.from_pretrained` for the spec, with any hub or file failure as one clear line."""
    quiet_transformers()
    try:
        return model_class.from_pretrained(spec.source, revision=spec.revision, trust_remote_code=False, **kwargs)
    except LOAD_ERRORS as exc:
        raise hub_error(spec.source, exc) from exc


def load_config(spec: ModelSpec):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(spec.source, revision=spec.revision, trust_remote_code=False)
    except LOAD_ERRORS as exc:
        raise hub_error(spec.source, exc) from exc


def identity(spec: ModelSpec) -> tuple[str, str | None]:
    """(weights identity, resolved hub commit) of a loaded model: the snapshot the local hub cache resolves
    its revision to (transformers 5 no longer records the commit on the config)."""
    if spec.is_local:
        return hash_model_directory(Path(spec.source)), None
    commit = cached_commit(spec.source, spec.revision)
    return f"hub:{spec.source}@{commit}", commit


def takes_images(model, spec: ModelSpec) -> None:
    if "pixel_values" not in inspect.signature(model.forward).parameters:
        raise MedprobeError(f"{spec.source} is a {type(model).__name__}, whose forward takes no images; "
                            "pass an image backbone (see `medprobe models`)")


def size_kwargs(model) -> dict:
    """Lets --image-size differ from the trained size where the model can interpolate its positions."""
    return {"interpolate_pos_encoding": True} if "interpolate_pos_encoding" in inspect.signature(
        model.forward).parameters else {}


def token_embed(model, *, prefix_tokens: int, norm=None):
    """ViT pools from one forward: cls = final-normed CLS; mean = final-normed patch tokens (registers
    excluded); cls4 (when `norm` is the final norm) = the last four blocks' CLS tokens, each through that
    norm, concatenated (DINOv2 linear-eval input)."""
    extra = size_kwargs(model)

    def embed(pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        out = model(pixel_values=pixels, output_hidden_states=norm is not None, **extra)
        tokens = out.last_hidden_state
        pooled = {"cls": tokens[:, 0], "mean": tokens[:, prefix_tokens:].mean(dim=1)}
        if norm is not None:
            pooled["cls4"] = torch.cat([norm(h[:, 0]) for h in out.hidden_states[-4:]], dim=-1)
        return pooled

    return embed

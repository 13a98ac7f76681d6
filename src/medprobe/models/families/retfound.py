"""RETFound (Zhou et al., Nature 2023; github.com/rmaphoh/RETFound_MAE): retinal foundation models, published on
the hub as training checkpoints, one file per repository (`YukunZhou/NAME/NAME.pth`): the ViT's weights under
"model" (MAE pre-training, with its decoder) or "teacher" (DINOv2, keys under "backbone."), beside the training
run's argparse Namespace. They are read with torch.load(weights_only=True) and only Namespace allowed besides
tensors, so no other object is ever unpickled; the architecture (a timm ViT) is read off the weights' shapes.

Pools: `cls` (the final norm's CLS token, RETFound's `--cls_token` mode), `mean` (mean of the normed patch
tokens) and `global_pool`, the authors' embedding (their fine-tuning default and feature notebook): the mean of
the patch tokens through a LayerNorm of unit weight and zero bias (eps 1e-6). For MAE weights that is the
`fc_norm` their ViT adds for global pooling over the *un-normed* tokens (the checkpoint has none, so it keeps its
initial values); for DINOv2 weights the notebook applies a fresh LayerNorm to the mean of the normed tokens.
Preprocessing is the authors' evaluation transform: bicubic resize to input / 0.875 (input <= 224, else the
input), center crop, ImageNet mean and std."""

from __future__ import annotations

import math
from pathlib import Path

from medprobe.errors import MedprobeError
from medprobe.models.families.base import Family, register
from medprobe.models.spec import ModelSpec

POOLS = ("global_pool", "cls", "mean")
LICENCE = "cc-by-nc-4.0"
HEAD_DIM = 64  # every RETFound ViT (ViT-L: 1024 wide, 16 heads); heads are not recorded in the weights
PREFIX = "retfound:"  # retfound:PATH.pth for a checkpoint downloaded by hand
EMBED_NORM_EPS = 1e-6
DROPPED = ("decoder", "mask_token", "dino_head", "ibot_head", "head.", "fc_norm.")  # not part of the encoder


def _entry(name: str, repo: str, params: float, note: str) -> ModelSpec:
    return ModelSpec(name, "retfound", f"hf-hub:YukunZhou/{repo}", params, 224, 1024, POOLS, note=note,
                     family="retfound", licence=LICENCE, gated=True, hub_file=f"{repo}.pth")


def checkpoint_file(spec: ModelSpec) -> Path:
    """The .pth file: a local path (retfound:PATH), or the hub's (downloaded, or from the hub cache)."""
    if spec.hub_repo is None:
        return Path(spec.source)
    from huggingface_hub import hf_hub_download

    from medprobe.models.hub import hub_error

    try:
        return Path(hf_hub_download(spec.hub_repo, spec.hub_file, revision=spec.revision))
    except Exception as exc:  # noqa: BLE001 - every hub failure becomes one line
        raise hub_error(spec.source, exc) from exc


def read_encoder(path: Path) -> tuple[dict, str]:
    """The encoder's weights and their kind ("mae" | "dinov2") from a RETFound training checkpoint."""
    import argparse
    import pickle

    import torch

    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise MedprobeError(f"{path} is not a RETFound checkpoint medprobe can read safely ({first})") from exc
    kind = "mae" if "model" in checkpoint else "dinov2" if "teacher" in checkpoint else None
    if not isinstance(checkpoint, dict) or kind is None:
        raise MedprobeError(f"{path} holds neither 'model' (RETFound MAE) nor 'teacher' (RETFound DINOv2) weights")
    state = checkpoint["model" if kind == "mae" else "teacher"]
    if any(key.startswith("backbone.") for key in state):
        state = {key.removeprefix("backbone."): value for key, value in state.items() if key.startswith("backbone.")}
    return {key: value for key, value in state.items() if not key.startswith(DROPPED)}, kind


def vit_kwargs(state: dict, path: Path) -> dict:
    """timm VisionTransformer arguments that fit the weights."""
    try:
        width = int(state["cls_token"].shape[-1])
        patch = int(state["patch_embed.proj.weight"].shape[-1])
        depth = 1 + max(int(key.split(".")[1]) for key in state if key.startswith("blocks."))
        grid = math.isqrt(int(state["pos_embed"].shape[1]) - 1)
        hidden = int(state["blocks.0.mlp.fc1.weight"].shape[0])
    except (KeyError, ValueError) as exc:
        raise MedprobeError(f"{path}: the weights are not a ViT encoder's (missing {exc})") from exc
    return dict(img_size=grid * patch, patch_size=patch, embed_dim=width, depth=depth,
                num_heads=max(1, width // HEAD_DIM), mlp_ratio=hidden / width,
                qkv_bias="blocks.0.attn.qkv.bias" in state,
                init_values=1e-5 if "blocks.0.ls1.gamma" in state else None)


def build_encoder(state: dict, path: Path, input_size: tuple[int, int]):
    """A timm ViT holding exactly these weights, at `input_size` (position embeddings resampled if needed)."""
    import timm
    from timm.layers import resample_abs_pos_embed

    kwargs = vit_kwargs(state, path)
    trained = kwargs["img_size"] // kwargs["patch_size"]
    wanted = (input_size[0] // kwargs["patch_size"], input_size[1] // kwargs["patch_size"])
    if wanted != (trained, trained):
        state = dict(state, pos_embed=resample_abs_pos_embed(state["pos_embed"], list(wanted), [trained, trained],
                                                             num_prefix_tokens=1))
    # timm's default norm is LayerNorm(eps=1e-6), RETFound's own
    model = timm.models.vision_transformer.VisionTransformer(**(kwargs | {"img_size": input_size}), num_classes=0,
                                                             global_pool="token")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        shown = ", ".join([*missing[:3], *unexpected[:3]])
        raise MedprobeError(f"{path}: the weights do not fit a ViT ({len(missing)} missing, {len(unexpected)} "
                            f"unexpected: {shown}); is it a RETFound checkpoint?")
    return model.eval()


@register
class RetFound(Family):
    name = "retfound"
    backend = "retfound"
    summary = "RETFound retinal ViTs (MAE and DINOv2 training checkpoints from the hub, read without unpickling)"
    pools = POOLS
    standard = ("global_pool",)

    def entries(self):
        return [
            _entry("retfound-mae-cfp", "RETFound_mae_natureCFP", 303.3, "RETFound MAE ViT-L/16, colour fundus"),
            _entry("retfound-mae-oct", "RETFound_mae_natureOCT", 303.3, "RETFound MAE ViT-L/16, OCT"),
            _entry("retfound-mae-meh", "RETFound_mae_meh", 303.3, "RETFound MAE ViT-L/16, fundus (Moorfields)"),
            _entry("retfound-dinov2-meh", "RETFound_dinov2_meh", 304.4,
                   "RETFound DINOv2 ViT-L/14, fundus (Moorfields)"),
        ]

    def preprocessing(self, spec):
        from medprobe.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

        size = spec.input_size or 224
        return Preprocessing(resize=math.floor(size / (224 / 256)) if size <= 224 else size, crop=(size, size),
                             interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD, resize_impl="pil",
                             crop_rounding="round")

    def weights_identity(self, spec):
        """A hub entry's commit once cached (local files are hashed by identity.weights_identity)."""
        from medprobe.models.hub import cached_commit

        commit = cached_commit(spec.hub_repo, spec.revision, spec.hub_file)
        return f"hub:{spec.hub_repo}@{commit}" if commit else None

    def load(self, spec, prep):
        from medprobe.models.backbone import Backbone
        from medprobe.models.identity import hash_model_directory

        path = checkpoint_file(spec)
        state, kind = read_encoder(path)
        model = build_encoder(state, path, prep.input_size)
        identity = self.weights_identity(spec) if spec.hub_repo else None
        return Backbone(spec=spec, module=model, preprocessing=prep, embed=_embed(model, kind), pools=POOLS,
                        is_cnn=False, weights_identity=identity or hash_model_directory(path),
                        resolved_revision=identity.rsplit("@", 1)[1] if identity else None)

    def layout(self, module):
        from medprobe.models import timm_backend

        return timm_backend.group_layout(module)


def _embed(model, kind: str):
    def embed(pixels):
        import torch.nn.functional as F

        normed, (raw,) = model.forward_intermediates(pixels, indices=1, norm=False, output_fmt="NLC")
        patches = normed[:, model.num_prefix_tokens:]
        pooled_from = raw if kind == "mae" else patches  # raw: the last block's patch tokens, before the norm
        mean = pooled_from.mean(dim=1)
        return {"global_pool": F.layer_norm(mean, mean.shape[-1:], eps=EMBED_NORM_EPS),
                "cls": normed[:, 0], "mean": patches.mean(dim=1)}

    return embed

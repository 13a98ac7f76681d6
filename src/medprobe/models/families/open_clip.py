"""open_clip checkpoints (`openclip:hf-hub:ORG/NAME`, or a folder holding open_clip_config.json), BiomedCLIP
among them. The optional extra `medprobe[openclip]` installs open_clip. Only the vision tower is kept; its
embedding is `encode_image` (unnormalised, as the probes standardise). Preprocessing comes from the
checkpoint's open_clip_config.json, read without loading weights."""

from __future__ import annotations

from pathlib import Path

from medprobe.errors import MedprobeError
from medprobe.models.families.base import Family, register
from medprobe.models.spec import ModelSpec

CONFIG = "open_clip_config.json"
INSTALL = "open_clip is not installed; pip install 'medprobe[openclip]' (or open_clip_torch)"


def require_open_clip():
    try:
        import open_clip
    except ImportError as exc:
        raise MedprobeError(INSTALL) from exc
    return open_clip


def open_clip_name(spec: ModelSpec) -> str:
    return f"local-dir:{spec.source}" if spec.is_local else spec.source


@register
class OpenClip(Family):
    name = "open_clip"
    backend = "open_clip"
    summary = "open_clip vision tower (BiomedCLIP, any hf-hub open_clip checkpoint); embed = encode_image"
    pools = ("embed",)
    standard = ("embed",)

    def claims(self, config: dict) -> bool:
        return "model_cfg" in config

    def entries(self):
        return [ModelSpec("biomedclip", "open_clip", "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
                          86.2, 224, 512, self.pools, note="BiomedCLIP ViT-B/16 on PMC-15M figure-caption pairs",
                          family=self.name, licence="mit")]

    def preprocessing(self, spec):
        from medprobe.models.hub import checkpoint_config
        from medprobe.models.preprocess import Preprocessing

        config = checkpoint_config(spec, CONFIG)
        cfg = config.get("preprocess_cfg", {})
        size = cfg.get("size") or config.get("model_cfg", {}).get("vision_cfg", {}).get("image_size", 224)
        size = (size, size) if isinstance(size, int) else tuple(size)
        mode = cfg.get("resize_mode", "shortest")
        if mode == "longest" or (mode == "shortest" and size[0] != size[1]):
            raise MedprobeError(f"{spec.source}: open_clip resize_mode {mode!r} at {size} is not supported; "
                                "use a checkpoint with a square 'shortest' or 'squash' resize")
        mean = tuple(float(v) for v in cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)))
        std = tuple(float(v) for v in cfg.get("std", (0.26862954, 0.26130258, 0.27577711)))
        return Preprocessing(resize=size[0] if mode == "shortest" else size, crop=size if mode == "shortest" else None,
                             interpolation=cfg.get("interpolation", "bicubic"), mean=mean, std=std,
                             resize_impl="pil", crop_rounding="round")

    def weights_identity(self, spec):
        from medprobe.models.hub import cached_commit

        commit = cached_commit(spec.hub_repo, None, filename=CONFIG)
        return f"hub:{spec.hub_repo}@{commit}" if commit else None

    def load(self, spec, prep):
        from medprobe.models.backbone import Backbone
        from medprobe.models.hub import hub_error
        from medprobe.models.identity import hash_model_directory

        open_clip = require_open_clip()
        try:
            model = open_clip.create_model(open_clip_name(spec), force_image_size=prep.input_size)
        except (OSError, RuntimeError, ValueError) as exc:
            raise hub_error(spec.source, exc) from exc
        visual = model.visual
        identity = hash_model_directory(Path(spec.source)) if spec.is_local else self.weights_identity(spec)

        def embed(pixels):
            return {"embed": visual(pixels)}

        return Backbone(spec=spec, module=visual, preprocessing=prep, embed=embed, pools=self.pools, is_cnn=False,
                        weights_identity=identity or f"hub:{spec.hub_repo}")

    def layout(self, module):
        from medprobe.models import timm_backend
        from medprobe.models.backbone import BlockLayout, module_layout

        trunk = getattr(module, "trunk", None)
        if trunk is not None:  # a timm trunk (BiomedCLIP): timm's own grouping, then open_clip's head
            layout = timm_backend.group_layout(trunk)
            return BlockLayout(layout.blocks, layout.top + list(module.head.parameters()))
        transformer = getattr(module, "transformer", None)
        if transformer is None:
            return BlockLayout([])
        return module_layout(transformer.resblocks, getattr(module, "ln_post", None), getattr(module, "proj", None))

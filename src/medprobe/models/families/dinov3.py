"""DINOv3 (transformers): ViT S/S+/B/L/H+ with 4 registers and RoPE, and the distilled ConvNeXt T/S/B/L. The model
card embeds with `pooler_output`: the final-normed CLS token (ViT), the normed global average (ConvNeXt)."""

from __future__ import annotations

from medprobe.models.families.base import register
from medprobe.models.families.transformers_vit import TokenFamily, TransformersFamily
from medprobe.models.spec import CNN_POOLS, ModelSpec

LICENCE = "dinov3-license"

VITS = (("vits16", 21.6, 384), ("vits16plus", 28.7, 384), ("vitb16", 85.7, 768), ("vitl16", 300.2, 1024),
        ("vith16plus", 840.6, 1280))
CONVNEXTS = (("convnext-tiny", 27.8, 768), ("convnext-small", 49.5, 768), ("convnext-base", 87.6, 1024),
             ("convnext-large", 196.2, 1536))


def _entry(name: str, params: float, dim: int, pools: tuple[str, ...], family: str) -> ModelSpec:
    return ModelSpec(f"dinov3-{name}", "transformers", f"facebook/dinov3-{name}-pretrain-lvd1689m", params, 224, dim,
                     pools, note="DINOv3 on LVD-1689M", family=family, licence=LICENCE, gated=True)


@register
class Dinov3Vit(TokenFamily):
    name = "dinov3"
    summary = "DINOv3 ViT/16 with registers (excluded from mean) and RoPE"
    standard = ("cls",)
    model_types = ("dinov3_vit",)

    def entries(self):
        return [_entry(name, params, dim, self.pools, self.name) for name, params, dim in VITS]

    def model_class(self):
        from transformers import DINOv3ViTModel

        return DINOv3ViTModel

    def final_norm(self, module):
        return module.norm

    def blocks(self, module):
        return module.model.layer


@register
class Dinov3ConvNext(TransformersFamily):
    name = "dinov3-convnext"
    summary = "DINOv3 ConvNeXt distilled from the 7B ViT"
    pools = CNN_POOLS
    standard = CNN_POOLS
    is_cnn = True
    model_types = ("dinov3_convnext",)

    def entries(self):
        return [_entry(name, params, dim, self.pools, self.name) for name, params, dim in CONVNEXTS]

    def load(self, spec, prep):
        from transformers import DINOv3ConvNextModel

        from medprobe.models import hf_backend
        from medprobe.models.backbone import Backbone

        model = hf_backend.load_model(DINOv3ConvNextModel, spec)
        identity, commit = hf_backend.identity(spec)

        def embed(pixels):
            return {"gap": model(pixel_values=pixels).pooler_output}

        return Backbone(spec=spec, module=model, preprocessing=prep, embed=embed, pools=self.pools, is_cnn=True,
                        weights_identity=identity, resolved_revision=commit)

    def layout(self, module):
        from medprobe.models.backbone import module_layout

        return module_layout(module.model.stages, module.layer_norm)

"""DINOv2 (with or without registers: DINOv2, RAD-DINO, Phikon-v2) and any other transformers checkpoint:
ViTs by their patch tokens, everything else as a CNN with one global pool."""

from __future__ import annotations

from medprobe.models.families.base import Family, register
from medprobe.models.spec import CNN_POOLS, VIT_POOLS, ModelSpec


class TransformersFamily(Family):
    """Preprocessing and weights identity from the checkpoint's own image processor and hub commit."""

    backend = "transformers"

    def preprocessing(self, spec):
        from medprobe.models import hf_backend

        return hf_backend.preprocessing(spec)

    def weights_identity(self, spec):
        from medprobe.models import hf_backend

        return hf_backend.weights_identity(spec)


class TokenFamily(TransformersFamily):
    """A transformers ViT: CLS, then registers (config.num_register_tokens), then patches; final norm after the
    last block (cls4 needs it)."""

    pools = VIT_POOLS

    def model_class(self):
        from transformers import AutoModel

        return AutoModel

    def final_norm(self, module):
        return getattr(module, "layernorm", None)

    def blocks(self, module):
        encoder = getattr(module, "encoder", None)  # transformers 5 ViTModel keeps its layers at the top level
        return encoder.layer if encoder is not None else module.layers

    def load(self, spec, prep):
        from medprobe.models import hf_backend
        from medprobe.models.backbone import Backbone

        model = hf_backend.load_model(self.model_class(), spec)
        hf_backend.takes_images(model, spec)
        prefix = 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)
        norm = self.final_norm(model)
        identity, commit = hf_backend.identity(spec)
        return Backbone(spec=spec, module=model, preprocessing=prep, is_cnn=False,
                        pools=self.pools if norm is not None else ("cls", "mean"),
                        embed=hf_backend.token_embed(model, prefix_tokens=prefix, norm=norm),
                        weights_identity=identity, resolved_revision=commit)

    def layout(self, module):
        from medprobe.models.backbone import module_layout

        return module_layout(self.blocks(module), self.final_norm(module))


def _dinov2(size: str, params: float, dim: int, *, registers: bool) -> ModelSpec:
    hub = f"facebook/dinov2-with-registers-{size}" if registers else f"facebook/dinov2-{size}"
    note = "DINOv2 ViT/14" + (" with 4 registers" if registers else "")
    return ModelSpec(f"dinov2-{size}" + ("-reg" if registers else ""), "transformers", hub,
                     params, 224, dim, VIT_POOLS, note=note, family="dinov2", licence="apache-2.0")


@register
class Dinov2(TokenFamily):
    name = "dinov2"
    summary = "DINOv2 ViT/14, with or without registers (DINOv2, RAD-DINO, Phikon-v2)"
    standard = ("cls", "mean")  # DINOv2 linear eval: CLS concatenated with the patch-token average
    model_types = ("dinov2", "dinov2_with_registers")

    def entries(self):
        return [
            *(_dinov2(s, p, d, registers=r) for r in (False, True)
              for s, p, d in (("small", 22.1, 384), ("base", 86.6, 768), ("large", 304.4, 1024),
                              ("giant", 1136.5, 1536))),
            ModelSpec("rad-dino", "transformers", "microsoft/rad-dino", 86.6, 518, 768, VIT_POOLS,
                      note="DINOv2 ViT-B/14 trained on chest X-rays", family=self.name, licence="msrla",
                      standard=("cls",)),  # model card: pooler_output, the CLS token
            ModelSpec("phikon-v2", "transformers", "owkin/phikon-v2", 303.0, 224, 1024, VIT_POOLS,
                      note="DINOv2 ViT-L/16 on 460M pathology tiles", family=self.name, licence="owkin-non-commercial",
                      standard=("cls",)),  # model card: last_hidden_state[:, 0]
        ]


@register
class TransformersVit(TokenFamily):
    name = "transformers-vit"
    summary = "any transformers ViT (patch tokens; cls4 where it has a final layernorm)"
    standard = ("cls",)
    model_types = ("vit",)
    fallback = 1

    def claims(self, config: dict) -> bool:
        return super().claims(config) or ("patch_size" in config and "hidden_size" in config)

    def entries(self):
        return [ModelSpec("vit-base", "transformers", "google/vit-base-patch16-224", 86.4, 224, 768, VIT_POOLS,
                          note="supervised ViT-B/16, ImageNet-21k + 1k", family=self.name, licence="apache-2.0")]


@register
class TransformersCnn(TransformersFamily):
    name = "transformers-cnn"
    summary = "any other transformers vision checkpoint (ConvNeXt, ResNet, ...): global average pool"
    pools = CNN_POOLS
    standard = CNN_POOLS
    is_cnn = True
    fallback = 2

    def claims(self, config: dict) -> bool:
        return "num_channels" in config  # a vision config (text and audio ones have none)

    def load(self, spec, prep):
        from transformers import AutoModel

        from medprobe.models import hf_backend
        from medprobe.models.backbone import Backbone

        model = hf_backend.load_model(AutoModel, spec)
        hf_backend.takes_images(model, spec)
        identity, commit = hf_backend.identity(spec)

        def embed(pixels):
            out = model(pixel_values=pixels)
            pooled = getattr(out, "pooler_output", None)
            if pooled is None:
                pooled = out.last_hidden_state.mean(dim=(2, 3))
            return {"gap": pooled.flatten(1)}

        return Backbone(spec=spec, module=model, preprocessing=prep, embed=embed, pools=self.pools, is_cnn=True,
                        weights_identity=identity, resolved_revision=commit)

    def layout(self, module):
        from medprobe.models.backbone import module_layout

        encoder = getattr(module, "encoder", None)
        stages = getattr(encoder, "stages", None)
        return module_layout(stages if stages is not None else [], getattr(module, "layernorm", None))

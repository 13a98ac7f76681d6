"""CLIP and SigLIP (SigLIP 2 fixed-resolution, MedSigLIP) from the checkpoints as published: both towers in one
CLIPModel / SiglipModel. Only the vision tower is loaded (its weights sit under the same names in the full
checkpoint); a vision-only checkpoint loads the same way.

Pools: `embed` is the image embedding `get_image_features` returns (CLIP: the projected post-layernorm CLS;
SigLIP: the attention-pooling head's output, which has no projection after it); `pooled` is CLIP's
pre-projection CLS; `mean` the final-normed patch tokens. SigLIP has no CLS token, so it has no `cls` pool.
"""

from __future__ import annotations

from medprobe.errors import MedprobeError
from medprobe.models.families.base import register
from medprobe.models.families.transformers_vit import TransformersFamily
from medprobe.models.spec import ModelSpec


@register
class Clip(TransformersFamily):
    name = "clip"
    summary = "CLIP vision tower (from a two-tower or vision-only checkpoint)"
    pools = ("embed", "pooled", "mean")
    standard = ("embed",)
    model_types = ("clip", "clip_vision_model")

    def entries(self):
        return [ModelSpec("clip-vit-b16", "transformers", "openai/clip-vit-base-patch16", 86.2, 224, 512, self.pools,
                          note="OpenAI CLIP ViT-B/16", family=self.name, licence="mit")]

    def load(self, spec, prep):
        from transformers import CLIPVisionModelWithProjection

        from medprobe.models import hf_backend
        from medprobe.models.backbone import Backbone

        config = hf_backend.load_config(spec)
        if hasattr(config, "vision_config"):  # a two-tower checkpoint: its projection width is top-level
            config.vision_config.projection_dim = config.projection_dim
            config = config.vision_config
        model = hf_backend.load_model(CLIPVisionModelWithProjection, spec, config=config)
        tower, extra = model.vision_model, hf_backend.size_kwargs(model)

        def embed(pixels):
            out = tower(pixel_values=pixels, **extra)
            return {"embed": model.visual_projection(out.pooler_output), "pooled": out.pooler_output,
                    "mean": tower.post_layernorm(out.last_hidden_state[:, 1:]).mean(dim=1)}

        identity, commit = hf_backend.identity(spec)
        return Backbone(spec=spec, module=model, preprocessing=prep, embed=embed, pools=self.pools, is_cnn=False,
                        weights_identity=identity, resolved_revision=commit)

    def layout(self, module):
        from medprobe.models.backbone import module_layout

        tower = module.vision_model
        return module_layout(tower.encoder.layers, tower.post_layernorm, module.visual_projection)


@register
class Siglip(TransformersFamily):
    name = "siglip"
    summary = "SigLIP / SigLIP 2 (fixed resolution) vision tower; embedding = attention-pool head"
    pools = ("embed", "mean")
    standard = ("embed",)
    model_types = ("siglip", "siglip_vision_model")

    def entries(self):
        return [
            ModelSpec("medsiglip-448", "transformers", "google/medsiglip-448", 428.2, 448, 1152, self.pools,
                      note="SigLIP So400m/14 tuned on medical images", family=self.name,
                      licence="health-ai-developer-foundations", gated=True),
            ModelSpec("siglip2-base", "transformers", "google/siglip2-base-patch16-224", 92.9, 224, 768, self.pools,
                      note="SigLIP 2 ViT-B/16, 224 px", family=self.name, licence="apache-2.0"),
        ]

    def load(self, spec, prep):
        from transformers import SiglipVisionModel

        from medprobe.models import hf_backend
        from medprobe.models.backbone import Backbone

        model = hf_backend.load_model(SiglipVisionModel, spec)
        extra = hf_backend.size_kwargs(model)

        def embed(pixels):
            out = model(pixel_values=pixels, **extra)
            return {"embed": out.pooler_output, "mean": out.last_hidden_state.mean(dim=1)}

        identity, commit = hf_backend.identity(spec)
        return Backbone(spec=spec, module=model, preprocessing=prep, embed=embed, pools=self.pools, is_cnn=False,
                        weights_identity=identity, resolved_revision=commit)

    def layout(self, module):
        from medprobe.models.backbone import module_layout

        tower = getattr(module, "vision_model", module)  # transformers 5: SiglipVisionModel is the tower itself
        return module_layout(tower.encoder.layers, tower.post_layernorm, getattr(tower, "head", None))


@register
class Siglip2Naflex(TransformersFamily):
    """Recognised so that it fails with one line instead of a traceback."""

    name = "siglip2-naflex"
    summary = "SigLIP 2 NaFlex (variable resolution): not supported, use a fixed-resolution SigLIP 2"
    pools = ()
    standard = ()
    model_types = ("siglip2", "siglip2_vision_model")

    def refuse(self, spec):
        raise MedprobeError(f"{spec.source} is a SigLIP 2 NaFlex checkpoint, which takes variable-size patch "
                            "sequences; use a fixed-resolution one such as siglip2-base "
                            "(google/siglip2-base-patch16-224)")

    def preprocessing(self, spec):
        self.refuse(spec)

    def load(self, spec, prep):
        self.refuse(spec)

"""timm: the reference study's torchvision-ImageNet CNNs (`*.tv_in1k`), hub models that need the model card's
creation kwargs (UNI, UNI2-h, Virchow2, H-optimus-0), any `timm:NAME`, and folders written by save_for_hf.
Token models (timm's `num_prefix_tokens` + `forward_intermediates`) offer cls/mean/cls4, the rest `gap`."""

from __future__ import annotations

from medprobe.models.families.base import Family, register
from medprobe.models.spec import CNN_POOLS, VIT_POOLS, ModelSpec

SWIGLU = (("mlp_layer", "class:timm.layers.SwiGLUPacked"), ("act_layer", "class:torch.nn.SiLU"))
NC_ND = "cc-by-nc-nd-4.0"


def _cnn(name: str, params: float, dim: int) -> ModelSpec:
    return ModelSpec(name, "timm", f"{name}.tv_in1k", params, 224, dim, CNN_POOLS, family="timm",
                     note="torchvision ImageNet weights (reference study)", licence="bsd-3-clause")


def _hub(name: str, repo: str, params: float, dim: int, note: str, licence: str, kwargs, **extra) -> ModelSpec:
    return ModelSpec(name, "timm", f"hf-hub:{repo}", params, 224, dim, VIT_POOLS, note=note, family="timm",
                     licence=licence, gated=True, create_kwargs=tuple(kwargs), **extra)


@register
class Timm(Family):
    name = "timm"
    backend = "timm"
    summary = "timm models: ViTs (cls/mean/cls4, registers excluded) and CNNs (gap), blocks from group_matcher"
    pools = VIT_POOLS + CNN_POOLS
    standard = ("cls",)  # ViTs: timm's default token pool; CNNs have only gap

    def claims(self, config: dict) -> bool:
        return "architecture" in config

    def entries(self):
        return [
            *(_cnn(n, p, d) for n, p, d in (("vgg16", 134.3, 4096), ("resnet50", 23.5, 2048),
                                            ("densenet121", 7.0, 1024))),
            _hub("uni", "MahmoodLab/uni", 303.4, 1024, "UNI ViT-L/16, pathology (Mass-100K)", NC_ND,
                 (("init_values", 1e-5), ("dynamic_img_size", True))),
            _hub("uni2-h", "MahmoodLab/UNI2-h", 681.4, 1536, "UNI2-h ViT-H/14 with 8 registers, pathology", NC_ND,
                 (("img_size", 224), ("patch_size", 14), ("depth", 24),
                  ("num_heads", 24), ("init_values", 1e-5), ("embed_dim", 1536), ("mlp_ratio", 2.66667 * 2),
                  ("no_embed_class", True), *SWIGLU, ("reg_tokens", 8), ("dynamic_img_size", True))),
            _hub("virchow2", "paige-ai/Virchow2", 631.2, 1280, "Virchow2 ViT-H/14 with 4 registers, pathology", NC_ND,
                 SWIGLU, standard=("cls", "mean")),  # model card: CLS concatenated with the patch-token mean
            _hub("h-optimus-0", "bioptimus/H-optimus-0", 1134.8, 1536, "H-optimus-0 ViT-g/14, pathology",
                 "apache-2.0", (("init_values", 1e-5), ("dynamic_img_size", False)),
                 norm=((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))),
        ]

    def preprocessing(self, spec):
        from medprobe.models import timm_backend

        return timm_backend.preprocessing(spec)

    def weights_identity(self, spec):
        from medprobe.models import timm_backend

        return timm_backend.weights_identity(spec)

    def load(self, spec, prep):
        from medprobe.models import timm_backend
        from medprobe.models.backbone import Backbone

        model = timm_backend.create(spec, prep)
        identity, commit = timm_backend.identity(spec)
        is_token_model = hasattr(model, "num_prefix_tokens") and hasattr(model, "forward_intermediates")
        if is_token_model:
            has_cls = getattr(model, "cls_token", None) is not None
            pools, embed = (VIT_POOLS if has_cls else ("mean",)), _token_embed(model, has_cls=has_cls)
        else:
            pools, embed = CNN_POOLS, _cnn_embed(model)
        return Backbone(spec=spec, module=model, preprocessing=prep, embed=embed, pools=pools,
                        is_cnn=not is_token_model, weights_identity=identity, resolved_revision=commit)

    def layout(self, module):
        from medprobe.models import timm_backend

        return timm_backend.group_layout(module)


def _token_embed(model, *, has_cls: bool):
    prefix = int(model.num_prefix_tokens)

    def embed(pixels):
        import torch

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
    def embed(pixels):
        return {"gap": model.forward_head(model.forward_features(pixels), pre_logits=True).flatten(1)}

    return embed
